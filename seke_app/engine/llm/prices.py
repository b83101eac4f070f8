"""What calls to a model cost: a dated price table, overrides, and image tokens.

Billed cost always comes from the token usage the endpoint reports for each call,
priced with this table; ``image_tokens`` only estimates a call before it is made.
A model that is not in the table (a self-hosted model, an Azure deployment name,
a newer OpenAI model) has an *unknown* cost, never a cost of 0: its calls are
recorded with their tokens, and the pages and the API say "unknown".

The table holds OpenAI's published list prices in USD per 1M tokens as of
``PRICES_AS_OF``; prices change, so a deployment corrects or extends them with
overrides (``SEKE_PRICES`` in the settings, see ``parse_prices``). Batch prices
are those of OpenAI's Batch API, half the list price for these models; SEKE
itself calls the synchronous API, so they are there for estimates and overrides.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# When the list prices below were taken from OpenAI's pricing page.
PRICES_AS_OF = "2025-06-01"


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens: input and output, and both under the Batch API."""

    input: float
    output: float
    batch_input: float
    batch_output: float

    def __post_init__(self) -> None:
        for name in ("input", "output", "batch_input", "batch_output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of USD per 1M tokens, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite, non-negative price, not {value!r}")

    @classmethod
    def listed(cls, input: float, output: float) -> ModelPrice:
        """A list price whose Batch API price is half of it, as OpenAI's are."""
        return cls(input, output, input / 2, output / 2)

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        """USD for the given tokens."""
        rate_in, rate_out = (
            (self.batch_input, self.batch_output) if batch else (self.input, self.output)
        )
        return (prompt_tokens * rate_in + completion_tokens * rate_out) / 1_000_000


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice.listed(2.50, 10.00),
    "gpt-4o-mini": ModelPrice.listed(0.15, 0.60),
    "gpt-4.1": ModelPrice.listed(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice.listed(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice.listed(0.10, 0.40),
    "o4-mini": ModelPrice.listed(1.10, 4.40),
}

# A dated snapshot ("gpt-4o-2024-08-06") is billed like its family; any other
# suffix ("gpt-4o-audio-preview") is a different product and stays unpriced.
_SNAPSHOT_SUFFIX = re.compile(r"^-\d{4}-\d{2}-\d{2}$")


def model_price(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price of ``model`` (overrides first), or None when it is unknown."""
    table = {**DEFAULT_PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name) and _SNAPSHOT_SUFFIX.match(model[len(name) :]):
            return table[name]
    return None


_PRICE_KEYS = ("input", "output", "batch_input", "batch_output")


def parse_prices(text: str) -> dict[str, ModelPrice]:
    """Price overrides from JSON: ``{"model": {"input": 2.5, "output": 10}, ...}``.

    ``input`` and ``output`` are required; ``batch_input`` and ``batch_output``
    default to half of them. Raises ``ValueError`` naming the model and the field.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object mapping model names to prices")
    return {str(model): _price_of(str(model), entry) for model, entry in data.items()}


def _price_of(model: str, entry: Any) -> ModelPrice:
    if not model.strip():
        raise ValueError("has an empty model name")
    if not isinstance(entry, dict):
        raise ValueError(f"{model}: the price must be an object with input and output")
    unknown = sorted(set(entry) - set(_PRICE_KEYS))
    if unknown:
        raise ValueError(f"{model}: unknown field(s) {', '.join(unknown)}")
    missing = [key for key in ("input", "output") if key not in entry]
    if missing:
        raise ValueError(f"{model}: {' and '.join(missing)} missing")
    values = {
        "batch_input": _half(entry["input"]),
        "batch_output": _half(entry["output"]),
        **entry,
    }
    try:
        return ModelPrice(**values)
    except ValueError as exc:
        raise ValueError(f"{model}: {exc}") from None


def _half(value: Any) -> Any:
    return value / 2 if isinstance(value, int | float) and not isinstance(value, bool) else value


# Image input tokens by OpenAI's tile rule: (base, per 512-px tile) for the models
# it documents that rule for. Other models count images differently (or are not
# OpenAI's), so no estimate is made for them.
_TILE_TOKENS: Mapping[str, tuple[int, int]] = {
    "gpt-4o": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4o-mini": (2833, 5667),
}


def image_tokens(width: int, height: int, *, detail: str, model: str) -> int | None:
    """The input tokens an image of ``width`` x ``height`` px costs ``model``, by
    OpenAI's documented rule; None for a model the rule is not known for.

    Low detail costs the base alone. High (and auto, counted as high, the upper
    bound) fits the image within 2048 x 2048, then scales it down so its shorter
    side is at most 768 px, and adds the per-tile tokens for every 512-px tile
    that covers it.
    """
    if width < 1 or height < 1:
        raise ValueError("an image has at least one pixel each way")
    if detail not in ("low", "high", "auto"):
        raise ValueError(f"detail must be low, high or auto, not {detail!r}")
    rule = _tile_rule(model)
    if rule is None:
        return None
    base, per_tile = rule
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


def _tile_rule(model: str) -> tuple[int, int] | None:
    if model in _TILE_TOKENS:
        return _TILE_TOKENS[model]
    for name in sorted(_TILE_TOKENS, key=len, reverse=True):
        if model.startswith(name) and _SNAPSHOT_SUFFIX.match(model[len(name) :]):
            return _TILE_TOKENS[name]
    return None
