"""Forms of the dashboard pages: the review threshold from the curve, and what to compare."""

from __future__ import annotations

from typing import Any

from django import forms

from seke_app.models import GenerationRun, PromptVersion


class ThresholdForm(forms.Form):
    """A target error rate or a review budget, in percent."""

    BY_CHOICES = [
        ("error", "Target error rate among auto-accepted labels"),
        ("budget", "Review budget (share of annotations sent to humans)"),
    ]

    by = forms.ChoiceField(choices=BY_CHOICES, widget=forms.RadioSelect, initial="error")
    percent = forms.FloatField(min_value=0.0, max_value=100.0, label="Percent")

    def fractions(self) -> dict[str, float]:
        """The keyword the service takes, with the percentage as a fraction."""
        name = "target_error" if self.cleaned_data["by"] == "error" else "review_budget"
        return {name: self.cleaned_data["percent"] / 100.0}


def _run_label(run: GenerationRun) -> str:
    # The run's own label first: it is what tells two runs apart when a drop-down cuts.
    return f"{run.label} · {run.model_name} · v{run.prompt_version.number} · {run.n_done} annotated"


class _RunChoice(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Any) -> str:
        return _run_label(obj)


class _VersionChoice(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Any) -> str:
        return f"v{obj.number} {obj.name}"


class CompareForm(forms.Form):
    """Two runs (``a``, ``b``) or two prompt versions (``va``, ``vb``), by code."""

    a = _RunChoice(
        queryset=GenerationRun.objects.select_related("dataset", "prompt_version"),
        to_field_name="code",
        required=False,
        label="Run A",
    )
    b = _RunChoice(
        queryset=GenerationRun.objects.select_related("dataset", "prompt_version"),
        to_field_name="code",
        required=False,
        label="Run B",
    )
    va = _VersionChoice(
        queryset=PromptVersion.objects.all(),
        to_field_name="code",
        required=False,
        label="Version A",
    )
    vb = _VersionChoice(
        queryset=PromptVersion.objects.all(),
        to_field_name="code",
        required=False,
        label="Version B",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        runs = data.get("a") is not None or data.get("b") is not None
        versions = data.get("va") is not None or data.get("vb") is not None
        if runs and versions:
            raise forms.ValidationError("Compare two runs or two prompt versions, not both.")
        # A choice that failed its own check already says why.
        unchecked = not any(name in self.errors for name in ("a", "b", "va", "vb"))
        if unchecked and runs and (data.get("a") is None or data.get("b") is None):
            raise forms.ValidationError("Choose both runs.")
        if unchecked and versions and (data.get("va") is None or data.get("vb") is None):
            raise forms.ValidationError("Choose both prompt versions.")
        return data


class CertifyForm(forms.Form):
    """The targets of a certificate: grains that must be right, error and level in percent."""

    grains = forms.MultipleChoiceField(
        choices=[
            ("expression", "Expression"),
            ("va", "Valence-arousal"),
            ("aus", "Action units"),
        ],
        widget=forms.CheckboxSelectMultiple,
        initial=["expression"],
        error_messages={"required": "Choose at least one grain that must be right."},
    )
    alpha = forms.FloatField(min_value=0.1, max_value=50.0, initial=20.0, label="Error allowed (%)")
    confidence = forms.FloatField(
        min_value=50.0, max_value=99.9, initial=95.0, label="Confidence level (%)"
    )
    va_distance = forms.FloatField(
        min_value=0.01,
        max_value=2.0,
        initial=0.2,
        label="Valence-arousal: largest difference on each axis",
    )

    def targets(self) -> dict[str, Any]:
        """The keywords of ``certificates.Targets``, as fractions."""
        data = self.cleaned_data
        return {
            "grains": tuple(data["grains"]),
            "alpha": data["alpha"] / 100.0,
            "delta": 1.0 - data["confidence"] / 100.0,
            "va_distance": data["va_distance"],
        }


class AuditsForm(forms.Form):
    """How many more blind audit reviews to open."""

    n = forms.IntegerField(min_value=1, max_value=100_000, label="Audit reviews")
