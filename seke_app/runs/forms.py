"""The form that starts a generation run."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from seke_app.engine.uamc import STRATEGIES, UAMCParams
from seke_app.models import Dataset, GenerationRun, PromptVersion
from seke_app.models.runs import NAME_MAX_LENGTH, STRONG_MODEL_MAX_LENGTH
from seke_app.runs.backends import default_model, openai_configured
from seke_app.runs.services import ImageFilter, RunRefused, check_strong_model, run_create

_DEFAULTS = UAMCParams()


class RunForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all(), to_field_name="code")
    name = forms.CharField(
        required=False,
        max_length=NAME_MAX_LENGTH,
        help_text='Optional: what sets this run apart ("baseline", "new prompt"). Runs are'
        " also numbered per dataset: the first run on demo is demo #1.",
    )
    split = forms.CharField(required=False, help_text="Only images of this split (optional).")
    only_unconfident = forms.BooleanField(
        required=False,
        label="Only images without a confident label",
        help_text="Skip images that already have an auto-accepted or human label.",
    )
    backend = forms.ChoiceField(choices=GenerationRun.Backend.choices)
    model_name = forms.CharField(
        required=False,
        label="Model",
        help_text="Empty: SEKE_MODEL for the VLLM, the bundled CNN for the offline annotator.",
    )
    batch = forms.BooleanField(
        required=False,
        label="Batch API (half price, results within 24 h)",
        help_text="OpenAI-compatible backend on OpenAI only: each round of calls (first"
        " samples, extra samples, verification) goes out as one OpenAI batch, billed at half"
        " the price; a round may take up to 24 hours.",
    )
    strong_model = forms.CharField(
        required=False,
        max_length=STRONG_MODEL_MAX_LENGTH,
        label="Strong model (cascade)",
        help_text="Optional, for the OpenAI-compatible backend: the images the model leaves"
        " unsure (those it would send to review) are annotated again by this model, whose"
        " answer then decides. Empty: one model, no cascade.",
    )
    prompt_version = forms.ModelChoiceField(
        queryset=PromptVersion.objects.all(),
        to_field_name="code",
        required=False,
        empty_label="the active version",
    )
    strategy = forms.ChoiceField(
        choices=[(s, s) for s in STRATEGIES],
        initial=_DEFAULTS.strategy,
        help_text="uamc: adaptive sampling with self-verification; fixed: always Kmax"
        " samples; single: one sample, no verification.",
    )
    k0 = forms.IntegerField(
        min_value=1,
        max_value=20,
        initial=_DEFAULTS.k0,
        label="K0",
        help_text="Samples drawn first for every image.",
    )
    kmax = forms.IntegerField(
        min_value=1,
        max_value=40,
        initial=_DEFAULTS.kmax,
        label="Kmax",
        help_text="Most samples for one image (fixed-N draws exactly this many).",
    )
    step = forms.IntegerField(
        min_value=1,
        max_value=20,
        initial=_DEFAULTS.step,
        help_text="Samples added per round while a grain is still unsure.",
    )
    temperature = forms.FloatField(
        min_value=0.01,
        max_value=2.0,
        initial=_DEFAULTS.temperature,
        help_text="Sampling temperature; the disagreement between samples is the signal.",
    )
    verify = forms.BooleanField(
        required=False,
        initial=True,
        label="Self-verification",
        help_text="One more call in which the model confirms or revises each grain.",
    )
    futility = forms.BooleanField(
        required=False,
        initial=_DEFAULTS.futility,
        label="Stop early when the next round cannot settle it",
        help_text="A split that one more round would not resolve goes to review after the"
        " first samples instead of drawing up to Kmax.",
    )
    review_threshold = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=_DEFAULTS.review_threshold,
        help_text="Annotations with any grain's confidence under this go to review.",
    )
    concurrency = forms.IntegerField(
        min_value=1,
        max_value=64,
        initial=4,
        help_text="Model requests in flight at once per worker (images annotated at once,"
        " for the offline annotator).",
    )
    double_review_share = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=0.0,
        required=False,
        label="Double review share",
        help_text="Share of flagged images a second annotator reviews independently;"
        " disagreements go to an admin for adjudication.",
    )
    audit_share = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=0.05,
        required=False,
        label="Audit share",
        help_text="Share of all the run's images, drawn at random whatever their confidence,"
        " that reviewers label blind (at least 50 images where the run has them; 0 turns"
        " audits off). Audits are the unbiased measure of the machine's error. Empty: 0.05.",
    )
    budget_usd = forms.DecimalField(
        required=False,
        min_value=0.0001,
        decimal_places=4,
        label="Cost cap (USD)",
        help_text="The run stops cleanly once it has spent this much. Empty: no cap.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not openai_configured():
            self.fields[
                "backend"
            ].help_text = (
                "The OpenAI-compatible backend needs OPENAI_API_KEY in the server's environment."
            )
            self.fields["backend"].initial = GenerationRun.Backend.OFFLINE
            self.fields["batch"].disabled = True
            self.fields["batch"].help_text = "Needs OPENAI_API_KEY: the Batch API is OpenAI's."

    def params(self) -> UAMCParams:
        return UAMCParams.from_options(self.cleaned_data)

    def create(self, *, user: AbstractBaseUser | None) -> GenerationRun:
        """Start the run a valid form describes (``run_create``; RunRefused or
        QueueUnavailable when it cannot). The run page and ``POST /api/v1/runs`` both
        start runs here, so that an empty field means the same to both."""
        data = self.cleaned_data
        return run_create(
            dataset=data["dataset"],
            backend=data["backend"],
            model_name=data["model_name"],
            strong_model=data["strong_model"],
            prompt_version=data["prompt_version"],
            params=self.params(),
            budget_usd=data["budget_usd"],
            concurrency=data["concurrency"],
            double_review_share=data["double_review_share"] or 0.0,
            audit_share=0.05 if data["audit_share"] is None else data["audit_share"],
            image_filter=ImageFilter(
                split=data["split"], only_unconfident=data["only_unconfident"]
            ),
            name=data["name"],
            user=user,
            batch=data["batch"],
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("strong_model") and data.get("backend"):
            model = data.get("model_name") or default_model(data["backend"])
            try:
                check_strong_model(data["backend"], model, data["strong_model"].strip())
            except RunRefused as exc:
                self.add_error("strong_model", str(exc))
        if not self.errors:
            try:
                self.params()
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return data
