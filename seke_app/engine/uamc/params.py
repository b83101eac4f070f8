"""SV-UAMC's run parameters, strategies, grains and fixed constants."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from seke_app.engine.types import GRAINS as GRAINS

Strategy = Literal["uamc", "fixed", "single"]
STRATEGIES: tuple[Strategy, ...] = ("uamc", "fixed", "single")
GRAIN_NAMES = {"expression": "expression", "va": "valence/arousal", "aus": "AU"}
# The components of a grain's confidence (see the package docstring).
COMPONENTS: tuple[str, ...] = ("agreement", "verification", "knowledge")

# Verification component of a grain the verifier revised.
REVISED_FACTOR = 0.5
# Agreement of VA and AUs when only one vote exists.
SINGLE_VOTE_AGREEMENT = 0.5
# A VA standard deviation of this size gives zero VA agreement.
VA_SPREAD_SCALE = 0.5
# Where a grain's value comes from (``GrainRoles.provenance``).
Provenance = Literal["dataset", "model"]


@dataclass(frozen=True)
class GrainRoles:
    """What SV-UAMC does with each grain of one image (see "Known and inferred
    grains" in the package docstring).

    ``given``: the grains the image's known labels give; the answer carries them.
    ``inferred_from``: each grain the backend does not observe, and the grain it
    follows instead (the expression, or, for an unobserved expression, the first
    grain that is observed or given). Every other grain is *predicted*: its
    samples' uncertainty keeps the sampler drawing and its confidence may flag.
    """

    given: tuple[str, ...] = ()
    inferred_from: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, given: Sequence[str], observed: frozenset[str]) -> GrainRoles:
        sources = [g for g in GRAINS if g in observed or g in given]
        inferred = {}
        for grain in GRAINS:
            if grain in given or grain in observed or not sources:
                continue
            inferred[grain] = "expression" if "expression" in sources else sources[0]
        return cls(tuple(g for g in GRAINS if g in given), inferred)

    @property
    def predicted(self) -> tuple[str, ...]:
        return tuple(g for g in GRAINS if g not in self.given and g not in self.inferred_from)

    @property
    def provenance(self) -> dict[str, Provenance]:
        """``dataset`` for a given grain, ``model`` for the others."""
        return {g: "dataset" if g in self.given else "model" for g in GRAINS}


@dataclass(frozen=True)
class ConfidenceWeights:
    """The weights of a grain confidence's components in its weighted geometric mean.

    Only their ratios matter: when a grain has no verification component, the
    agreement and knowledge weights are renormalised.
    """

    agreement: float
    verification: float
    knowledge: float

    def __getitem__(self, component: str) -> float:
        if component not in COMPONENTS:
            raise KeyError(component)
        return float(getattr(self, component))

    def problems(self, name: str) -> list[str]:
        """What makes these weights unusable, in words naming the parameter ``name``."""
        values = [self[component] for component in COMPONENTS]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            return [f"{name} must all be finite and not negative"]
        if self.agreement + self.knowledge <= 0:
            return [f"{name}: agreement and knowledge must not both be 0"]
        return []


# The defaults of ``UAMCParams.weights`` (every grain, and the expression after a
# bare verdict) and ``UAMCParams.graded_weights`` (the expression when the
# verifier gave its probabilities); the package docstring explains both.
WEIGHTS = ConfidenceWeights(agreement=0.7, verification=0.15, knowledge=0.15)
GRADED_WEIGHTS = ConfidenceWeights(agreement=0.45, verification=0.45, knowledge=0.1)


@dataclass(frozen=True)
class UAMCParams:
    """One run's sampling strategy, thresholds, confidence weights and review threshold."""

    strategy: Strategy = "uamc"
    k0: int = 3
    kmax: int = 10
    step: int = 2
    temperature: float = 1.0
    entropy_threshold: float = 0.35
    plurality_threshold: float = 0.7
    va_sem_threshold: float = 0.15
    au_band: float = 0.15
    au_max_unsure: int = 1
    review_threshold: float = 0.7
    verify: bool = True
    futility: bool = True
    weights: ConfidenceWeights = WEIGHTS
    graded_weights: ConfidenceWeights = GRADED_WEIGHTS

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid SV-UAMC parameters: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}"),
            (self.k0 >= 1, "k0 (initial samples) must be at least 1"),
            (self.kmax >= self.k0, "kmax (most samples) must be at least k0"),
            (self.step >= 1, "step (samples added per round) must be at least 1"),
            (0 < self.temperature <= 2, "temperature must be above 0 and at most 2"),
            (0 <= self.entropy_threshold <= 1, "entropy_threshold must lie in [0, 1]"),
            (0 <= self.plurality_threshold <= 1, "plurality_threshold must lie in [0, 1]"),
            (self.va_sem_threshold > 0, "va_sem_threshold must be positive"),
            (0 <= self.au_band <= 0.5, "au_band must lie in [0, 0.5]"),
            (self.au_max_unsure >= 0, "au_max_unsure must not be negative"),
            (0 <= self.review_threshold <= 1, "review_threshold must lie in [0, 1]"),
        ]
        problems = [message for ok, message in checks if not ok]
        for name in ("weights", "graded_weights"):
            weights = getattr(self, name)
            if isinstance(weights, ConfidenceWeights):
                problems += weights.problems(name)
            else:
                problems.append(f"{name} must be ConfidenceWeights, not {weights!r}")
        return problems

    @property
    def verifies(self) -> bool:
        """Whether a verification call is made: never for single-shot."""
        return self.verify and self.strategy != "single"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UAMCParams:
        """The parameters ``to_json`` stored; a missing parameter takes its default,
        so that parameters stored before it existed still load."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SV-UAMC parameters: {', '.join(unknown)}")
        return cls.from_options(data)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> UAMCParams:
        """Parameters from options named like the fields: a command's options, a
        form's cleaned data, stored JSON.

        Keys that name no parameter are ignored, so that the options can be passed
        whole; a missing or None value takes the default. Numbers and booleans may
        be given as text. Every bad value is reported in one ``ValueError``.
        """
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in fields(cls):
            value = options.get(spec.name)
            if value is None:
                continue
            convert = _CONVERTERS[str(spec.type)]
            try:
                values[spec.name] = convert(spec.name, value)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("invalid SV-UAMC parameters: " + "; ".join(problems))
        return cls(**values)


def _unchanged(name: str, value: Any) -> Any:
    return value


def _as_int(name: str, value: Any) -> int:
    number = _number(value)
    if number is None or not number.is_integer():
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    number = _number(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return number


def _number(value: Any) -> float | None:
    """A number, or text holding one; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value.strip())
    return None


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be true or false, not {value!r}")


def _as_weights(name: str, value: Any) -> ConfidenceWeights:
    """Weights from ConfidenceWeights, a mapping of the three components, or three numbers."""
    if isinstance(value, ConfidenceWeights):
        return value
    if isinstance(value, Mapping):
        if set(value) != set(COMPONENTS):
            given = ", ".join(map(str, value))
            raise ValueError(f"{name} must give exactly {', '.join(COMPONENTS)}, not {given}")
        parts = [value[component] for component in COMPONENTS]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        parts = list(value)
    else:
        raise ValueError(
            f"{name} must map {', '.join(COMPONENTS)} to numbers or be three numbers, not {value!r}"
        )
    numbers = [_as_float(f"{name}.{c}", v) for c, v in zip(COMPONENTS, parts, strict=True)]
    return ConfidenceWeights(*numbers)


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "Strategy": _unchanged,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "ConfidenceWeights": _as_weights,
}
