from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.text import slugify

from seke_app.engine.ingest import IMAGE_SUFFIXES, MANIFEST_NAME, mib
from seke_app.engine.vocab import AU_VOCABULARIES


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> Any:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else []


class UploadForm(forms.Form):
    dataset = forms.CharField(
        max_length=100,
        help_text="An existing dataset's name, or a new one (letters, digits, - and _).",
    )
    files = MultipleFileField(  # type: ignore[assignment]
        help_text="A zip of a folder (with an optional manifest.csv), or several image files"
        " and optionally a manifest.csv.",
    )
    au_vocabulary = forms.ChoiceField(
        choices=[("", "— keep the dataset's (feid17 for a new one) —")]
        + [(name, name) for name in sorted(AU_VOCABULARIES)],
        required=False,
        label="AU vocabulary",
    )
    licence_note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read here, not at import, so that the page states the limit in force.
        limit = mib(settings.MAX_UPLOAD_BYTES)
        self.fields["files"].help_text += f" At most {limit} in all (SEKE_MAX_UPLOAD_MB)."
        self.fields["files"].widget.attrs["data-max-bytes"] = str(settings.MAX_UPLOAD_BYTES)

    def clean_dataset(self) -> str:
        name: str = self.cleaned_data["dataset"].strip()
        if slugify(name) != name:
            raise ValidationError(
                f"Use letters, digits, '-' and '_' only, e.g. {slugify(name) or 'my-dataset'}."
            )
        return name

    def clean_files(self) -> list[Any]:
        files: list[Any] = self.cleaned_data["files"]
        if not files:
            raise ValidationError("Choose a zip file or some images.")
        zips = [f for f in files if f.name.lower().endswith(".zip")]
        if zips and len(files) > 1:
            raise ValidationError("Upload either one zip file or image files, not both.")
        for upload in files:
            suffix = Path(upload.name).suffix.lower()
            if upload.name != MANIFEST_NAME and suffix not in IMAGE_SUFFIXES | {".zip"}:
                raise ValidationError(f"{upload.name}: not an image, a zip or {MANIFEST_NAME}.")
        return files
