"""A chunk's backend as one image sees it: each model call renewed and recorded.

SV-UAMC calls ``sample`` and ``verify`` on a backend several times per image.
``ImageCalls`` wraps the chunk's backend for one image so that, around each call:

* before it, the worker renews its lease on the image; a worker that no longer
  holds the image (its lease ran out and another worker took it over) stops
  here with ``LeaseLost`` instead of paying for calls whose result nobody keeps;
* after it, the call's usage is recorded at once, also when the call failed
  after part of it was billed (``VLLMError.usage``). Usage is therefore never
  lost with an image that fails, is taken over or whose worker is killed later;
  only a call still in flight when a process dies goes unrecorded.

It knows nothing of Django: the renewal and the recording are callables that the
runs service passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from seke_app.engine.llm.client import VLLMError
from seke_app.engine.types import (
    AnnotationRequest,
    Backend,
    Sample,
    Usage,
    VerificationRequest,
    observed_grains,
)


class LeaseLost(Exception):
    """Another worker holds the image now; this worker stops working on it."""


def usage_of(samples: Iterable[Sample]) -> Usage:
    total = Usage()
    for sample in samples:
        total = total + sample.usage
    return total


class ImageCalls:
    """A ``Backend`` that renews a lease before each call and records each call's usage."""

    def __init__(
        self,
        backend: Backend,
        *,
        renew: Callable[[], bool],
        record: Callable[[Usage], None],
    ) -> None:
        self._backend = backend
        self._renew = renew
        self._record = record
        self.name = backend.name
        self.model = backend.model
        self.observed_grains = observed_grains(backend)

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self._before_call()
        try:
            samples = self._backend.sample(request, k, temperature)
        except VLLMError as exc:
            self._record(exc.usage)
            raise
        self._record(usage_of(samples))
        return samples

    def verify(self, verification: VerificationRequest) -> Sample:
        self._before_call()
        try:
            sample = self._backend.verify(verification)
        except VLLMError as exc:
            self._record(exc.usage)
            raise
        self._record(sample.usage)
        return sample

    def _before_call(self) -> None:
        if not self._renew():
            raise LeaseLost("another worker took the image over")
