"""The objective: which reported metric to optimize, in which direction, and how to rank trials.

NaN (a diverged trial, or a non-finite value off the wire) always ranks worst, so one broken
trial can never become "the best".
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass


class ObjectiveMode(enum.StrEnum):
    MIN = "min"  # rank by the last reported value, smaller is better
    MAX = "max"
    MIN_GLOBAL = "min_global"  # rank by the best value ever reported
    MAX_GLOBAL = "max_global"


@dataclass(frozen=True, slots=True)
class Objective:
    metric: str
    mode: ObjectiveMode = ObjectiveMode.MAX
    resource: str = "epoch"

    @property
    def maximize(self) -> bool:
        return self.mode in (ObjectiveMode.MAX, ObjectiveMode.MAX_GLOBAL)

    @property
    def is_global(self) -> bool:
        return self.mode in (ObjectiveMode.MIN_GLOBAL, ObjectiveMode.MAX_GLOBAL)

    def worst(self) -> float:
        """The worst possible finite-direction value (-inf when maximizing, +inf when not)."""
        return -math.inf if self.maximize else math.inf

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.maximize else a < b

    def summary(self, values: Sequence[float]) -> float:
        """The value a trial ranks by: its last report, or its best one for ``*_global``."""
        if not values:
            return math.nan
        if not self.is_global:
            return float(values[-1])
        best = math.nan
        for v in values:
            if self.better(float(v), best):
                best = float(v)
        return best

    def sort_key(self, value: float) -> float:
        """Smaller is better; NaN sorts last (after even the worst finite value)."""
        if math.isnan(value):
            return math.inf
        return -value if self.maximize else value

    def to_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "mode": self.mode.value, "resource": self.resource}
