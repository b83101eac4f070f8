"""Pages for webhooks (admins only): the list, a new one, a webhook with its delivery
log, one delivery with every attempt, and the buttons (test, disable, enable,
rotate the secret, delete, send again)."""

from __future__ import annotations

import json
from uuid import UUID

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from seke_app.models.webhooks import Webhook, WebhookDelivery
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required, request_user
from seke_app.webhooks.forms import WebhookForm
from seke_app.webhooks.services import (
    WebhookRefused,
    delivery_redeliver,
    max_attempts,
    webhook_delete,
    webhook_ping,
    webhook_rotate_secret,
    webhook_set_active,
)

DELIVERIES_PER_PAGE = 25
Status = WebhookDelivery.Status


def _get_hook(code: UUID) -> Webhook:
    return get_object_or_404(Webhook.objects.select_related("created_by"), code=code)


def _get_delivery(code: UUID) -> WebhookDelivery:
    return get_object_or_404(WebhookDelivery.objects.select_related("hook", "event"), code=code)


@admin_required
def webhook_list(request: HttpRequest) -> HttpResponse:
    failing = Q(deliveries__status__in=[Status.FAILED, Status.GAVE_UP])
    hooks = Webhook.objects.annotate(
        n_deliveries=Count("deliveries"), n_failing=Count("deliveries", filter=failing)
    )
    return render(request, "webhooks/webhook_list.html", {"hooks": hooks})


@admin_required
def webhook_new(request: HttpRequest) -> HttpResponse:
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            hook = form.create(user=request_user(request))
        except WebhookRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Webhook registered. Its secret is shown below.")
            return redirect("webhook_detail", code=hook.code)
    return render(request, "webhooks/webhook_new.html", {"form": form})


@admin_required
def webhook_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    hook = _get_hook(code)
    deliveries = hook.deliveries.select_related("event").prefetch_related("log")
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "hook": hook,
        "hook_events": list(zip(hook.events, hook.event_labels(), strict=True)),
        "page": page,
        "max_attempts": max_attempts(),
    }
    return render(request, "webhooks/webhook_detail.html", context)


def _act(request: HttpRequest, hook: Webhook, action: str) -> None:
    try:
        if action == "ping":
            webhook_ping(hook=hook, user=request_user(request))
            messages.success(request, "Test event queued: its delivery is at the top of the log.")
        elif action in ("enable", "disable"):
            webhook_set_active(hook=hook, active=action == "enable")
            messages.success(request, f"Webhook {action}d.")
        else:
            webhook_rotate_secret(hook=hook)
            messages.success(request, "New secret made: deliveries from now on are signed with it.")
    except (WebhookRefused, QueueUnavailable) as exc:
        messages.error(request, str(exc))


def _acted(request: HttpRequest, code: UUID, action: str) -> HttpResponse:
    hook = _get_hook(code)
    _act(request, hook, action)
    return redirect("webhook_detail", code=hook.code)


@require_POST
@admin_required
def webhook_ping_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _acted(request, code, "ping")


@require_POST
@admin_required
def webhook_enable_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _acted(request, code, "enable")


@require_POST
@admin_required
def webhook_disable_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _acted(request, code, "disable")


@require_POST
@admin_required
def webhook_rotate_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _acted(request, code, "rotate")


@require_POST
@admin_required
def webhook_delete_view(request: HttpRequest, code: UUID) -> HttpResponse:
    hook = _get_hook(code)
    webhook_delete(hook=hook)
    messages.success(request, f"Webhook for {hook.url} deleted, with its delivery log.")
    return redirect("webhook_list")


@admin_required
def delivery_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    delivery = _get_delivery(code)
    context = {
        "delivery": delivery,
        "hook": delivery.hook,
        "attempts": delivery.log.all(),
        "payload_json": json.dumps(delivery.payload(), indent=2, ensure_ascii=False),
        "max_attempts": max_attempts(),
    }
    return render(request, "webhooks/delivery_detail.html", context)


@require_POST
@admin_required
def delivery_redeliver_view(request: HttpRequest, code: UUID) -> HttpResponse:
    delivery = _get_delivery(code)
    try:
        delivery_redeliver(delivery=delivery)
    except (WebhookRefused, QueueUnavailable) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Delivery queued again, with a fresh round of retries.")
    return redirect("webhook_delivery", code=delivery.code)
