"""django-rq's ``rqworker``, with SEKE's Redis (embedded or REDIS_URL) made ready first."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError
from django_rq.management.commands import rqworker

from seke_app.queue import QueueUnavailable, ensure_redis


class Command(rqworker.Command):
    help = rqworker.Command.help + " Starts the embedded Redis first when REDIS_URL is unset."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            where = ensure_redis()
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"worker using {where}")
        super().handle(*args, **options)  # type: ignore[no-untyped-call]
