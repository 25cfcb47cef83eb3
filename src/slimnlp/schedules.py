"""Schedules: plain callables ``(step, total) -> value`` that techniques query every step.

Distillation weights, pruning sparsity and QAT freeze points all ramp a number over training; one small
family keeps those ramps comparable across techniques. ``progress`` is clipped to [0, 1], and
``warmup``/``cooldown`` are fractions of ``total`` held at ``start``/``end`` (the cubic schedule with both
is Zhu & Gupta 2017's gradual pruning, as used by movement pruning).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from slimnlp.errors import ConfigError


@dataclass(frozen=True)
class Schedule(ABC):
    start: float = 0.0  # value before warmup ends
    end: float = 1.0  # value once the ramp is over
    warmup: float = 0.0  # fraction of steps held at `start`
    cooldown: float = 0.0  # fraction of final steps held at `end`

    def __post_init__(self) -> None:
        for key in ("warmup", "cooldown"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"schedule.{key}", getattr(self, key), "a fraction in [0, 1)")
        if self.warmup + self.cooldown >= 1.0:
            raise ConfigError("schedule.warmup+cooldown", self.warmup + self.cooldown, "must sum to < 1")

    def progress(self, step: int, total: int) -> float:
        if total <= 0:
            raise ValueError(f"total steps must be > 0, got {total}")
        ramp = 1.0 - self.warmup - self.cooldown
        return min(max((step / total - self.warmup) / ramp, 0.0), 1.0)

    @abstractmethod
    def shape(self, t: float) -> float:
        """Maps progress t ∈ [0, 1] to the interpolation weight in [0, 1]."""

    def __call__(self, step: int, total: int) -> float:
        return self.start + (self.end - self.start) * self.shape(self.progress(step, total))


@dataclass(frozen=True)
class Constant(Schedule):
    """Always ``end`` — e.g. one-shot pruning (the target sparsity from step 0)."""

    def shape(self, t: float) -> float:
        return 1.0


@dataclass(frozen=True)
class Linear(Schedule):
    """Straight ramp from ``start`` to ``end`` over the run."""

    def shape(self, t: float) -> float:
        return t


@dataclass(frozen=True)
class Cubic(Schedule):
    """``1 − (1 − t)³``: fast early, slow late (Zhu & Gupta 2017 gradual pruning)."""

    def shape(self, t: float) -> float:
        return 1.0 - (1.0 - t) ** 3
