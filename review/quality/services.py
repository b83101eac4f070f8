"""Reviewer quality: gold questions and how each reviewer scores on them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from review.models import GoldQuestion, ReviewDecision, ReviewTask
from review.tasks.services import Decision, ReviewRefused, validate_decision
from seke_app.models import FaceImage


@transaction.atomic
def gold_question_set(
    *,
    image: FaceImage,
    expression: str | None,
    valence: float | None,
    arousal: float | None,
    aus: dict[int, bool] | None,
    user: User,
) -> GoldQuestion:
    """Mark an image as a gold question with the labels an admin trusts."""
    problems = validate_decision(
        Decision(
            action=ReviewDecision.Action.CORRECT,
            expression=expression,
            valence=valence,
            arousal=arousal,
            aus=aus,
        ),
        image.dataset.vocabulary(),
    )
    if expression is None:
        problems.insert(0, "a gold question needs at least its expression")
    if problems:
        raise ReviewRefused("; ".join(problems).capitalize() + ".")
    question, _ = GoldQuestion.objects.update_or_create(
        image=image,
        defaults={
            "expression": expression,
            "valence": valence,
            "arousal": arousal,
            "aus": {str(a): on for a, on in sorted(aus.items())} if aus is not None else None,
            "active": True,
            "created_by": user,
        },
    )
    return question


@dataclass
class GoldScore:
    reviewer: str
    answered: int = 0
    expression_right: int = 0
    va_pairs: int = 0
    va_distance_sum: float = 0.0
    au_pairs: int = 0
    au_right: int = 0

    @property
    def expression_accuracy(self) -> float | None:
        return self.expression_right / self.answered if self.answered else None

    @property
    def va_distance(self) -> float | None:
        return self.va_distance_sum / self.va_pairs if self.va_pairs else None

    @property
    def au_accuracy(self) -> float | None:
        return self.au_right / self.au_pairs if self.au_pairs else None


def _au_agreement(decided: dict[str, Any] | None, gold: dict[str, Any] | None) -> tuple[int, int]:
    if decided is None or gold is None:
        return 0, 0
    shared = set(decided) & set(gold)
    return sum(bool(decided[a]) == bool(gold[a]) for a in shared), len(shared)


def gold_scores() -> list[GoldScore]:
    """Each reviewer's accuracy on the gold questions they answered (undone ones excluded)."""
    scores: dict[str, GoldScore] = defaultdict(lambda: GoldScore(reviewer=""))
    decisions = ReviewDecision.objects.filter(
        kind=ReviewTask.Kind.GOLD, undone_at__isnull=True
    ).select_related("reviewer", "task__gold")
    for decision in decisions.iterator(chunk_size=500):
        gold = decision.task.gold
        if gold is None:
            continue
        name = decision.reviewer.get_username()
        score = scores[name]
        score.reviewer = name
        score.answered += 1
        score.expression_right += decision.expression == gold.expression
        if None not in (decision.valence, decision.arousal, gold.valence, gold.arousal):
            score.va_pairs += 1
            score.va_distance_sum += (
                (decision.valence - gold.valence) ** 2  # type: ignore[operator]
                + (decision.arousal - gold.arousal) ** 2  # type: ignore[operator]
            ) ** 0.5
        right, total = _au_agreement(decision.aus, gold.aus)
        score.au_right += right
        score.au_pairs += total
    return sorted(scores.values(), key=lambda s: s.reviewer)
