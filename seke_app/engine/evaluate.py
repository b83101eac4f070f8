"""The evaluation harness: run SV-UAMC on labelled images and score what comes back.

By default the truth read from a manifest is used only for scoring; the backend
sees each image exactly as it would see an unlabelled one (no known labels in the
request), so the figures measure the machine, not the anchors.

Completion (``given``): the listed grains (any of ``expression``, ``va``,
``aus``) of each image's manifest labels are handed to the backend as known
labels, as a source dataset's labels would be, and only the other grains are
scored; the report names what was given and on how many images it existed. An
image whose manifest lacks a given grain gets nothing for it (the CK+ onset
frames code no AUs), so its other grains are predicted from the image alone.

Choices made here:

* An image without an answer (every sample invalid) counts as a wrong
  expression with confidence 0, and is left out of the VA and AU scores.
* Macro-F1 averages over the vocabulary's expressions that occur in the truth,
  so a dataset without contempt is not penalised for lacking it.
* VA is scored on the images whose manifest has both valence and arousal; AUs on
  the images whose manifest codes AUs, for the AUs in both the manifest and the
  vocabulary.
* Right-versus-wrong separation (AUROC), calibration error and the review-budget
  error rates use the *expression* confidence, since the expression is what the
  truth can check (so they are not computed when the expression is given); a
  budget ``b`` sends the least confident ``round(b * N)`` images to review.
* The FER+ vote share of an image is the plurality label's votes over all its
  votes (10 per image), the human agreement that a good confidence should track.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seke_app.engine import metrics
from seke_app.engine.types import GRAINS, AnnotationRequest, Backend, KnownLabels
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc
from seke_app.engine.vocab import Vocabulary

REVIEW_BUDGETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalItem:
    """One labelled image; any label may be missing."""

    image_bytes: bytes
    name: str = ""
    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None
    votes: dict[str, int] | None = None

    def known(self, given: Iterable[str]) -> KnownLabels:
        """The labels of the ``given`` grains, as a source dataset would give them."""
        grains = set(given)
        return KnownLabels(
            expression=self.expression if "expression" in grains else None,
            valence=self.valence if "va" in grains else None,
            arousal=self.arousal if "va" in grains else None,
            aus=self.aus if "aus" in grains else None,
        )

    def has(self, grain: str) -> bool:
        """Whether the manifest labels ``grain`` for this image (VA: both values)."""
        if grain == "expression":
            return self.expression is not None
        if grain == "va":
            return self.valence is not None and self.arousal is not None
        return bool(self.aus)

    def vote_share(self) -> float | None:
        """The plurality label's share of the human votes, when votes exist."""
        if not self.votes or self.expression is None:
            return None
        total = sum(self.votes.values())
        return self.votes.get(self.expression, 0) / total if total else None


def _optional_float(cell: str | None) -> float | None:
    return float(cell) if cell not in (None, "") else None


def _row_item(row: dict[str, str], image_bytes: bytes) -> EvalItem:
    au_cells = {int(k[3:]): v for k, v in row.items() if k.startswith("au_") and k[3:].isdigit()}
    vote_cells = {k[6:]: v for k, v in row.items() if k.startswith("votes_")}
    coded = bool(au_cells) and all(v not in ("", None) for v in au_cells.values())
    return EvalItem(
        image_bytes=image_bytes,
        name=row["file"],
        expression=row.get("expression") or None,
        valence=_optional_float(row.get("valence")),
        arousal=_optional_float(row.get("arousal")),
        aus={au: v.strip() == "1" for au, v in au_cells.items()} if coded else None,
        votes={k: int(float(v)) for k, v in vote_cells.items() if v != ""} or None,
    )


def read_manifest(path: Path | str, images_root: Path | str) -> list[EvalItem]:
    """The labelled images of a manifest CSV (``file`` relative to ``images_root``)."""
    root = Path(images_root)
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "file" not in rows[0]:
        raise ValueError(f"{path} has no 'file' column")
    return [_row_item(row, (root / row["file"]).read_bytes()) for row in rows]


@dataclass(frozen=True)
class ItemOutcome:
    """What one image got, next to its truth."""

    name: str
    truth: str | None
    predicted: str | None
    expression_confidence: float
    confidence: float
    flagged: bool
    n_samples: int
    n_valid: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    vote_share: float | None

    @property
    def correct(self) -> bool:
        return self.predicted is not None and self.predicted == self.truth


def _outcome(item: EvalItem, result: UAMCResult) -> ItemOutcome:
    answer = result.answer
    return ItemOutcome(
        name=item.name,
        truth=item.expression,
        predicted=answer.expression if answer is not None else None,
        expression_confidence=result.confidence.expression,
        confidence=result.overall_confidence,
        flagged=result.flagged,
        n_samples=result.n_samples,
        n_valid=result.n_valid,
        requests=result.usage.requests,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        cost_usd=result.usage.cost_usd,
        vote_share=item.vote_share(),
    )


@dataclass
class _Pairs:
    """Truth and answer values collected for the VA and AU scores."""

    valence: list[tuple[float, float]] = field(default_factory=list)
    arousal: list[tuple[float, float]] = field(default_factory=list)
    aus: dict[int, list[tuple[bool, bool]]] = field(default_factory=dict)

    def add(self, item: EvalItem, result: UAMCResult, vocabulary: Vocabulary) -> None:
        answer = result.answer
        if answer is None:
            return
        if item.valence is not None and item.arousal is not None:
            self.valence.append((item.valence, answer.valence))
            self.arousal.append((item.arousal, answer.arousal))
        for au, present in (item.aus or {}).items():
            if au in vocabulary.aus:
                self.aus.setdefault(au, []).append((present, answer.aus.get(au, False)))


@dataclass(frozen=True)
class EvalReport:
    """The scores of one evaluation run (see the module docstring for definitions)."""

    backend: str
    model: str
    strategy: str
    params: dict[str, Any]
    n_items: int
    n_answered: int
    # The grains handed to the backend as known labels, and on how many images
    # the manifest had each; given grains are not scored (a given expression's
    # scores are ``{"given": True}``, given VA or AUs have none).
    given: dict[str, int]
    expression: dict[str, Any]
    va: dict[str, Any] | None
    aus: dict[str, Any] | None
    cost: dict[str, float]
    confidence: dict[str, Any]
    items: list[ItemOutcome] = field(default_factory=list, repr=False)

    def to_json(self, *, include_items: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if include_items:
            data["items"] = [asdict(o) | {"correct": o.correct} for o in self.items]
        else:
            data.pop("items")
        return data

    def to_markdown(self) -> str:
        return _markdown(self)


def _expression_scores(outcomes: list[ItemOutcome], vocabulary: Vocabulary) -> dict[str, Any]:
    scored = [o for o in outcomes if o.truth is not None]
    if not scored:
        return {"n": 0}
    truth = [o.truth or "" for o in scored]
    predicted = [o.predicted or "(none)" for o in scored]
    labels = [e for e in vocabulary.expressions if e in set(truth)]
    return {
        "n": len(scored),
        "accuracy": metrics.accuracy(truth, predicted),
        "macro_f1": metrics.macro_f1(truth, predicted, labels),
        "labels": labels,
        "per_class": {
            str(s.label): {
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "support": s.support,
            }
            for s in metrics.per_class_scores(truth, predicted, labels)
        },
        "confusion": metrics.confusion_matrix(truth, predicted, labels).tolist(),
    }


def _va_scores(pairs: _Pairs) -> dict[str, Any] | None:
    if not pairs.valence:
        return None
    scores: dict[str, Any] = {"n": len(pairs.valence)}
    for name, values in (("valence", pairs.valence), ("arousal", pairs.arousal)):
        truth, predicted = zip(*values, strict=True)
        scores[f"ccc_{name}"] = metrics.ccc(truth, predicted)
        scores[f"rmse_{name}"] = metrics.rmse(truth, predicted)
    return scores


def _au_scores(pairs: _Pairs) -> dict[str, Any] | None:
    if not pairs.aus:
        return None
    f1 = {
        au: metrics.binary_f1([t for t, _ in values], [p for _, p in values])
        for au, values in sorted(pairs.aus.items())
    }
    return {
        "n": max(len(values) for values in pairs.aus.values()),
        "f1": {str(au): value for au, value in f1.items()},
        "mean_f1": sum(f1.values()) / len(f1),
    }


def _cost_scores(outcomes: list[ItemOutcome]) -> dict[str, float]:
    n = max(len(outcomes), 1)
    return {
        "samples_per_image": sum(o.n_samples for o in outcomes) / n,
        "requests_per_image": sum(o.requests for o in outcomes) / n,
        "prompt_tokens_per_image": sum(o.prompt_tokens for o in outcomes) / n,
        "completion_tokens_per_image": sum(o.completion_tokens for o in outcomes) / n,
        "cost_per_image_usd": sum(o.cost_usd for o in outcomes) / n,
        "cost_total_usd": sum(o.cost_usd for o in outcomes),
    }


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _confidence_scores(outcomes: list[ItemOutcome], *, expression: bool) -> dict[str, Any]:
    """Confidence figures; those about the expression only when it was predicted."""
    scored = [o for o in outcomes if o.truth is not None] if expression else []
    correct = [o.correct for o in scored]
    conf = [o.expression_confidence for o in scored]
    scores: dict[str, Any] = {
        "flagged_rate": sum(o.flagged for o in outcomes) / max(len(outcomes), 1),
        "auroc": None,
        "ece": None,
        "error_rate": None,
        "accepted_error_rate": {},
        "spearman_vote_share": None,
    }
    if not scored:
        return scores
    scores["error_rate"] = 1.0 - sum(correct) / len(correct)
    scores["ece"] = metrics.expected_calibration_error(correct, conf)
    if 0 < sum(correct) < len(correct):
        scores["auroc"] = metrics.auroc(correct, conf)
    scores["accepted_error_rate"] = {
        f"{budget:.0%}": _none_if_nan(metrics.accepted_error_rate(correct, conf, budget))
        for budget in REVIEW_BUDGETS
    }
    shares = [(o.expression_confidence, o.vote_share) for o in scored if o.vote_share is not None]
    if len(shares) >= 2:
        x, y = zip(*shares, strict=True)
        scores["spearman_vote_share"] = _none_if_nan(metrics.spearman(x, y))
    return scores


def check_given(given: Iterable[str]) -> tuple[str, ...]:
    """The given grains in ``GRAINS`` order; ValueError naming any unknown one."""
    grains = set(given)
    unknown = sorted(grains - set(GRAINS))
    if unknown:
        raise ValueError(
            f"unknown grain(s) to give: {', '.join(unknown)}; choose from {', '.join(GRAINS)}"
        )
    return tuple(g for g in GRAINS if g in grains)


def evaluate(
    backend: Backend,
    items: Iterable[EvalItem],
    params: UAMCParams,
    vocabulary: Vocabulary,
    *,
    given: Iterable[str] = (),
    progress: Progress | None = None,
) -> EvalReport:
    """Annotate every item with the ``given`` grains of its labels as known labels
    (none by default), then score the other grains against the labels."""
    grains = check_given(given)
    todo = list(items)
    outcomes: list[ItemOutcome] = []
    pairs = _Pairs()
    for done, item in enumerate(todo, start=1):
        request = AnnotationRequest(
            item.image_bytes, vocabulary, known=item.known(grains), image_id=item.name
        )
        result = run_uamc(backend, request, params)
        outcomes.append(_outcome(item, result))
        pairs.add(item, result, vocabulary)
        if progress is not None:
            progress(done, len(todo))
    scored_expression = "expression" not in grains
    return EvalReport(
        backend=backend.name,
        model=backend.model,
        strategy=params.strategy,
        params=params.to_json(),
        n_items=len(outcomes),
        n_answered=sum(o.predicted is not None for o in outcomes),
        given={g: sum(item.has(g) for item in todo) for g in grains},
        expression=(
            _expression_scores(outcomes, vocabulary) if scored_expression else {"given": True}
        ),
        va=_va_scores(pairs) if "va" not in grains else None,
        aus=_au_scores(pairs) if "aus" not in grains else None,
        cost=_cost_scores(outcomes),
        confidence=_confidence_scores(outcomes, expression=scored_expression),
        items=outcomes,
    )


# --- Markdown ----------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_GRAIN_WORDS = {"expression": "expression", "va": "valence/arousal", "aus": "AUs"}


def _given_line(report: EvalReport) -> str:
    if not report.given:
        return "Nothing given: every grain is predicted from the image alone and scored."
    given = ", ".join(
        f"{_GRAIN_WORDS[g]} ({n} of {report.n_items} images)" for g, n in report.given.items()
    )
    scored = [_GRAIN_WORDS[g] for g in GRAINS if g not in report.given]
    return (
        f"Given as known labels: {given}. Scored: {', '.join(scored) or 'nothing'}; "
        "given grains are not scored."
    )


def _markdown(report: EvalReport) -> str:
    confidence, cost = report.confidence, report.cost
    expression = report.expression
    lines = [
        f"# Evaluation: {report.backend} ({report.model}), strategy {report.strategy}",
        "",
        f"{report.n_items} images, {report.n_answered} answered.",
        "",
        _given_line(report),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    if expression.get("given"):
        lines.append("| expression | given |")
    else:
        lines += [
            f"| expression accuracy | {_fmt(expression.get('accuracy'))} |",
            f"| expression macro-F1 | {_fmt(expression.get('macro_f1'))} |",
        ]
    if report.va is None and "va" in report.given:
        lines.append("| valence/arousal | given |")
    if report.va is not None:
        lines += [
            f"| valence CCC / RMSE | {_fmt(report.va['ccc_valence'])} / "
            f"{_fmt(report.va['rmse_valence'])} |",
            f"| arousal CCC / RMSE | {_fmt(report.va['ccc_arousal'])} / "
            f"{_fmt(report.va['rmse_arousal'])} |",
        ]
    if report.aus is not None:
        lines.append(
            f"| AU mean F1 ({len(report.aus['f1'])} AUs) | {_fmt(report.aus['mean_f1'])} |"
        )
    elif "aus" in report.given:
        lines.append("| AUs | given |")
    lines += [
        f"| samples per image | {_fmt(cost['samples_per_image'], 2)} |",
        f"| requests per image | {_fmt(cost['requests_per_image'], 2)} |",
        f"| tokens per image (prompt / completion) | {_fmt(cost['prompt_tokens_per_image'], 0)}"
        f" / {_fmt(cost['completion_tokens_per_image'], 0)} |",
        f"| cost per image (USD) | {_fmt(cost['cost_per_image_usd'], 5)} |",
        f"| AUROC of expression confidence | {_fmt(confidence['auroc'])} |",
        f"| expected calibration error | {_fmt(confidence['ece'])} |",
        f"| overall error rate | {_fmt(confidence['error_rate'])} |",
    ]
    for budget, rate in confidence["accepted_error_rate"].items():
        lines.append(f"| error rate auto-accepted, {budget} reviewed | {_fmt(rate)} |")
    lines += [
        f"| Spearman with FER+ vote share | {_fmt(confidence['spearman_vote_share'])} |",
        f"| flagged for review | {_fmt(confidence['flagged_rate'])} |",
    ]
    if report.aus is not None:
        lines += ["", "| AU | F1 |", "|---|---|"]
        lines += [f"| AU{au} | {_fmt(f1)} |" for au, f1 in report.aus["f1"].items()]
    return "\n".join(lines) + "\n"
