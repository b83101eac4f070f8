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
    return (
        f"{run.created_at:%Y-%m-%d %H:%M} · {run.dataset.name} · {run.model_name}"
        f" · v{run.prompt_version.number} · {run.n_done} annotated"
    )


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
