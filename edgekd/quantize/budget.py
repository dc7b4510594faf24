"""THE accuracy budget: how many points of a score a cheaper model may lose against its reference.

One object decides "within budget" everywhere -- selecting a quantized candidate, the keep-in-FP32
search (INT8 candidates, language models, the Ascend FP16 preflight) and the mobile artifact choice --
so every place agrees on the formula, on the direction of the metric and on the float slack that
makes a loss of exactly the budget count as within it (0.9 - 0.895 is 0.0050000000000000044 in
binary floating point, a hair over 0.5 points).

Scores are fractions (0.9 = 90%); a point is a hundredth of one (0.9 -> 0.895 is 0.5 points).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from edgekd.errors import ConfigError

SLACK = 1e-9  # in score units: far below one sample in a billion, far above float rounding of a difference

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Budget:
    """`points` of `metric` a model may lose against its reference; `direction` says which way is better."""

    points: float
    metric: str = "top-1 accuracy"
    direction: Direction = "higher"
    slack: float = SLACK

    def __post_init__(self) -> None:
        if not (isinstance(self.points, (int, float)) and math.isfinite(self.points) and self.points >= 0):
            raise ConfigError(f"accuracy budget must be >= 0 points, got {self.points}", hint="e.g. 0.5")
        if self.direction not in ("higher", "lower"):
            raise ConfigError(f"budget direction must be 'higher' or 'lower' (is better), got {self.direction!r}",
                              hint="accuracy and agreement: higher; error rates: lower")

    @classmethod
    def from_recipe(cls, quantize: Any, metric: str = "top-1 accuracy", direction: Direction = "higher") -> "Budget":
        """The recipe's `quantize.accuracy_budget` (points), for the task's metric."""
        return cls(float(quantize.accuracy_budget), metric, direction)

    def loss(self, reference: float, score: float) -> float:
        """How much worse `score` is than `reference`, in score units (negative: better)."""
        return reference - score if self.direction == "higher" else score - reference

    def drop_points(self, reference: float, score: float) -> float:
        """The loss in points (what reports show next to the budget)."""
        return self.loss(reference, score) * 100.0

    def within(self, reference: float, score: float) -> bool:
        """`score` loses at most `points` against `reference`; a loss of exactly the budget is within it."""
        return self.loss(float(reference), float(score)) <= self.points / 100.0 + self.slack

    def best_first(self, score: float) -> float:
        """A sort key that puts the best score first in this budget's direction."""
        return -score if self.direction == "higher" else score

    def describe(self) -> str:
        return f"{self.points:g} points of {self.metric}"
