"""Background jobs of webhooks (on the "default" queue): codes in, a service does the work."""

from __future__ import annotations

from seke_app.webhooks.services import deliveries_sweep, delivery_send


def deliver(delivery_code: str) -> None:
    """One attempt of the delivery, if it is due; an attempt that fails schedules the next."""
    delivery_send(delivery_code=delivery_code)


def sweep() -> None:
    """Queue every delivery that is due (run when a worker on "default" starts)."""
    deliveries_sweep()
