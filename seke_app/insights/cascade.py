"""A cascade run's figures per stage: how many images were escalated, what each model
cost, and how accurate each model's answers are.

Three rows (``engine.cascade``):

* the cheap stage: the run's model, on every image it annotated. Its answers are
  the accepted annotations and, for the escalated images, the answers kept in
  ``Annotation.cheap_result``: the figures of running the cheap model alone;
* the strong stage: the strong model, on the escalated images only;
* the combined output: the annotations as stored, the cascade's result.

Cost per stage is what the endpoint billed each model, recorded call by call on
the run (``GenerationRun.strong_cost_usd``; the run's model spent the rest). A
model without a known price (``engine.llm.prices.model_price``, with ``SEKE_PRICES``) is shown as
unpriced, never as free: its calls are counted at $0.

Accuracy is the share of answers that agree with the image's human reference
(``references``: gold questions, reviews, blind audits, and the dataset's own
labels on grains the model was not given), as on the dashboard: per answer,
whether the expression is right, and whether every grain the reference has is
right. Each figure says how many references it rests on. Reviews were made on
the stored answers, and an ``accept`` stands behind their values, so reviews
favour the stage that decided an image; gold questions, audits' corrections and
dataset labels favour neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain

from django.db.models import Count, Q

from seke_app.engine.cascade import CHEAP, STRONG
from seke_app.insights.dashboards import AnnotationRow, Scorer, stream_rows
from seke_app.insights.references import Labels, Reference, human_references
from seke_app.models import Annotation, GenerationRun
from seke_app.runs.backends import model_priced


@dataclass(frozen=True)
class StageFigures:
    """One stage's images, calls, cost and accuracy."""

    name: str
    model: str
    n_images: int
    requests: int
    cost_usd: Decimal
    # False when no price is known for the model: its cost is then not $0 but unknown.
    priced: bool
    # (references, share right): the expression, and every grain the reference has.
    expression: tuple[int, float | None]
    overall: tuple[int, float | None]


@dataclass(frozen=True)
class CascadeFigures:
    run: GenerationRun
    n_images: int
    n_escalated: int
    stages: list[StageFigures]

    @property
    def escalated_share(self) -> float | None:
        return self.n_escalated / self.n_images if self.n_images else None


def _cheap_rows(annotations: Iterable[Annotation]) -> Iterator[AnnotationRow]:
    """The cheap model's answers on the escalated images, as scorable rows."""
    for annotation in annotations:
        kept = annotation.cheap_result
        image = annotation.image
        confidence = float(kept.get("confidence", annotation.cheap_confidence or 0.0))
        yield AnnotationRow(
            image_id=annotation.image_id,
            confidences={g: confidence for g in ("expression", "va", "aus", "overall")},
            labels=Labels.of(
                kept.get("expression"), kept.get("valence"), kept.get("arousal"), kept.get("aus")
            ),
            au_rates={},
            known=Labels.of(
                image.known_expression, image.known_valence, image.known_arousal, image.known_aus
            ),
            given=frozenset(annotation.known_grains or ()),
            held=bool(kept.get("held")),
        )


def _scored(rows: Iterable[AnnotationRow], references: Mapping[int, Reference]) -> Scorer:
    scorer = Scorer()
    for row in rows:
        scorer.score(row, references)
    return scorer


def _stage(
    name: str, model: str, n_images: int, requests: int, cost: Decimal, scorer: Scorer
) -> StageFigures:
    return StageFigures(
        name=name,
        model=model,
        n_images=n_images,
        requests=requests,
        cost_usd=cost,
        priced=model_priced(GenerationRun.Backend.OPENAI, model),
        expression=scorer.accuracy("expression"),
        overall=scorer.accuracy("overall"),
    )


def cascade_figures(*, run: GenerationRun) -> CascadeFigures | None:
    """The run's figures per stage; None for a run of one model."""
    if not run.is_cascade:
        return None
    annotations = Annotation.objects.filter(run=run)
    references = human_references(annotations.values("image_id"))
    version = run.prompt_version
    accepted = annotations.filter(stage=CHEAP)
    escalated = annotations.filter(stage=STRONG)
    counts = annotations.aggregate(n=Count("id"), escalated=Count("id", filter=Q(stage=STRONG)))
    n_images, n_escalated = counts["n"], counts["escalated"]
    kept = escalated.select_related("image").only(*_CHEAP_FIELDS).order_by()
    # Streamed, as the dashboard's rows are: a run's figures never hold it in memory.
    cheap_rows = chain(
        stream_rows(accepted, version=version), _cheap_rows(kept.iterator(chunk_size=2000))
    )
    stages = [
        _stage(
            "Cheap model, every image",
            run.model_name,
            n_images,
            run.cheap_requests,
            run.cheap_cost_usd,
            _scored(cheap_rows, references),
        ),
        _stage(
            "Strong model, escalated images",
            run.strong_model,
            n_escalated,
            run.strong_requests,
            run.strong_cost_usd,
            _scored(stream_rows(escalated, version=version), references),
        ),
    ]
    combined = _scored(stream_rows(annotations, version=version), references)
    stages.append(
        StageFigures(
            name="Combined: the annotations as stored",
            model=f"{run.model_name} + {run.strong_model}",
            n_images=n_images,
            requests=run.requests,
            cost_usd=run.cost_usd,
            priced=all(s.priced for s in stages),
            expression=combined.accuracy("expression"),
            overall=combined.accuracy("overall"),
        )
    )
    return CascadeFigures(run=run, n_images=n_images, n_escalated=n_escalated, stages=stages)


_CHEAP_FIELDS = (
    "image_id",
    "cheap_result",
    "cheap_confidence",
    "known_grains",
    "image__known_expression",
    "image__known_valence",
    "image__known_arousal",
    "image__known_aus",
)
