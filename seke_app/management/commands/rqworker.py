"""django-rq's ``rqworker``, with SEKE's Redis (embedded or REDIS_URL) made ready first.

With the embedded Redis the worker counts as one of its users: when the worker
exits normally (Ctrl-C, SIGTERM, the end of ``--burst``) and no other SEKE
process on the machine uses the server, the server is stopped, its queue saved
for the next start (``seke_app.queue`` explains the lifetime).

Every worker but a ``--burst`` one runs RQ's scheduler unless told
``--without-scheduler`` (``--with-scheduler`` makes a burst worker run it too): a webhook
delivery that failed is retried, and a batch run's open batch is polled, by a job
scheduled for later (``enqueue_at``, ``enqueue_in``), which only a scheduler moves to
its queue when it is due. RQ lets one scheduler per queue
work at a time, so many workers cost nothing more. A worker on "default" also
queues, as it starts, every webhook delivery that is due (``seke_app.webhooks``),
so that none waits for ever after a crash or a lost queue.
"""

from __future__ import annotations

import contextlib
from argparse import ArgumentParser
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import CommandError
from django_rq.management.commands import rqworker
from threadpoolctl import threadpool_limits

from seke_app.queue import QueueUnavailable, ensure_redis
from seke_app.runs.backends import BackendUnavailable, preload_offline_model
from seke_app.webhooks.services import QUEUE as WEBHOOK_QUEUE
from seke_app.webhooks.services import sweep_enqueue


class Command(rqworker.Command):
    help = rqworker.Command.help + " Starts the embedded Redis first when REDIS_URL is unset."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)  # type: ignore[no-untyped-call]
        parser.add_argument(
            "--without-scheduler",
            action="store_false",
            dest="with_scheduler",
            help="do not run RQ's scheduler: jobs scheduled for later (webhook retries,"
            " batch runs' polls) wait for a worker that does",
        )
        # Unset: on, except for a --burst worker, which stops as soon as its queues are
        # empty (jobs scheduled for later are not its to wait for) and whose exit the
        # scheduler's lock would otherwise hold up for many seconds.
        parser.set_defaults(with_scheduler=None)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["with_scheduler"] is None:
            options["with_scheduler"] = not options.get("burst")
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
        if WEBHOOK_QUEUE in (args or ("default",)):
            try:
                sweep_enqueue()
            except redis.RedisError as exc:
                self.stderr.write(f"webhook deliveries that are due were not queued: {exc}")
        super().handle(*args, **options)  # type: ignore[no-untyped-call]
