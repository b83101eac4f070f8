"""What a reviewer's session remembers between requests: skips, and what undo takes back.

A skip leaves no row behind (the task simply goes back to the queue), so it is
remembered in a session: the tasks skipped, which that session is not offered
again, and the last skip with its time, which undo may take back within the undo
window. The review page uses the browser's session; the API one session per user
(``review.tasks.api``). Both ask the functions here, so that the rules are one.
"""

from __future__ import annotations

import time

from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import SessionBase

from review.models import ReviewDecision
from review.tasks.services import last_undoable_decision, undo_window

SKIPPED = "review_skipped"
# The reviewer's last skip, {"task": id, "at": epoch seconds}: undo takes back
# whichever is newer, this or the last decision.
LAST_SKIP = "review_last_skip"
# How many skipped tasks a session keeps out of its queue (the newest ones).
SKIPS_KEPT = 200


def skipped_ids(session: SessionBase) -> tuple[int, ...]:
    """The tasks this session skipped, which its claims leave out."""
    return tuple(session.get(SKIPPED, []))


def skips_forget(session: SessionBase) -> None:
    """Offer the skipped tasks again (reviewing starts afresh)."""
    # Written only when there is something to forget: a session write costs a
    # query on every claim.
    if session.get(SKIPPED):
        session[SKIPPED] = []


def skip_remember(session: SessionBase, task_id: int) -> None:
    """Note a skip: the task is left out of this session's claims, and undo may take it back."""
    session[SKIPPED] = [*session.get(SKIPPED, []), task_id][-SKIPS_KEPT:]
    session[LAST_SKIP] = {"task": task_id, "at": time.time()}


def _recent_skip(session: SessionBase) -> dict[str, float] | None:
    skip = session.get(LAST_SKIP)
    if not skip or time.time() - skip["at"] > undo_window().total_seconds():
        return None
    return dict(skip)


def skip_undone(session: SessionBase, task_id: int) -> None:
    """Forget the skip of ``task_id``, which undo is taking back."""
    session.pop(LAST_SKIP, None)
    session[SKIPPED] = [i for i in session.get(SKIPPED, []) if i != task_id]


def undoable(session: SessionBase, user: User) -> bool:
    """Whether undo has something to take back (a recent skip or decision)."""
    return _recent_skip(session) is not None or last_undoable_decision(user) is not None


def undo_target(session: SessionBase, user: User) -> int | ReviewDecision | None:
    """What undo takes back: the id of the task last skipped or the last decision,
    whichever came later within the undo window; None when neither is recent enough."""
    decision = last_undoable_decision(user)
    skipped = _recent_skip(session)
    if skipped is not None and (
        decision is None or skipped["at"] > decision.created_at.timestamp()
    ):
        return int(skipped["task"])
    return decision
