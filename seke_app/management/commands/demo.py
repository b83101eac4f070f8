"""``manage.py demo``: the whole product on one machine, on embedded defaults.

Prepares the database, creates an admin login, imports the bundled demo faces,
starts the embedded Redis and a worker, runs a generation run with the offline
annotator, and serves the app on 127.0.0.1 until Ctrl-C, which stops every
process this command started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.datasets.services import dataset_import
from seke_app.engine.uamc import UAMCParams
from seke_app.insights.certificates import run_audits_request
from seke_app.models import Dataset
from seke_app.queue import QueueUnavailable, ensure_redis
from seke_app.roles import user_create
from seke_app.runs.services import run_create

DEMO_FACES = Path(__file__).resolve().parent.parent.parent / "demo" / "faces"
DEMO_DATASET = "demo"
# Blind audit reviews the demo asks for once its run is done (see ``_start_run``).
DEMO_AUDITS = 5


class Command(BaseCommand):
    help = "Run SEKE on embedded defaults with the bundled demo faces, until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-serve",
            action="store_true",
            help="prepare everything, then stop instead of serving (for scripts and CI)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"SEKE demo — data in {settings.DATA_DIR}")
        call_command("migrate", interactive=False, verbosity=0)
        # Compressed static files with hashed names, which browsers may cache for good.
        call_command("collectstatic", interactive=False, verbosity=0)
        self._admin_login()
        report = dataset_import(
            path=DEMO_FACES,
            dataset_name=DEMO_DATASET,
            licence_note="CC BY 4.0 / public domain; see seke_app/demo/ATTRIBUTION.md",
        )
        self.stdout.write(report.summary())
        try:
            self.stdout.write(f"queue: {ensure_redis()}")
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        worker = self._start_worker()
        try:
            self._start_run()
            if not options["no_serve"]:
                self._serve(options["port"])
        finally:
            self._stop(worker)

    def _admin_login(self) -> None:
        username = os.environ.get("SEKE_ADMIN_USER", "admin")
        password = os.environ.get("SEKE_ADMIN_PASSWORD", "")
        if User.objects.filter(username=username).exists():
            if password:
                user = User.objects.get(username=username)
                try:
                    validate_password(password, user)
                except ValidationError as exc:
                    raise CommandError(f"SEKE_ADMIN_PASSWORD: {' '.join(exc.messages)}") from None
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(f"admin login: {username} (password from SEKE_ADMIN_PASSWORD)")
            else:
                self.stdout.write(
                    f"admin login: {username} (created earlier; password unchanged — set"
                    " SEKE_ADMIN_PASSWORD to reset it)"
                )
            return
        shown = password or secrets.token_urlsafe(12)
        try:
            user_create(username=username, password=shown, role="admin")
        except ValueError as exc:
            raise CommandError(f"SEKE_ADMIN_PASSWORD: {exc}") from None
        self.stdout.write(self.style.SUCCESS(f"admin login: {username} / {shown}"))

    def _start_worker(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "manage.py", "rqworker", "default", "generation", "exports"]
        worker = subprocess.Popen(command, cwd=settings.BASE_DIR)
        self.stdout.write(f"worker started (pid {worker.pid})")
        return worker

    def _start_run(self) -> None:
        dataset = Dataset.objects.get(name=DEMO_DATASET)
        if dataset.runs.exists():
            self.stdout.write("the demo dataset already has runs; start more from the Runs page")
            return
        # A run audits at least 50 images where it has them, so every one of the 25
        # demo faces would be a blind audit; the run audits none, and a few blind
        # audits are asked for once it is done (below).
        run = run_create(dataset=dataset, backend="offline", params=UAMCParams(), audit_share=0.0)
        self.stdout.write(
            f"generation run started with the offline annotator: {run.n_total} images"
            f" (watch it at /runs/{run.code}/)"
        )
        deadline = time.monotonic() + 300
        while not run.is_finished() and time.monotonic() < deadline:
            time.sleep(0.5)
            run.refresh_from_db()
        if not run.is_finished():
            raise CommandError("the demo run did not finish within 5 minutes")
        self.stdout.write(
            f"run {run.get_status_display().lower()}: {run.n_accepted} auto-accepted,"
            f" {run.n_flagged} flagged for review, {run.n_failed} failed"
        )
        # Every demo face comes with its expression, so the run completes VA and AUs
        # around a known label and is rarely unsure. A blind audit of a few faces is
        # how SEKE checks what it accepted; here it also gives the review page faces
        # to show. Five references are far too few to certify a threshold, and the
        # run page says how many would be.
        opened = run_audits_request(run=run, n=DEMO_AUDITS)
        self.stdout.write(
            f"{opened} blind audit reviews opened, drawn at random among the run's faces"
            " (too few to certify a threshold; the run page says how many would be)"
        )

    def _serve(self, port: int) -> None:
        self.stdout.write(self.style.SUCCESS(f"serving on http://127.0.0.1:{port}/ — Ctrl-C stops"))
        with contextlib.suppress(KeyboardInterrupt):
            call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)

    def _stop(self, worker: subprocess.Popen[bytes]) -> None:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        self.stdout.write("worker stopped")
        if settings.EMBEDDED_REDIS:
            from seke_app.queue import stop_embedded_redis

            stop_embedded_redis()
            self.stdout.write("embedded Redis stopped")
