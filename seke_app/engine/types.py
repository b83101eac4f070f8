"""The engine's shared value types: an answer, a sample, a request, a backend.

Every backend (the offline annotator, an OpenAI-compatible VLLM, a scripted
backend in tests) turns an ``AnnotationRequest`` into ``Sample`` objects; SV-UAMC
only ever sees those, so it treats every backend the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

from seke_app.engine.vocab import Vocabulary

SampleKind = Literal["sample", "verification"]
Intensity = Literal["A", "B", "C", "D", "E"]


@dataclass(frozen=True)
class Answer:
    """One complete structured answer: the three grains, plus optional evidence.

    ``aus`` maps every AU of the vocabulary to its occurrence (True/False);
    ``au_intensity`` holds FACS intensities A-E for the AUs the model graded.
    """

    expression: str
    valence: float
    arousal: float
    aus: dict[int, bool]
    au_intensity: dict[int, Intensity] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)

    def active_aus(self) -> list[int]:
        return sorted(au for au, on in self.aus.items() if on)

    def to_json(self) -> dict[str, object]:
        return {
            "expression": self.expression,
            "valence": self.valence,
            "arousal": self.arousal,
            "aus": {str(au): on for au, on in sorted(self.aus.items())},
            "au_intensity": {str(au): v for au, v in sorted(self.au_intensity.items())},
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True)
class KnownLabels:
    """Human labels a source dataset already has for one image; any grain may be missing."""

    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None

    def is_empty(self) -> bool:
        return (
            self.expression is None
            and self.valence is None
            and self.arousal is None
            and self.aus is None
        )


@dataclass(frozen=True)
class Usage:
    """What one or more calls cost."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class Sample:
    """One Monte Carlo draw (or the verification reply) as it came back.

    Exactly one of ``answer`` and ``error`` is set: an invalid or refused reply is
    kept with its reason and counts as an invalid sample.
    """

    kind: SampleKind
    raw: str
    answer: Answer | None = None
    error: str | None = None
    # Only set on verification replies: per grain, "confirm" or "revise".
    verdict: dict[str, str] | None = None
    usage: Usage = field(default_factory=Usage)
    # The backend's own probability of each expression for this sample, when it has
    # one (the offline CNN's softmax on the sample's view); SV-UAMC then counts the
    # sample's vote as these probabilities instead of one whole vote. On a
    # verification reply, the verifier's probabilities: SV-UAMC's verification
    # component of the expression is then its probability of the final expression.
    expression_probs: dict[str, float] | None = None

    @property
    def valid(self) -> bool:
        return self.answer is not None


@dataclass(frozen=True)
class AnnotationRequest:
    """What a backend needs to annotate one image."""

    image_bytes: bytes
    vocabulary: Vocabulary
    known: KnownLabels = field(default_factory=KnownLabels)
    knowledge_text: str = ""
    exemplars: tuple[dict[str, object], ...] = ()
    image_id: str = ""


@dataclass(frozen=True)
class VerificationRequest:
    """The self-verification call: the aggregate and the disagreement, shown back."""

    request: AnnotationRequest
    aggregate: Answer
    disagreement: str


class Backend(Protocol):
    """Anything that can draw samples and verify an aggregate."""

    name: str
    model: str

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        """Draw ``k`` independent structured answers for one image."""
        ...

    def verify(self, verification: VerificationRequest) -> Sample:
        """Ask the model to confirm or revise each grain of the aggregate."""
        ...


class ClosableBackend(Backend, Protocol):
    """A backend that may hold connections: whoever builds it closes it when done,
    with ``close()`` or as a context manager. Closing twice is harmless."""

    def close(self) -> None:
        """Release the backend's connections; it must not be used afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...
