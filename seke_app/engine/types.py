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
# Where a sample's ``expression_probs`` came from (``Sample.probs_source``).
ProbsSource = Literal["logprobs", "views"]
Intensity = Literal["A", "B", "C", "D", "E"]
# The three grains of an answer, in the order SEKE lists them.
GRAINS: tuple[str, ...] = ("expression", "va", "aus")
ALL_GRAINS: frozenset[str] = frozenset(GRAINS)


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
    """Human labels a source dataset already has for one image; any grain may be missing.

    A grain the labels give (``grains``) is an input, not a question: SV-UAMC's
    answer carries it as given. Valence and arousal form one grain, given only when
    both are known; a lone valence or arousal gives no grain and is not stated in
    a prompt (the import refuses one anyway). The AU grain is given when the labels
    code at least one AU of the vocabulary; AUs they leave uncoded keep the
    model's answer.
    """

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

    def va(self) -> tuple[float, float] | None:
        """Valence and arousal when both are known, else None."""
        if self.valence is None or self.arousal is None:
            return None
        return self.valence, self.arousal

    def coded_aus(self, vocabulary: Vocabulary) -> dict[int, bool]:
        """The AUs of the vocabulary that the labels code, present or absent."""
        return {au: bool(on) for au, on in (self.aus or {}).items() if au in vocabulary.aus}

    def grains(self, vocabulary: Vocabulary) -> tuple[str, ...]:
        """The grains these labels give for a task of ``vocabulary``, in ``GRAINS`` order."""
        given = {
            "expression": self.expression is not None and self.expression in vocabulary.expressions,
            "va": self.va() is not None,
            "aus": bool(self.coded_aus(vocabulary)),
        }
        return tuple(grain for grain in GRAINS if given[grain])


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
    # Where ``expression_probs`` came from, None when there are none: "logprobs",
    # a VLLM's token log-probabilities at the expression's value, written after the
    # sample's own evidence and AUs and so conditional on its sampled reasoning;
    # "views", the offline annotator's probabilities for one view of the image (an
    # augmented view, or the un-augmented image for its verification).
    # SV-UAMC's stopping rule reads the spread between the samples' probabilities
    # only for "logprobs" (see "Stopping rule" in ``uamc``).
    probs_source: ProbsSource | None = None
    # The backend's own standard deviation of this sample's valence and arousal,
    # when it knows one: the offline annotator completing VA from a known
    # expression reads the class's VA with an error it measured on held-out faces
    # (``likelihoods.HeadModel.residual_sd``), which its samples' spread cannot show
    # (every sample starts from the same class). SV-UAMC adds it to the spread.
    va_sd: tuple[float, float] | None = None

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
    """Anything that can draw samples and verify an aggregate.

    ``observed_grains`` names the grains the backend reads from the image; any
    other grain of its answers is inferred from those (the offline annotator's AUs
    follow its expression). SV-UAMC lets an inferred grain carry the confidence of
    what it was inferred from and never flags it on its own (``observed_grains()``
    gives every grain for a backend that does not say).
    """

    name: str
    model: str
    observed_grains: frozenset[str]

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        """Draw ``k`` independent structured answers for one image."""
        ...

    def verify(self, verification: VerificationRequest) -> Sample:
        """Ask the model to confirm or revise each grain of the aggregate."""
        ...


def observed_grains(backend: object) -> frozenset[str]:
    """The grains ``backend`` observes: its ``observed_grains``, or all three."""
    observed = getattr(backend, "observed_grains", ALL_GRAINS)
    return frozenset(observed) & ALL_GRAINS


class ClosableBackend(Backend, Protocol):
    """A backend that may hold connections: whoever builds it closes it when done,
    with ``close()`` or as a context manager. Closing twice is harmless."""

    def close(self) -> None:
        """Release the backend's connections; it must not be used afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...
