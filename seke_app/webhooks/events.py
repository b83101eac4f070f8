"""What SEKE announces to webhooks, and the one moment each is announced.

Each function is called by the service that makes the change, inside the
transaction that makes it (so a change that rolls back announces nothing), and
only when the change really happened (the conditional UPDATE that made it
changed a row):

- ``run_finished``: a run stopped: completed, failed, cancelled, or stopped at its
  cost cap (``seke_app.runs.services``); ``data.status`` says which. A run that is
  resumed and stops again announces that finish too.
- ``export_finished``: an export's file is ready (``export.ready``) or the export
  failed (``export.failed``) (``seke_app.exports.services``). A cancelled export
  announces nothing: whoever cancelled it knows.
- ``certificate_issued``: a run's auto-accept threshold was certified
  (``seke_app.insights.certificates``); a certification that finds the audit too
  small certifies nothing and announces nothing.
- ``review_queue_empty``: a finished run's review queue (its review and
  adjudication tasks) became empty: a decision or a closing took its last waiting
  task, or the run finished with every task done (``review.tasks.events``).

Each event's ``key`` names the change, so that it is announced once, whichever of
two processes reports it first. Links are made absolute with ``SEKE_SITE_URL``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.urls import reverse

from seke_app.models import Export, GenerationRun, RunCertificate
from seke_app.models.webhooks import EventName, Webhook, WebhookEvent
from seke_app.webhooks.services import event_record


def link(path: str) -> str:
    """``path`` on the site people reach SEKE at, or the bare path without SEKE_SITE_URL."""
    base: str | None = settings.SITE_URL
    return f"{base.rstrip('/')}{path}" if base else path


def emit(name: str, *, key: str, data: dict[str, Any]) -> WebhookEvent | None:
    """Record the event once, with a delivery for every active webhook that wants it.

    None when the change was announced already. Webhooks are few, so they are read
    whole and filtered here (SQLite has no JSON containment lookup).
    """
    hooks = [hook for hook in Webhook.objects.filter(active=True) if hook.wants(name)]
    recorded = event_record(name=name, key=key, data=data, hooks=hooks)
    return recorded[0] if recorded else None


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _run(run: GenerationRun) -> dict[str, Any]:
    return {
        "code": str(run.code),
        "label": run.label,
        "number": run.number,
        "name": run.name,
        "dataset": {"code": str(run.dataset.code), "name": run.dataset.name},
        "url": link(reverse("run_detail", args=[run.code])),
    }


def run_finished(run: GenerationRun) -> WebhookEvent | None:
    """The run stopped (its status says how); ``run`` as read right after the UPDATE that
    stopped it, with its dataset and prompt version."""
    data = {
        "run": _run(run),
        "status": run.status,
        "status_display": run.get_status_display(),
        "error": run.error,
        "backend": run.backend,
        "model": run.model_name,
        # A cascade run's strong model and its share (empty and None otherwise).
        "strong_model": run.strong_model,
        "cascade": (
            {
                "escalated": run.n_escalated,
                "strong_requests": run.strong_requests,
                "strong_cost_usd": str(run.strong_cost_usd),
            }
            if run.is_cascade
            else None
        ),
        "prompt_version": run.prompt_version.number,
        "counts": {
            "images": run.n_total,
            "done": run.n_done,
            "auto_accepted": run.n_accepted,
            "flagged": run.n_flagged,
            "failed": run.n_failed,
            "not_annotated": run.n_remaining,
        },
        # null when the model's price is unknown: 0 would claim the run was free.
        "cost_usd": None if run.known_cost is None else str(run.known_cost),
        "requests": run.requests,
        "started_at": _when(run.started_at),
        "finished_at": _when(run.finished_at),
        "links": {
            "run": link(reverse("run_detail", args=[run.code])),
            "dashboard": link(reverse("run_dashboard", args=[run.code])),
            "review_queue": link(f"{reverse('review:queue')}?run={run.code}"),
        },
    }
    name = EventName.RUN_FINISHED.value
    return emit(name, key=f"{name}:{run.code}:{_when(run.finished_at)}", data=data)


def export_finished(export_id: int) -> WebhookEvent | None:
    """The export is done (``export.ready``) or failed (``export.failed``)."""
    export = Export.objects.select_related("dataset").get(id=export_id)
    ready = export.status == Export.Status.DONE
    if not ready and export.status != Export.Status.FAILED:
        raise ValueError(f"export {export.code} is {export.status}, neither done nor failed")
    links = {"export": link(reverse("export_detail", args=[export.code]))}
    if ready:
        links["download"] = link(reverse("export_download", args=[export.code]))
    data = {
        "export": {
            "code": str(export.code),
            "kind": export.kind,
            "kind_display": export.get_kind_display(),
        },
        "dataset": {"code": str(export.dataset.code), "name": export.dataset.name},
        "status": export.status,
        "error": export.error,
        "images_written": export.n_written,
        "images_skipped": export.n_skipped,
        "skipped_by_reason": export.skipped_by_reason,
        "file_name": export.file_name() if ready else None,
        "file_size": export.file_size if ready else None,
        "created_at": _when(export.created_at),
        "finished_at": _when(export.finished_at),
        "links": links,
    }
    name = (EventName.EXPORT_READY if ready else EventName.EXPORT_FAILED).value
    return emit(name, key=f"{name}:{export.code}", data=data)


def certificate_issued(certificate: RunCertificate) -> WebhookEvent | None:
    """A threshold was certified (a certificate with a threshold); call once it is stored."""
    if certificate.threshold is None:
        raise ValueError("a certificate without a threshold certifies nothing")
    run = GenerationRun.objects.select_related("dataset").get(id=certificate.run_id)
    data = {
        "certificate": {
            "code": str(certificate.code),
            "threshold": certificate.threshold,
            "grains": certificate.grains,
            "alpha": certificate.alpha,
            "delta": certificate.delta,
            "va_distance": certificate.va_distance,
            "coverage": certificate.coverage,
            "upper_bound": certificate.upper_bound,
            "references": certificate.n_references,
            "accepted_references": certificate.n_accepted_references,
            "errors_accepted": certificate.errors_accepted,
            "method": certificate.method,
        },
        "run": _run(run),
        "model": certificate.model_name,
        "prompt_version": certificate.prompt_version.number,
        "created_by": certificate.created_by.get_username() if certificate.created_by else None,
        "created_at": _when(certificate.created_at),
        "links": {"dashboard": link(reverse("run_dashboard", args=[run.code]))},
    }
    name = EventName.CERTIFICATE_ISSUED.value
    return emit(name, key=f"{name}:{certificate.code}", data=data)


def review_queue_empty(
    run: GenerationRun, *, decided: int, closed: int, last_closed_at: datetime
) -> WebhookEvent | None:
    """The finished run has no review task waiting any more.

    ``last_closed_at``, when its last task was decided or closed, names this
    emptying: the queue empties again only after a new task was opened and closed.
    """
    data = {
        "run": _run(run),
        "run_status": run.status,
        "tasks": {"decided": decided, "closed_without_decision": closed},
        "last_task_closed_at": _when(last_closed_at),
        "links": {
            "run": link(reverse("run_detail", args=[run.code])),
            "dashboard": link(reverse("run_dashboard", args=[run.code])),
            "export": link(reverse("export_new", args=[run.dataset.code])),
        },
    }
    name = EventName.REVIEW_QUEUE_EMPTY.value
    return emit(name, key=f"{name}:{run.code}:{_when(last_closed_at)}", data=data)
