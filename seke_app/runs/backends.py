"""Building the backend a run asked for, from settings; never a silent substitute.

A run names its backend explicitly. If that backend cannot work (no API key, no
weights file), the run is refused or fails with the reason: SEKE never falls back
from a VLLM to the offline annotator on its own. An OpenAI-compatible client starts
with what the latest check of the model on the endpoint found
(``seke_app.runs.probes``), and a model found not to take images is refused.

A backend is built for one piece of work (a run's chunk job, an evaluation, a gold
check) and closed by whoever built it when that work ends, which closes the VLLM
client's connection pool. Nothing here caches a client: a chunk's threads share
its backend, and the next chunk builds its own. Only the offline CNN's weights are
kept per process, and they hold no connection.
"""

from __future__ import annotations

import functools
import threading

import django_rq
from django.conf import settings

from seke_app.engine.llm.backend import OpenAIBackend
from seke_app.engine.llm.client import ClientConfig, VLLMClient
from seke_app.engine.llm.prices import model_price
from seke_app.engine.offline.backend import DEFAULT_MODEL_NAME, OfflineBackend
from seke_app.engine.offline.model import OfflineModel
from seke_app.engine.types import ClosableBackend
from seke_app.models import GenerationRun, PromptVersion
from seke_app.runs.probes import configured_for, endpoint_url, images_refused, latest_probe
from seke_app.runs.ratelimit import (
    SMALLEST_REQUEST_TOKENS,
    Limits,
    RateLimitedBackend,
    RedisRateLimiter,
)

_load_lock = threading.Lock()


class BackendUnavailable(Exception):
    """The backend cannot be used as configured; the message says what to change."""


def openai_configured() -> bool:
    return bool(settings.OPENAI_API_KEY)


def default_model(backend: str) -> str:
    return DEFAULT_MODEL_NAME if backend == GenerationRun.Backend.OFFLINE else settings.SEKE_MODEL


def model_priced(backend: str, model_name: str) -> bool:
    """Whether calls to ``model_name`` have a known cost: the offline annotator's
    are free; a VLLM's model must be in the price table or in ``SEKE_PRICES``."""
    if backend == GenerationRun.Backend.OFFLINE:
        return True
    return model_price(model_name, settings.SEKE_PRICES) is not None


@functools.cache
def _offline_model() -> OfflineModel:
    # Loaded once per process: every chunk of every run shares the weights.
    return OfflineModel.load()


def preload_offline_model() -> None:
    """Load the offline CNN now (raises BackendUnavailable if it cannot load)."""
    try:
        with _load_lock:
            _offline_model()
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"the offline annotator cannot load: {exc}") from None


def backend_for(
    backend: str,
    model_name: str,
    prompt_version: PromptVersion,
    *,
    concurrency: int = 4,
    check_only: bool = False,
) -> ClosableBackend:
    """The backend ``backend`` names, built from settings; the caller closes it.

    ``check_only`` builds it only to see that it can work, without the rate limiter.
    """
    if backend == GenerationRun.Backend.OFFLINE:
        with _load_lock:
            try:
                model = _offline_model()
            except (OSError, ValueError) as exc:
                raise BackendUnavailable(f"the offline annotator cannot load: {exc}") from None
        return OfflineBackend(model, calibration=prompt_version.calibration)
    if backend == GenerationRun.Backend.OPENAI:
        if not openai_configured():
            raise BackendUnavailable(
                "no OPENAI_API_KEY is configured: set it (and OPENAI_BASE_URL for a"
                " compatible server) or choose the offline annotator"
            )
        limits = Limits(settings.OPENAI_RPM, settings.OPENAI_TPM)
        if 0 < limits.tokens_per_minute < SMALLEST_REQUEST_TOKENS:
            raise BackendUnavailable(
                f"SEKE_OPENAI_TPM={limits.tokens_per_minute} is below the"
                f" {SMALLEST_REQUEST_TOKENS:,} tokens one request is estimated to need,"
                " so no request could be sent: set it to the endpoint's tokens-per-minute"
                " limit, or 0 for no limit"
            )
        openai_backend = _openai_backend(model_name, concurrency)
        if check_only or not limits.active:
            return openai_backend
        limiter = RedisRateLimiter(
            django_rq.get_connection("generation"), limits, key=f"seke:limits:{model_name}"
        )
        return RateLimitedBackend(openai_backend, limiter)
    raise BackendUnavailable(f"unknown backend {backend!r}")


def _openai_backend(model_name: str, concurrency: int) -> OpenAIBackend:
    # What the latest check of this model found decides how the client starts.
    probe = latest_probe(endpoint_url(), model_name)
    refused = images_refused(probe)
    if refused is not None:
        raise BackendUnavailable(refused)
    config = ClientConfig(
        base_url=settings.OPENAI_BASE_URL,
        api_key=settings.OPENAI_API_KEY,
        model=model_name,
        timeout_s=settings.OPENAI_TIMEOUT,
        max_retries=settings.OPENAI_MAX_RETRIES,
        max_concurrency=concurrency,
        prices=settings.SEKE_PRICES,
        top_logprobs=settings.OPENAI_TOP_LOGPROBS,
    )
    config = configured_for(config, probe)
    return OpenAIBackend(VLLMClient(config), model=model_name, max_side=settings.IMAGE_MAX_SIDE)


def batch_backend_for(model_name: str) -> OpenAIBackend:
    """The OpenAI backend a batch run builds its requests with and parses its replies
    with, and whose client talks to the Batch API; the caller closes it.

    No rate limiter: a batch's lines count against the endpoint's batch queue, not
    its per-minute limits.
    """
    if not openai_configured():
        raise BackendUnavailable(
            "no OPENAI_API_KEY is configured: a batch run needs the OpenAI Batch API"
        )
    return _openai_backend(model_name, 1)
