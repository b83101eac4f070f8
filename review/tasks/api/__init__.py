"""Review through the API: claim, decide, skip, undo and release, under the review page's rules.

Every action calls the service the page calls (``review.tasks.services``), and a
decision's fields go through the page's own parsing (``review.tasks.forms``), so
that the API refuses what the page refuses, with its message, and writes nothing
then. Values that are not valid answer 422; an action the queue's state refuses
(the task is not yours, your hold expired, it was decided already, nothing to
undo) answers 409.

A task shows what the review page shows (``review.tasks.context``): for a blind
audit task the face and the choices only, no machine answer, confidence, flag
reason, known label or earlier decision, since anything shown first pulls the
reviewer's answer towards it. A gold question looks like any first review to
everyone but an admin: its kind reads ``first``, in the tasks, in the decisions
and in the filters, and no time tells when it was made.

The page remembers skips in the browser's session (``review.tasks.memory``): a
skipped task is not offered again to that session, and undo takes back the last
skip or decision, whichever came later. The API keeps the same memory in one
server-side session per user (``endpoints._memory``), so that a script's skip, claim and
undo work as the page's buttons do.
"""

from review.tasks.api.endpoints import router

__all__ = ["router"]
