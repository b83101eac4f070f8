"""Background jobs of the review app: ids in, one service call."""

from __future__ import annotations

from review.feedback.services import gold_check_run


def gold_check(check_id: int) -> None:
    gold_check_run(check_id=check_id)
