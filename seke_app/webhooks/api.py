"""Webhooks through the API (admins only, as the webhook pages are).

A webhook is registered with the page's form (``WebhookForm``: the same checks and
``webhook_create``); its secret is in the answer, as it is on its page. The
delivery log is read page by page, newest first, each delivery with every
attempt; a test event and a redelivery are queued as the page's buttons queue
them (202).
"""

# No ``from __future__ import annotations``: ninja reads the parameters of a paginated
# endpoint from its wrapper, in whose module the names of the annotations are unknown.

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema
from ninja.pagination import CursorPagination, paginate
from ninja.responses import Status
from pydantic import ConfigDict

from seke_app.api.core import ADMINS_ONLY, ErrorOut, api_user, refused
from seke_app.api.forms import validated
from seke_app.models.webhooks import SUBSCRIBABLE, Webhook, WebhookDelivery
from seke_app.queue import QueueUnavailable
from seke_app.webhooks.forms import WebhookForm
from seke_app.webhooks.services import (
    WebhookRefused,
    delivery_redeliver,
    webhook_delete,
    webhook_ping,
)

router = Router(tags=["webhooks"], auth=ADMINS_ONLY)

RECENT = 10
_EVENTS = ", ".join(value for value, _ in SUBSCRIBABLE)
_STATUSES = "; ".join(f"{v} ({label.lower()})" for v, label in WebhookDelivery.Status.choices)


class WebhookIn(Schema):
    """The webhook form's fields, checked by the form (422 with its messages)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where SEKE POSTs each event: an http:// or https:// URL.")
    events: list[str] = Field(description=f"The events it is told about, among {_EVENTS}.")
    description: str = Field("", description="What receives the events, in a few words.")


class AttemptOut(Schema):
    number: int
    started_at: datetime
    finished_at: datetime | None = Field(
        description="Null for an attempt under way, or cut short by a worker that stopped."
    )
    duration_ms: int | None
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str = Field(description="Why the attempt failed, in a sentence; empty if it did not.")
    response_body: str = Field(description="The start of the receiver's answer (2 KiB at most).")


class DeliveryOut(Schema):
    code: UUID = Field(description="The payload's id and the X-SEKE-Delivery header.")
    webhook: UUID
    event: str
    # A plain string: several models' choices are called "Status", and the schema
    # would keep one of them under that name.
    status: str = Field(description=f"One of {_STATUSES}.")
    attempts: int = Field(description="Attempts in this round (a redelivery starts a new one).")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The JSON object POSTed, as sent.")
    log: list[AttemptOut] = Field(description="Every attempt ever made, oldest first.")

    @staticmethod
    def resolve_webhook(delivery: WebhookDelivery) -> UUID:
        return delivery.hook.code

    @staticmethod
    def resolve_event(delivery: WebhookDelivery) -> str:
        return delivery.event.name

    @staticmethod
    def resolve_payload(delivery: WebhookDelivery) -> dict[str, Any]:
        return delivery.payload()

    @staticmethod
    def resolve_log(delivery: WebhookDelivery) -> list[Any]:
        return list(delivery.log.all())


class WebhookOut(Schema):
    code: UUID
    url: str
    description: str
    events: list[str]
    active: bool
    secret: str = Field(
        description="Signs every delivery (X-SEKE-Signature); SEKE made it. Keep it secret."
    )
    secret_rotated_at: datetime | None
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_created_by(hook: Webhook) -> str | None:
        return hook.created_by.get_username() if hook.created_by else None


class WebhookDetailOut(WebhookOut):
    recent_deliveries: list[DeliveryOut] = Field(
        description=f"The latest {RECENT} deliveries; the whole log is at .../deliveries."
    )

    @staticmethod
    def resolve_recent_deliveries(hook: Webhook) -> list[WebhookDelivery]:
        return list(_deliveries().filter(hook=hook)[:RECENT])


def _hooks() -> QuerySet[Webhook]:
    return Webhook.objects.select_related("created_by")


def _get_hook(code: UUID) -> Webhook:
    return get_object_or_404(_hooks(), code=code)


def _deliveries() -> QuerySet[WebhookDelivery]:
    return (
        WebhookDelivery.objects.select_related("hook", "event")
        .prefetch_related("log")
        .order_by("-id")
    )


def _get_delivery(code: UUID) -> WebhookDelivery:
    return get_object_or_404(_deliveries(), code=code)


@router.get("", response=list[WebhookOut], summary="List webhooks, newest first")
def webhook_list(request: HttpRequest) -> QuerySet[Webhook]:
    """Every webhook (a server has a handful: the list is not paged)."""
    return _hooks()


@router.post("", response={201: WebhookDetailOut, 400: ErrorOut}, summary="Register a webhook")
def webhook_new(request: HttpRequest, payload: WebhookIn) -> Status[Webhook]:
    """Register a URL for events; SEKE makes its secret, which the answer holds.

    The form checks the body (422 with its messages: a URL that is not http(s), no
    event, an unknown event); nothing is written on a refusal.
    """
    form = validated(WebhookForm, payload)
    try:
        hook = form.create(user=api_user(request))
    except WebhookRefused as exc:
        raise refused(400, exc) from None
    return Status(201, _get_hook(hook.code))


@router.get("/{code}", response=WebhookDetailOut, summary="A webhook and its latest deliveries")
def webhook_detail(request: HttpRequest, code: UUID) -> Webhook:
    return _get_hook(code)


@router.delete("/{code}", response={204: None}, summary="Delete a webhook")
def webhook_remove(request: HttpRequest, code: UUID) -> Status[None]:
    """Delete the webhook with its delivery log; nothing more is sent to it."""
    webhook_delete(hook=_get_hook(code))
    return Status(204, None)


@router.get("/{code}/deliveries", response=list[DeliveryOut], summary="A webhook's delivery log")
@paginate(CursorPagination, ordering=("-id",), page_size=100, max_page_size=500)
def webhook_deliveries(request: HttpRequest, code: UUID) -> QuerySet[WebhookDelivery]:
    """Newest first, each delivery with every attempt's status code or error."""
    return _deliveries().filter(hook=_get_hook(code))


@router.post(
    "/{code}/ping",
    response={202: DeliveryOut, 409: ErrorOut, 503: ErrorOut},
    summary="Send a webhook a test event",
)
def webhook_ping_action(request: HttpRequest, code: UUID) -> Status[WebhookDelivery]:
    """Queue a ``ping`` event for this webhook alone; follow it in its delivery log.
    409 for a disabled webhook, 503 when the queue's Redis does not answer."""
    try:
        delivery = webhook_ping(hook=_get_hook(code), user=api_user(request))
    except WebhookRefused as exc:
        raise refused(409, exc) from None
    except QueueUnavailable as exc:
        raise refused(503, exc) from None
    return Status(202, _get_delivery(delivery.code))


@router.post(
    "/deliveries/{code}/redeliver",
    response={202: DeliveryOut, 409: ErrorOut, 503: ErrorOut},
    summary="Send a failed delivery again",
)
def delivery_redeliver_action(request: HttpRequest, code: UUID) -> Status[WebhookDelivery]:
    """Queue a failed (or given up) delivery again now, with a fresh round of retries;
    its payload and id stay the same. 409 for one delivered or on its way, or to a
    disabled webhook; 503 when the queue's Redis does not answer."""
    delivery = _get_delivery(code)
    try:
        delivery_redeliver(delivery=delivery)
    except WebhookRefused as exc:
        raise refused(409, exc) from None
    except QueueUnavailable as exc:
        raise refused(503, exc) from None
    return Status(202, _get_delivery(code))
