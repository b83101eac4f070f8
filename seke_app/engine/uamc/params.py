"""SV-UAMC's run parameters, strategies, grains and fixed constants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Strategy = Literal["uamc", "fixed", "single"]
STRATEGIES: tuple[Strategy, ...] = ("uamc", "fixed", "single")
GRAINS: tuple[str, ...] = ("expression", "va", "aus")
GRAIN_NAMES = {"expression": "expression", "va": "valence/arousal", "aus": "AU"}

# Verification component of a grain the verifier revised.
REVISED_FACTOR = 0.5
# Agreement of VA and AUs when only one vote exists.
SINGLE_VOTE_AGREEMENT = 0.5
# A VA standard deviation of this size gives zero VA agreement.
VA_SPREAD_SCALE = 0.5
# A known valence or arousal further than this from the answer is a contradiction.
VA_CONTRADICTION = 0.4


@dataclass(frozen=True)
class UAMCParams:
    """One run's sampling strategy, thresholds and review threshold."""

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
        return [message for ok, message in checks if not ok]

    @property
    def verifies(self) -> bool:
        """Whether a verification call is made: never for single-shot."""
        return self.verify and self.strategy != "single"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UAMCParams:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SV-UAMC parameters: {', '.join(unknown)}")
        return cls(**data)
