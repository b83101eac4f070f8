"""The dataset card: statistics gathered while records stream past, then Markdown.

Memory does not depend on the number of records: only counters and fixed-width
histograms are kept. Every value the card prints (the title, the summary, table
cells) goes through ``escape_markdown``, since some come from the imported
manifest (split names) or from the admin (licence note); only the ``notes``,
written by SEKE, are Markdown.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seke_app.engine.formats.records import GRAIN_TITLES, GRAINS, SOURCES, CuratedRecord
from seke_app.engine.formats.words import count
from seke_app.engine.ppi import Interval
from seke_app.engine.vocab import AU_NAMES, EXPRESSIONS

N_BINS = 10
# The characters that start Markdown inline markup or end a table cell: code,
# emphasis, strike-through, links and images (only with "["), the backslash itself.
# Block markers ("#", "-", "1.") are left alone: a value never starts a line.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]|~])")


def escape_markdown(value: object) -> str:
    """``value`` as literal text on one line of Markdown that may be rendered to HTML.

    Whitespace runs, line breaks included, become one space (a line break would
    end a table row or a list item); "&", "<" and ">" become HTML entities (raw
    HTML passes through Markdown renderers, and an entity reads as the character
    in both Markdown and HTML); inline markup characters and "|" are
    backslash-escaped, which CommonMark and GitHub render as the plain character.
    """
    text = " ".join(str(value).split())
    return _MARKDOWN_INLINE.sub(r"\\\1", html.escape(text, quote=False))


def _bin(value: float, low: float, high: float) -> int:
    index = int((value - low) / (high - low) * N_BINS)
    return min(max(index, 0), N_BINS - 1)


@dataclass
class CardStats:
    n_records: int = 0
    grains: Counter[str] = field(default_factory=Counter)
    sources: dict[str, Counter[str]] = field(default_factory=lambda: {g: Counter() for g in GRAINS})
    expressions: Counter[str] = field(default_factory=Counter)
    valence: list[int] = field(default_factory=lambda: [0] * N_BINS)
    arousal: list[int] = field(default_factory=lambda: [0] * N_BINS)
    va_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    au_active: Counter[int] = field(default_factory=Counter)
    au_coded: Counter[int] = field(default_factory=Counter)
    confidence: dict[str, list[int]] = field(
        default_factory=lambda: {g: [0] * N_BINS for g in GRAINS}
    )
    splits: Counter[str] = field(default_factory=Counter)
    prompt_versions: Counter[int] = field(default_factory=Counter)
    # The runs whose machine labels are in the export (by code), and how many.
    machine_runs: Counter[str] = field(default_factory=Counter)

    def add(self, record: CuratedRecord) -> None:
        self.n_records += 1
        self.splits[record.split or "(none)"] += 1
        for grain in record.grains():
            self.grains[grain] += 1
            provenance = record.provenance[grain]
            self.sources[grain][provenance.source] += 1
            if provenance.source == "machine" and provenance.confidence is not None:
                self.confidence[grain][_bin(provenance.confidence, 0.0, 1.0)] += 1
            if provenance.prompt_version is not None:
                self.prompt_versions[provenance.prompt_version] += 1
            if provenance.source == "machine" and provenance.run is not None:
                self.machine_runs[provenance.run] += 1
        if record.expression is not None:
            self.expressions[record.expression] += 1
        if record.valence is not None and record.arousal is not None:
            self.valence[_bin(record.valence, -1.0, 1.0)] += 1
            self.arousal[_bin(record.arousal, -1.0, 1.0)] += 1
            self.va_sums[0] += record.valence
            self.va_sums[1] += record.arousal
        if record.aus:
            self.au_coded.update(record.aus.keys())
            self.au_active.update(au for au, on in record.aus.items() if on)

    def to_json(self) -> dict[str, Any]:
        n_va = self.grains["va"]
        return {
            "n_records": self.n_records,
            "grains": dict(self.grains),
            "provenance": {g: dict(c) for g, c in self.sources.items()},
            "expressions": dict(self.expressions),
            "valence_histogram": self.valence,
            "arousal_histogram": self.arousal,
            "mean_valence": self.va_sums[0] / n_va if n_va else None,
            "mean_arousal": self.va_sums[1] / n_va if n_va else None,
            "au_rates": {
                f"AU{au}": self.au_active[au] / self.au_coded[au] for au in sorted(self.au_coded)
            },
            "machine_confidence_histogram": self.confidence,
            "splits": dict(self.splits),
            "prompt_versions": sorted(self.prompt_versions),
        }


def _share(part: int, whole: int) -> str:
    return f"{part} ({part / whole:.1%})" if whole else str(part)


def _edges(low: float, high: float) -> list[str]:
    step = (high - low) / N_BINS
    return [f"[{low + i * step:+.1f}, {low + (i + 1) * step:+.1f})" for i in range(N_BINS)]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_markdown(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _provenance_section(stats: CardStats) -> list[str]:
    rows = [
        [GRAIN_TITLES[g], stats.grains[g]]
        + [_share(stats.sources[g][s], stats.grains[g]) for s in SOURCES]
        for g in GRAINS
    ]
    return [
        "## Provenance",
        "",
        *_table(
            ["grain", "labelled", "human review", "imported dataset label", "machine (accepted)"],
            rows,
        ),
    ]


def _distribution_sections(stats: CardStats) -> list[str]:
    n_expr = stats.grains["expression"]
    lines = [
        "## Expressions",
        "",
        *_table(
            ["expression", "images"],
            [
                [e, _share(stats.expressions[e], n_expr)]
                for e in EXPRESSIONS
                if stats.expressions[e]
            ],
        ),
    ]
    lines += ["## Valence and arousal", ""]
    summary = stats.to_json()
    if stats.grains["va"]:
        lines += [
            f"Mean valence {summary['mean_valence']:+.3f}, mean arousal"
            f" {summary['mean_arousal']:+.3f} over {count(stats.grains['va'], 'image')}.",
            "",
        ]
        lines += _table(
            ["bin", "valence", "arousal"],
            [
                [e, v, a]
                for e, v, a in zip(_edges(-1, 1), stats.valence, stats.arousal, strict=True)
            ],
        )
    lines += [
        "## Action units",
        "",
        *_table(
            ["AU", "name", "active rate", "coded in"],
            [
                [
                    f"AU{au}",
                    AU_NAMES.get(au, ""),
                    f"{stats.au_active[au] / stats.au_coded[au]:.3f}",
                    stats.au_coded[au],
                ]
                for au in sorted(stats.au_coded)
            ],
        ),
    ]
    return lines


def _confidence_section(stats: CardStats) -> list[str]:
    rows = [
        [edge] + [stats.confidence[g][i] for g in GRAINS] for i, edge in enumerate(_edges(0, 1))
    ]
    return [
        "## Machine confidence",
        "",
        "SV-UAMC's per-grain confidence of the machine labels in this export.",
        "",
        *_table(["confidence", *(GRAIN_TITLES[g] for g in GRAINS)], rows),
    ]


@dataclass(frozen=True)
class Stated:
    """A figure the card states: a PPI++ interval and the audit-only one beside it."""

    what: str
    ppi: Interval | None
    classical: Interval | None


@dataclass(frozen=True)
class RunQuality:
    """What the card states about one run whose machine labels are in the export.

    ``certificate`` is the certificate in force in one sentence, or None; ``note``
    then says why there is none.
    """

    run: str
    model: str
    prompt_version: int
    certificate: str | None
    note: str
    n_audit: int
    n_annotations: int
    accuracy: Sequence[Stated] = ()
    distribution: Sequence[Stated] = ()


def _interval(found: Interval | None) -> str:
    if found is None:
        return "too few audit references"
    return f"{found.estimate:.3f} [{found.low:.3f}, {found.high:.3f}] (width {found.width:.3f})"


def _quality_section(runs: Sequence[RunQuality]) -> list[str]:
    lines = ["## Certified quality of the machine labels", ""]
    if not runs:
        return [*lines, "No machine label in this export: no certificate applies.", ""]
    lines += [
        "Per run whose machine labels are in this export: its certificate, then 95 %"
        " intervals from its blind audit. PPI++ (Angelopoulos, Duchi, Zrnic 2023) combines"
        " the audit references with the machine's labels on every annotation; the"
        " audit-only interval (Wilson) is beside it.",
        "",
    ]
    for run in runs:
        lines += [
            f"### Run {escape_markdown(run.run)} ({escape_markdown(run.model)},"
            f" prompt v{run.prompt_version})",
            "",
            escape_markdown(run.certificate or run.note),
            "",
            f"{count(run.n_audit, 'blind audit reference')} among"
            f" {count(run.n_annotations, 'annotation')}.",
            "",
        ]
        rows = [
            [s.what, _interval(s.ppi), _interval(s.classical)]
            for s in (*run.accuracy, *run.distribution)
        ]
        lines += _table(["figure", "PPI++ (95 %)", "audit only (95 %)"], rows)
    return lines


def card_markdown(
    stats: CardStats,
    *,
    title: str,
    summary: Mapping[str, Any],
    notes: Sequence[str] = (),
    quality: Sequence[RunQuality] = (),
) -> str:
    """The dataset card: what is in the export, where the labels came from, statistics."""
    lines = [f"# {escape_markdown(title)}", ""]
    lines += [
        f"- **{escape_markdown(key)}**: {escape_markdown(value)}" for key, value in summary.items()
    ]
    lines += ["", f"{count(stats.n_records, 'image')}.", ""]
    lines += [*notes, ""] if notes else []
    lines += _provenance_section(stats)
    lines += _distribution_sections(stats)
    lines += _confidence_section(stats)
    lines += _quality_section(quality)
    lines += [
        "## Splits",
        "",
        *_table(["split", "images"], [[s, n] for s, n in sorted(stats.splits.items())]),
    ]
    return "\n".join(lines)
