"""The human reference for an image, per grain: the one contract between the two apps.

``seke_app`` owns this module and ``review`` implements it. It declares the
decision vocabulary (``DecisionKind``, ``DecisionAction``), which ``review``'s
models take as their choices, and the ``DecisionStore`` interface through which
``review`` hands its decisions over; ``review`` registers its store when Django
starts. Everything in ``seke_app`` that needs to know what humans said (curation,
scoring on the dashboards and comparisons, reviewer agreement, run selection)
asks here, so every consumer reads one definition of the human label:

1. Decisions that were undone, and answers to gold questions (they test the
   reviewer, not the image), are never read.
2. A decision stands behind, per grain, the values it decided; ``accept``, and a
   grain a correction left empty, stand behind the reviewed machine values.
3. The decisions that *stand* on an image are its latest adjudication and every
   review (first or second, on any annotation of the image, blind audits
   included) made after it; without an adjudication, all its reviews. The
   latest first review among them decides (the adjudication, or the latest
   second review, when there is none), and every other standing decision must
   agree with it: never "latest wins". ``image_disputes`` says where they
   disagree (``disputes``, pair by pair); ``review`` opens an adjudication task
   by the same function. A disputed grain is *unresolved* until an admin
   adjudicates: it has no human label, so curation does not export it as human
   and scoring does not score it against a review; a lower-ranked source (the
   dataset's own label) still applies in both. When one standing decision
   rejects the image and another does not, every grain is unresolved; when all
   of them do, the image is rejected. An adjudication alone settles the image.

For scoring, an image's active gold question (labels an admin trusts) outranks
the reviews; curation never exports gold questions' labels. Below the reviews,
the label imported with the dataset fills a grain, except a grain the annotation's
model was given as a known label (``Annotation.known_grains``): the prompt told
the model that label is correct and to copy it, so agreement with it measures
copying, not annotation. Such a grain is scored only against a gold question or a
review, never against the dataset's label (``reference_for``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.db import models
from django.db.models import Exists, OuterRef

from seke_app.engine import quality
from seke_app.models import Annotation

GRAINS = ("expression", "va", "aus")
# Where a reference label came from, as shown on the pages. "audit" is a review of
# a blind audit task (``Decision.audit``), "review" any other review: the two are
# told apart because only the first is free of selection by confidence.
SOURCES = ("gold", "audit", "review", "dataset")

VA = tuple[float, float]
AUs = dict[int, bool]


class DecisionKind(models.TextChoices):
    """The review round a task and its decision belong to."""

    FIRST = "first", "First review"
    SECOND = "second", "Second, independent review"
    ADJUDICATION = "adjudication", "Adjudication (admins)"
    GOLD = "gold", "Gold question"


class DecisionAction(models.TextChoices):
    ACCEPT = "accept", "Accepted as is"
    CORRECT = "correct", "Corrected"
    REJECT_IMAGE = "reject_image", "Image rejected"


def parse_aus(value: Any) -> AUs | None:
    if value is None:
        return None
    return {int(au): bool(on) for au, on in value.items()}


def va_pair(valence: float | None, arousal: float | None) -> VA | None:
    if valence is None or arousal is None:
        return None
    return (float(valence), float(arousal))


@dataclass
class Labels:
    """One rater's labels of one image; None where a grain is missing."""

    expression: str | None = None
    va: VA | None = None
    aus: AUs | None = None

    @classmethod
    def of(
        cls, expression: str | None, valence: float | None, arousal: float | None, aus: Any
    ) -> Labels:
        """Labels from stored columns: VA only as a pair, AUs as a JSON map.

        An empty AU map codes no AU, so it is no AU label.
        """
        return cls(expression, va_pair(valence, arousal), parse_aus(aus) or None)

    def grain(self, name: str) -> Any:
        return getattr(self, name)


def grain_agrees(name: str, machine: Any, reference: Any) -> bool:
    """Whether a label agrees with the reference on one grain.

    Expression: equal. VA: within ``quality.VA_TOLERANCE`` on both axes. AUs: equal
    on every AU the reference codes (a dataset may code only some), a missing AU
    counting as absent. A missing label never agrees.
    """
    if machine is None:
        return False
    if name == "expression":
        return bool(machine == reference)
    if name == "va":
        return quality.va_agrees(machine, reference)
    return all(bool(machine.get(au)) == on for au, on in reference.items())


@dataclass(frozen=True)
class Decision:
    """One human decision as the contract reads it.

    ``decided`` holds the values the reviewer entered (None where a grain was left
    empty), ``reviewed`` the machine values of the annotation it judged.
    ``audit`` marks a blind audit: the reviewer labelled an image drawn at random
    from all of a run's annotations without seeing the machine's answer, so its
    labels are references free of both selection by confidence and anchoring.
    """

    image_id: int
    annotation_id: int
    kind: DecisionKind
    action: DecisionAction
    decided: Labels
    reviewed: Labels
    reviewer: str
    decided_at: datetime
    audit: bool = False

    @property
    def rejects(self) -> bool:
        return self.action == DecisionAction.REJECT_IMAGE

    @property
    def labels(self) -> Labels:
        """What the decision stands behind, per grain."""
        corrected = self.action == DecisionAction.CORRECT

        def pick(name: str) -> Any:
            decided = self.decided.grain(name) if corrected else None
            return decided if decided is not None else self.reviewed.grain(name)

        return Labels(*(pick(name) for name in GRAINS))


class DecisionStore(Protocol):
    """What ``review`` provides: its decisions and gold questions, read-only."""

    def decisions(
        self,
        *,
        image_ids: models.QuerySet[Any] | None = None,
        annotations: models.QuerySet[Annotation] | None = None,
        double_reviewed: bool = False,
    ) -> Iterator[Decision]:
        """Decisions on these images (or annotations), not undone, gold answers left out.

        Ordered by image (by annotation when ``annotations`` is given), newest first
        within it. ``double_reviewed`` keeps only annotations with a second review.
        """
        ...

    def gold_labels(self, image_ids: models.QuerySet[Any]) -> Iterator[tuple[int, Labels]]:
        """The labels of the active gold questions on these images."""
        ...

    def decision_exists(
        self, *, annotation: OuterRef | None = None, image: OuterRef | None = None
    ) -> Exists:
        """Whether a decision (not undone, not a gold answer) exists on the outer row."""
        ...

    def review_waiting(
        self, *, annotation: OuterRef | None = None, image: OuterRef | None = None
    ) -> Exists:
        """Whether a review task (not a gold question) awaits a decision on the outer row."""
        ...


_stores: list[DecisionStore] = []


def register_store(store: DecisionStore) -> None:
    """Called once by ``review`` when Django starts."""
    _stores[:] = [store]


def decision_store() -> DecisionStore:
    if not _stores:
        raise RuntimeError("no decision store is registered: is the review app installed?")
    return _stores[0]


@dataclass
class Reference:
    """An image's reference labels, where each came from, and what is unresolved.

    ``decisions`` names the decision behind each grain taken from a review;
    ``unresolved`` the grains two independent reviews disagree on.
    """

    labels: Labels = field(default_factory=Labels)
    sources: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    unresolved: set[str] = field(default_factory=set)
    rejected: bool = False

    def fill(self, labels: Labels, source: str, decision: Decision | None = None) -> None:
        """Take the grains this reference still lacks from ``labels``."""
        for name in GRAINS:
            value = labels.grain(name)
            if value is not None and self.labels.grain(name) is None:
                setattr(self.labels, name, value)
                self.sources[name] = source
                if decision is not None:
                    self.decisions[name] = decision


def standing(decisions: Iterable[Decision]) -> list[Decision]:
    """One image's decisions (newest first) that stand: back to its latest adjudication."""
    found: list[Decision] = []
    for decision in decisions:
        found.append(decision)
        if decision.kind == DecisionKind.ADJUDICATION:
            break
    return found


def _deciding(group: list[Decision]) -> Decision:
    """The standing decision that decides: the latest first review, else the latest."""
    return next((d for d in group if d.kind == DecisionKind.FIRST), group[0])


# Two independent reviews disagree on VA when valence or arousal are further apart
# than this, and on the AUs when their codings differ in at least AU_DISAGREEMENT
# AUs: one AU is within what two FACS coders commonly differ on.
VA_DISAGREEMENT = quality.VA_TOLERANCE
AU_DISAGREEMENT = 2
IMAGE = "image"


def disputes(first: Decision, second: Decision) -> dict[str, str]:
    """Where two independent reviews of one image disagree: per grain, in words.

    ``IMAGE`` stands for one of them rejecting the image and the other not.
    """
    if first.rejects or second.rejects:
        return {IMAGE: "one reviewer rejected the image"} if first.rejects != second.rejects else {}
    mine, theirs = first.labels, second.labels
    found: dict[str, str] = {}
    if mine.expression != theirs.expression:
        found["expression"] = f"expression {mine.expression} vs {theirs.expression}"
    if (
        mine.va is not None
        and theirs.va is not None
        and not quality.va_agrees(mine.va, theirs.va, VA_DISAGREEMENT)
    ):
        found["va"] = f"valence-arousal apart by more than {VA_DISAGREEMENT}"
    on_mine = {au for au, on in (mine.aus or {}).items() if on}
    on_theirs = {au for au, on in (theirs.aus or {}).items() if on}
    if len(on_mine ^ on_theirs) >= AU_DISAGREEMENT:
        differing = ", ".join(f"AU{au}" for au in sorted(on_mine ^ on_theirs))
        found["aus"] = f"AU codings differ in {differing}"
    return found


def image_disputes(decisions: Iterable[Decision]) -> dict[str, str]:
    """Where the standing decisions on one image (newest first) disagree with the deciding one."""
    group = standing(decisions)
    if len(group) < 2:
        return {}
    chosen = _deciding(group)
    found: dict[str, str] = {}
    for other in group:
        if other is not chosen:
            for name, words in disputes(chosen, other).items():
                found.setdefault(name, words)
    return found


def settle(decisions: Iterable[Decision], reference: Reference) -> None:
    """Add what one image's decisions (newest first) settle to ``reference``."""
    group = standing(decisions)
    if not group:
        return
    disputed = image_disputes(group)
    if IMAGE in disputed:
        reference.unresolved.update(GRAINS)
        return
    reference.unresolved.update(disputed)
    deciding = _deciding(group)
    if deciding.rejects:
        reference.rejected = "gold" not in reference.sources.values()
        return
    labels = deciding.labels
    for name in reference.unresolved:
        setattr(labels, name, None)
    reference.fill(labels, "audit" if deciding.audit else "review", deciding)


def human_references(image_ids: models.QuerySet[Any], *, gold: bool = True) -> dict[int, Reference]:
    """The human references of the images ``image_ids`` selects (ids as a subquery).

    Two queries whatever the number of images (one without ``gold``); images no
    human has labelled are missing from the result. Dataset labels are added by the
    caller from the rows it reads anyway (``reference_for``).
    """
    store = decision_store()
    references: dict[int, Reference] = {}
    if gold:
        for image_id, labels in store.gold_labels(image_ids):
            references.setdefault(image_id, Reference()).fill(labels, "gold")
    for image_id, group in _grouped(store.decisions(image_ids=image_ids)):
        settle(group, references.setdefault(image_id, Reference()))
    return references


def _grouped(decisions: Iterable[Decision]) -> Iterator[tuple[int, list[Decision]]]:
    """Consecutive decisions on one image, for decisions ordered by image."""
    current: int | None = None
    group: list[Decision] = []
    for decision in decisions:
        if decision.image_id != current and group:
            assert current is not None
            yield current, group
            group = []
        current = decision.image_id
        group.append(decision)
    if group:
        assert current is not None
        yield current, group


def reference_for(
    references: Mapping[int, Reference],
    image_id: int,
    known: Labels,
    *,
    given: Collection[str] = (),
) -> Reference | None:
    """The image's full reference, dataset labels filling the gaps; None when unscored.

    ``given`` names the grains the annotation being scored was given as known labels
    (``Annotation.known_grains``): the dataset's label never fills those, so a grain
    the model was told to copy is never scored against what it copied. A caller
    that scores annotations passes it (``dashboards.AnnotationRow.reference`` does);
    only one that asks for the image's reference alone may leave it out.
    """
    found = references.get(image_id)
    if found is not None and found.rejected:
        return None
    reference = Reference()
    if found is not None:
        labels = found.labels
        reference = Reference(
            Labels(labels.expression, labels.va, labels.aus),
            dict(found.sources),
            dict(found.decisions),
            set(found.unresolved),
        )
    reference.fill(_without(known, given), "dataset")
    if not reference.sources:
        return None
    return reference


def _without(labels: Labels, grains: Collection[str]) -> Labels:
    """The labels with the named grains left empty."""
    return Labels(*(None if name in grains else labels.grain(name) for name in GRAINS))


def decided_annotations() -> Exists:
    """For a query over annotations: whether a human decided the annotation."""
    return decision_store().decision_exists(annotation=OuterRef("pk"))


def decided_images() -> Exists:
    """For a query over images: whether a human decided any annotation of the image."""
    return decision_store().decision_exists(image=OuterRef("pk"))


def waiting_annotations() -> Exists:
    """For a query over annotations: whether a review task awaits a decision on it."""
    return decision_store().review_waiting(annotation=OuterRef("pk"))


def waiting_images() -> Exists:
    """For a query over images: whether a review task awaits a decision on the image."""
    return decision_store().review_waiting(image=OuterRef("pk"))
