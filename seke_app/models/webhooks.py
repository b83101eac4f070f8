"""Webhooks: URLs that admins register to be told when something happens in SEKE.

A ``Webhook`` is a URL, the events it wants and the secret every delivery to it is
signed with. Each event SEKE announces is one ``WebhookEvent`` row, written in the
transaction of the change it reports, so that a change that rolls back announces
nothing; its ``key`` is unique, so an event that two processes report at once is
recorded once. Every active hook that wants the event gets a ``WebhookDelivery``:
the row is the delivery's state (waiting, delivered, given up; when the next
attempt is due; who holds it now), so a worker that dies while sending loses
nothing. Each try is a ``WebhookAttempt``, kept with what came back, so the
delivery log shows every attempt's status code or error.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models

URL_MAX_LENGTH = 2000
# How much of a receiver's answer is kept with an attempt.
RESPONSE_KEPT_BYTES = 2048


class EventName(models.TextChoices):
    """What a webhook can be told about; ``PING`` is the test event sent from its page."""

    RUN_FINISHED = "run.finished", "A run stopped: completed, failed, cancelled or at its cost cap"
    EXPORT_READY = "export.ready", "An export's file is ready to download"
    EXPORT_FAILED = "export.failed", "An export failed"
    CERTIFICATE_ISSUED = "certificate.issued", "A run's auto-accept threshold was certified"
    REVIEW_QUEUE_EMPTY = "review.queue_empty", "A finished run's review queue became empty"
    PING = "ping", "A test event sent from the webhook's page"


# The events a webhook may ask for (a ping goes to the one hook it is sent from).
SUBSCRIBABLE = [(value, label) for value, label in EventName.choices if value != EventName.PING]


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks, or None when it can.

    Only http:// and https:// URLs with a host name: SEKE makes a plain POST, and a
    ``file:``, ``ftp:`` or ``gopher:`` address would ask the worker's HTTP client
    for something else altogether. Private addresses are allowed on purpose: only
    admins register webhooks, and receivers on an internal network are common.
    """
    if not url:
        return "Give the URL that should receive the events."
    if len(url) > URL_MAX_LENGTH:
        return f"The URL is longer than {URL_MAX_LENGTH} characters."
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "The URL contains spaces or control characters; encode them (%20)."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "The URL's port is not a number from 0 to 65535."
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        named = f"a {scheme}: URL" if scheme else "a URL without http:// or https://"
        return f"Only http:// and https:// URLs can receive webhooks, not {named}."
    if not parts.hostname:
        return "The URL has no host name (e.g. https://example.org/seke-events)."
    if port == 0:
        return "The URL's port is 0, which no server listens on."
    return None


class Webhook(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    url = models.CharField("URL", max_length=URL_MAX_LENGTH)
    description = models.CharField(max_length=200, blank=True)
    # Names of the events it wants (``EventName`` values other than ping).
    events = models.JSONField(default=list)
    # Made by SEKE (``secrets.token_urlsafe``), never typed: every delivery is signed
    # with it, and the receiver checks the signature with the same value.
    secret = models.CharField(max_length=100)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event: str) -> bool:
        return event in self.events

    def event_labels(self) -> list[str]:
        labels = dict(EventName.choices)
        return [labels.get(name, name) for name in self.events]


class WebhookEvent(models.Model):
    """One announcement: what happened (``name``), about what (``data``), when.

    ``key`` names the change it reports (``run.finished:<run>:<finish time>``, ...);
    being unique, it makes every change announced at most once, whichever process
    reports it first.
    """

    name = models.CharField(max_length=40, choices=EventName.choices)
    key = models.CharField(max_length=200, unique=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class WebhookDelivery(models.Model):
    """One event for one webhook, until it is delivered or SEKE gives up.

    ``attempts`` counts the attempts since the delivery was queued (or queued again
    by an admin's redelivery); the log keeps every attempt ever made. A worker
    claims the row before it sends (``claimed_until``); one that dies mid-send
    leaves the claim to run out, and the delivery is tried again.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be sent"
        FAILED = "failed", "Failed, will retry"
        DELIVERED = "delivered", "Delivered"
        GAVE_UP = "gave_up", "Gave up"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    hook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # When the next attempt is due; None once delivered or given up.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set while a worker sends it: another worker leaves it alone until then.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    WAITING = (Status.PENDING, Status.FAILED)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["hook", "-id"], name="delivery_hook_log"),
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.code} ({self.status})"

    def is_waiting(self) -> bool:
        return self.status in self.WAITING

    def can_redeliver(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.GAVE_UP)

    def payload(self) -> dict[str, Any]:
        """The JSON object POSTed: the same bytes on every attempt, whatever the time."""
        return {
            "id": str(self.code),
            "event": self.event.name,
            "created_at": self.event.created_at.isoformat(),
            "data": self.event.data,
        }


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, how long, and the status code or the error.

    An attempt without ``finished_at`` was cut short: its worker stopped before the
    answer was recorded (``error`` says so once the delivery is tried again).
    """

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The start of the receiver's answer (RESPONSE_KEPT_BYTES at most).
    response_body = models.TextField(blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="attempt_number_once"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def explanation(self) -> str:
        """The error where the status code alone does not tell it: no answer, or a
        redirect that was not followed."""
        if self.status_code is None or 300 <= self.status_code < 400:
            return self.error
        return ""
