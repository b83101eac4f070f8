"""The form that starts an export of one dataset."""

from __future__ import annotations

from typing import Any

from django import forms

from seke_app.engine.formats.records import GRAIN_TITLES, GRAINS, SOURCES
from seke_app.exports.options import (
    FORMAT_NAMES,
    IMAGE_MODE_NAMES,
    OPENAI_IMAGE_NAMES,
    OPTION_KINDS,
    SOURCE_NAMES,
    ExportOptions,
    benchmark_label,
)
from seke_app.models import Dataset
from seke_app.models.exports import Export

_DEFAULTS = ExportOptions()
_KIND_SHORT: dict[str, str] = {
    Export.Kind.FEID: "FEID",
    Export.Kind.FEAB: "FEAB",
    Export.Kind.LABELSTUDIO: "Label Studio",
}
_SOURCE_CHOICES = list(SOURCE_NAMES.items())
_FORMAT_CHOICES = list(FORMAT_NAMES.items())


def _checkboxes(choices: list[tuple[str, str]], initial: Any, **kwargs: Any) -> forms.Field:
    return forms.MultipleChoiceField(
        choices=choices, initial=list(initial), widget=forms.CheckboxSelectMultiple, **kwargs
    )


class ExportForm(forms.Form):
    kind = forms.ChoiceField(choices=Export.Kind.choices, initial=Export.Kind.FEID)
    formats = _checkboxes(_FORMAT_CHOICES, _DEFAULTS.formats, required=False)
    grains = _checkboxes([(g, GRAIN_TITLES[g]) for g in GRAINS], GRAINS)
    expression_sources = _checkboxes(
        _SOURCE_CHOICES, SOURCES, required=False, label="Expression labels from"
    )
    va_sources = _checkboxes(
        _SOURCE_CHOICES, SOURCES, required=False, label="Valence-arousal labels from"
    )
    aus_sources = _checkboxes(_SOURCE_CHOICES, SOURCES, required=False, label="AU labels from")
    min_confidence = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=0.0,
        label="Minimum machine confidence",
        help_text="A machine label below this grain confidence is left out.",
    )
    split = forms.ChoiceField(required=False, label="Only the split")
    images = forms.ChoiceField(
        choices=list(IMAGE_MODE_NAMES.items()),
        initial="reference",
        help_text="Reference only when the images may not be redistributed.",
    )
    image_root = forms.CharField(
        required=False,
        max_length=500,
        label="Prefix of referenced paths",
        help_text="E.g. a URL or /data/local-files/?d= for Label Studio; empty: media-relative.",
    )
    openai_images = forms.ChoiceField(
        choices=list(OPENAI_IMAGE_NAMES.items()),
        initial="url",
        label="OpenAI image parts",
    )
    seed = forms.IntegerField(initial=0, help_text="Question paraphrases and the FEAB split.")
    test_fraction = forms.FloatField(
        min_value=0.01, max_value=0.99, initial=0.2, label="FEAB test fraction"
    )
    holdout = forms.ChoiceField(
        required=False,
        label="Leave out the images of benchmark",
        help_text="A finished FEAB export of this dataset.",
    )
    archive = forms.BooleanField(
        required=False, initial=True, label="Zip archive with manifest and dataset card"
    )

    def __init__(self, *args: Any, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        splits = dataset.images.exclude(split="").values_list("split", flat=True)
        split_field = self.fields["split"]
        holdout_field = self.fields["holdout"]
        assert isinstance(split_field, forms.ChoiceField)
        assert isinstance(holdout_field, forms.ChoiceField)
        split_field.choices = [("", "all images")] + [
            (s, s) for s in sorted(set(splits.distinct().order_by()))
        ]
        benchmarks = dataset.exports.filter(kind=Export.Kind.FEAB, status=Export.Status.DONE)
        holdout_field.choices = [("", "none")] + [
            (str(b.code), benchmark_label(b)) for b in benchmarks[:50]
        ]

    def rows(self) -> list[tuple[forms.BoundField, str, str]]:
        """Each field with the kinds it applies to: codes (for the page's script) and names.

        Both are empty for a field that applies to every kind.
        """
        found = []
        for field in self:
            kinds = OPTION_KINDS.get(field.name, ())
            words = " and ".join(_KIND_SHORT[k] for k in kinds)
            found.append((field, " ".join(kinds), f"{words} only" if kinds else ""))
        return found

    def options(self) -> ExportOptions:
        data = self.cleaned_data
        return ExportOptions(
            formats=tuple(data["formats"]) or _DEFAULTS.formats,
            grains=tuple(data["grains"]),
            sources={
                "expression": tuple(data["expression_sources"]),
                "va": tuple(data["va_sources"]),
                "aus": tuple(data["aus_sources"]),
            },
            min_confidence=data["min_confidence"],
            split=data["split"] or "",
            images=data["images"],
            image_root=data["image_root"],
            openai_images=data["openai_images"],
            seed=data["seed"],
            test_fraction=data["test_fraction"],
            holdout=data["holdout"] or "",
            archive=data["archive"],
        )
