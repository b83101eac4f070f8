"""Number formats of the dashboard pages: shares, rates, kappa (NaN shown as undefined)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from django import template

register = template.Library()

SOURCE_NAMES = {
    "gold": "gold questions",
    "audit": "blind audits",
    "review": "reviews of flagged annotations",
    "dataset": "dataset labels",
}


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    """0.123 -> "12.3%"; None or NaN -> "—"."""
    if _missing(value):
        return "—"
    assert value is not None
    return f"{value * 100:.{int(digits)}f}%"


@register.filter
def decimal(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` places; None -> "—", NaN -> "undefined" (e.g. kappa)."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "undefined"
    return f"{value:.{int(digits)}f}"


@register.filter
def sources(counts: Mapping[str, int]) -> str:
    """{"review": 12, "gold+review": 2} -> "12 reviews, 2 gold questions + reviews"."""
    parts = []
    for key, n in sorted(counts.items(), key=lambda item: -item[1]):
        names = " + ".join(SOURCE_NAMES.get(k, k) for k in key.split("+"))
        parts.append(f"{n} {names}")
    return ", ".join(parts) or "none"
