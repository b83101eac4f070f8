"""django-rq's ``rqworker``, with SEKE's Redis (embedded or REDIS_URL) made ready first.

With the embedded Redis the worker counts as one of its users: when the worker
exits normally (Ctrl-C, SIGTERM, the end of ``--burst``) and no other SEKE
process on the machine uses the server, the server is stopped, its queue saved
for the next start (``seke_app.queue`` explains the lifetime).
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django_rq.management.commands import rqworker
from threadpoolctl import threadpool_limits

from seke_app.queue import QueueUnavailable, ensure_redis
from seke_app.runs.backends import BackendUnavailable, preload_offline_model


class Command(rqworker.Command):
    help = rqworker.Command.help + " Starts the embedded Redis first when REDIS_URL is unset."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            where = ensure_redis()
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"worker using {where}")
        if settings.EMBEDDED_REDIS:
            self.stderr.write(
                "the embedded Redis stops, its queue saved, once the last SEKE process"
                " on this machine that uses it exits"
            )
        # One BLAS thread per process: the offline CNN's small matrix products run
        # many times slower when OpenBLAS spreads each one over every core (figures
        # in bench/README.md), and a machine runs several workers anyway.
        threadpool_limits(1)
        # Loaded once here, so that every job's forked work horse inherits the weights.
        with contextlib.suppress(BackendUnavailable):
            preload_offline_model()
        super().handle(*args, **options)  # type: ignore[no-untyped-call]
