"""What an export contains and how: the options stored on an ``Export`` row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from seke_app.engine.formats.feid import FORMATS
from seke_app.engine.formats.records import GRAIN_TITLES, GRAINS, SOURCES, LabelFilter
from seke_app.models.exports import Export

IMAGE_MODES = ("reference", "copy")
OPENAI_IMAGE_MODES = ("url", "data_url")

# The options' values in words, as the form offers them and the export's page shows them.
FORMAT_NAMES = {
    "llava": "LLaVA conversations",
    "openai": "OpenAI chat fine-tuning",
    "sharegpt": "ShareGPT (LLaMA-Factory)",
}
SOURCE_NAMES = {
    "human": "human review",
    "dataset": "imported dataset label",
    "machine": "machine (accepted by its run)",
}
IMAGE_MODE_NAMES = {"reference": "referenced by path", "copy": "copied into the archive"}
OPENAI_IMAGE_NAMES = {"url": "URL or path", "data_url": "embedded data URL"}

# The kinds of export an option applies to; an option not named applies to every kind.
OPTION_KINDS: dict[str, tuple[str, ...]] = {
    "formats": (Export.Kind.FEID,),
    "openai_images": (Export.Kind.FEID,),
    "holdout": (Export.Kind.FEID,),
    "seed": (Export.Kind.FEID, Export.Kind.FEAB),
    "test_fraction": (Export.Kind.FEAB,),
}


def option_applies(name: str, kind: str) -> bool:
    """Whether the option ``name`` changes an export of this kind."""
    return kind in OPTION_KINDS.get(name, (kind,))


class ExportRefused(Exception):
    """An export cannot be created or changed as asked; the message says why."""


def _all_sources() -> dict[str, tuple[str, ...]]:
    return {grain: SOURCES for grain in GRAINS}


@dataclass(frozen=True)
class ExportOptions:
    """What an export contains and how; stored on the row as JSON.

    ``split`` keeps only the images of one dataset split (the manifest's column);
    ``images`` copies the files into the archive or references them by path
    (``image_root`` + the media-relative path); ``holdout`` names a finished FEAB
    export of the same dataset whose benchmark images a FEID export leaves out.
    """

    formats: tuple[str, ...] = ("llava",)
    grains: tuple[str, ...] = GRAINS
    sources: Mapping[str, tuple[str, ...]] = field(default_factory=_all_sources)
    min_confidence: float = 0.0
    split: str = ""
    images: str = "reference"
    image_root: str = ""
    openai_images: str = "url"
    seed: int = 0
    test_fraction: float = 0.2
    holdout: str = ""
    archive: bool = True

    def label_filter(self) -> LabelFilter:
        return LabelFilter(
            grains=self.grains,
            sources={g: frozenset(self.sources.get(g, ())) for g in GRAINS},
            min_confidence=self.min_confidence,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["formats"], data["grains"] = list(self.formats), list(self.grains)
        data["sources"] = {g: list(s) for g, s in self.sources.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportOptions:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExportRefused(f"unknown export options: {', '.join(sorted(unknown))}")
        values = dict(data)
        for name in ("formats", "grains"):
            if name in values:
                values[name] = tuple(values[name])
        if "sources" in values:
            values["sources"] = {g: tuple(s) for g, s in values["sources"].items()}
        return cls(**values)

    def described(self, kind: str, *, holdout: str = "") -> list[tuple[str, str]]:
        """(option, value) in words, for the options that apply to ``kind``.

        ``holdout`` names the held-out benchmark as the page shows it.
        """
        rows = []
        if option_applies("formats", kind):
            rows.append(("Formats", ", ".join(FORMAT_NAMES.get(f, f) for f in self.formats)))
        rows.append(("Grains", ", ".join(GRAIN_TITLES.get(g, g) for g in self.grains)))
        for grain in self.grains:
            admitted = self.sources.get(grain, ())
            names = ", ".join(SOURCE_NAMES.get(s, s) for s in admitted) or "none"
            rows.append((f"{GRAIN_TITLES.get(grain, grain).capitalize()} labels from", names))
        minimum = f"{self.min_confidence:g}" if self.min_confidence else "none"
        rows.append(("Minimum machine confidence", minimum))
        rows.append(("Images", f"only the split “{self.split}”" if self.split else "all images"))
        files = IMAGE_MODE_NAMES.get(self.images, self.images)
        if self.images == "reference":
            files += f", prefixed with {self.image_root}" if self.image_root else ", media-relative"
        rows.append(("Image files", files))
        if option_applies("openai_images", kind) and "openai" in self.formats:
            rows.append(("OpenAI image parts", OPENAI_IMAGE_NAMES.get(self.openai_images, "")))
        if option_applies("test_fraction", kind):
            rows.append(("Test fraction", f"{self.test_fraction:.0%}"))
        if option_applies("seed", kind):
            rows.append(("Seed", str(self.seed)))
        if option_applies("holdout", kind):
            rows.append(
                ("Benchmark left out", (holdout or self.holdout) if self.holdout else "none")
            )
        rows.append(
            (
                "Packaging",
                "zip archive with manifest and dataset card" if self.archive else "one file",
            )
        )
        return rows

    def problems(self, kind: str) -> list[str]:
        """Everything wrong with these options for an export of this kind."""
        found = _grain_problems(self)
        if kind == Export.Kind.FEID:
            found += _feid_problems(self)
        if kind == Export.Kind.FEAB:
            if not 0.0 < self.test_fraction < 1.0:
                found.append("the test fraction must lie strictly between 0 and 1")
            if not self.archive:
                found.append("a FEAB benchmark needs an archive (questions and answer keys)")
        if not 0.0 <= self.min_confidence <= 1.0:
            found.append("the minimum confidence must lie between 0 and 1")
        if self.images not in IMAGE_MODES:
            found.append(f"images must be one of {', '.join(IMAGE_MODES)}")
        if self.images == "copy" and not self.archive:
            found.append("copied images need an archive")
        return found


def benchmark_label(benchmark: Export) -> str:
    """How the form and the pages name a finished FEAB export."""
    return f"FEAB of {benchmark.created_at:%Y-%m-%d %H:%M} ({benchmark.n_written} test images)"


def describe_options(export: Export) -> list[tuple[str, str]]:
    """The export's options in words (its holdout named as the form named it)."""
    try:
        options = ExportOptions.from_json(export.options)
    except (ExportRefused, TypeError) as exc:
        return [("Options", f"not readable: {exc}")]
    holdout = ""
    if options.holdout:
        benchmark = Export.objects.filter(code=options.holdout).first()
        holdout = benchmark_label(benchmark) if benchmark else "a FEAB export since deleted"
    return options.described(export.kind, holdout=holdout)


def _grain_problems(options: ExportOptions) -> list[str]:
    found = []
    if not options.grains or set(options.grains) - set(GRAINS):
        found.append(f"grains must be some of {', '.join(GRAINS)}")
    for grain in options.grains:
        admitted = options.sources.get(grain, ())
        if not admitted:
            found.append(f"no provenance is admitted for {grain}")
        if set(admitted) - set(SOURCES):
            found.append(f"provenance for {grain} must be some of {', '.join(SOURCES)}")
    return found


def _feid_problems(options: ExportOptions) -> list[str]:
    found = []
    if not options.formats or set(options.formats) - set(FORMATS):
        found.append(f"formats must be some of {', '.join(FORMATS)}")
    if options.openai_images not in OPENAI_IMAGE_MODES:
        found.append(f"OpenAI images must be one of {', '.join(OPENAI_IMAGE_MODES)}")
    if not options.archive and (len(options.formats) != 1 or "openai" in options.formats):
        found.append(
            "without an archive an export is one LLaVA or ShareGPT file"
            " (an OpenAI file keeps its labels in a second file)"
        )
    return found
