"""Webhooks: the stage that tells the outside world what happened in SEKE.

Admins register URLs for events (a run finished, an export is ready or failed, a
threshold was certified, a finished run's review queue became empty). ``events``
records each event once, in the transaction of the change it reports, with a
delivery for every active webhook that wants it; ``services`` sends a delivery as
one signed POST per attempt from a background job (``jobs``), retries with backoff
and gives up after the last retry; ``http`` is the one place that makes the
request. ``views``, ``forms`` and ``api`` are the admins' pages and endpoints.
"""
