"""The objective: which reported metric to optimize, in which direction, and how to rank trials.

A multi-objective study (issue 17) has ``metrics``: two or more, each with its own mode. Then
``metric`` and ``mode`` are the first one's (what single-objective code paths, the curve kept
for models and the median rule, read), and a trial's value at a level is a vector, one entry
per metric, ranked by :mod:`hpod.core.pareto`.

NaN (a diverged trial, or a non-finite value off the wire) always ranks worst, so one broken
trial can never become "the best".
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ObjectiveMode(enum.StrEnum):
    MIN = "min"  # rank by the last reported value, smaller is better
    MAX = "max"
    MIN_GLOBAL = "min_global"  # rank by the best value ever reported
    MAX_GLOBAL = "max_global"


@dataclass(frozen=True, slots=True)
class Metric:
    """One objective of a multi-objective study: a reported metric and its direction."""

    name: str
    mode: ObjectiveMode

    @property
    def single(self) -> Objective:
        """This metric as a single objective (its summary and ordering rules)."""
        return Objective(self.name, self.mode)


@dataclass(frozen=True, slots=True)
class Objective:
    metric: str
    mode: ObjectiveMode = ObjectiveMode.MAX
    resource: str = "epoch"
    # Two or more for a multi-objective study (the first is ``metric``/``mode``); empty otherwise.
    metrics: tuple[Metric, ...] = ()

    @classmethod
    def multi(cls, metrics: Sequence[Metric], resource: str = "epoch") -> Objective:
        if len(metrics) < 2:
            raise ValueError("a multi-objective study needs two or more metrics")
        first = metrics[0]
        return cls(first.name, first.mode, resource, tuple(metrics))

    @property
    def is_multi(self) -> bool:
        return len(self.metrics) >= 2

    @property
    def names(self) -> tuple[str, ...]:
        """The metric names ranked, in spec order (one for a single objective)."""
        return tuple(m.name for m in self.metrics) if self.metrics else (self.metric,)

    def summary_vector(self, vectors: Sequence[Sequence[float]]) -> tuple[float, ...]:
        """Per metric, its summary over the reports (each a vector in ``names`` order)."""
        return tuple(m.single.summary([v[i] for v in vectors]) for i, m in enumerate(self.metrics))

    def minimized(self, vector: Sequence[float]) -> tuple[float, ...]:
        """A value vector as :mod:`hpod.core.pareto` takes it: smaller is better, NaN worst."""
        return tuple(m.single.sort_key(v) for m, v in zip(self.metrics, vector, strict=True))

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

    def to_dict(self) -> dict[str, Any]:
        if self.is_multi:
            return {
                "resource": self.resource,
                "metrics": [{"name": m.name, "mode": m.mode.value} for m in self.metrics],
            }
        return {"metric": self.metric, "mode": self.mode.value, "resource": self.resource}
