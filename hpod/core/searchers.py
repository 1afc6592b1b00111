"""The model-free searchers: random and grid.

Which configuration trial number ``n`` gets, as a pure function of (the searcher's settings, the
trial number, the history): the protocol and why it is pure are in :mod:`hpod.core.plans`. The
BO searcher is in :mod:`hpod.core.bo`, and :func:`hpod.core.study.make_searcher` picks one for a
spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hpod.core.plans import Observation, Suggestion
from hpod.core.space import Config, ParamValue, SearchSpace


def _same(a: Mapping[str, ParamValue], b: Mapping[str, ParamValue]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if _both_numbers(x, y):
            if x != y:  # 64 and 64.0 are the same point
                return False
        elif type(x) is not type(y) or x != y:  # True and 1 are not (a choice may hold both)
            return False
    return True


def _both_numbers(x: object, y: object) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))


class RandomSearcher:
    """``points_to_evaluate`` first, then independent draws seeded by (seed, number)."""

    needs_history = False

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        points_to_evaluate: Sequence[Mapping[str, ParamValue]] = (),
    ) -> None:
        self.space = space
        self.seed = seed
        self.points = tuple(space.normalize(p) for p in points_to_evaluate)

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number < len(self.points):
            return Suggestion(dict(self.points[number]))
        # A generator per trial, not one shared stream: trial n's configuration must not depend
        # on how many draws earlier trials made, or on the order in which they were asked for.
        return Suggestion(self.space.sample(np.random.default_rng([self.seed, number])))


class GridSearcher:
    """``points_to_evaluate`` first, then the grid in its stable order, then None."""

    needs_history = False

    def __init__(
        self,
        space: SearchSpace,
        points_per_param: int = 5,
        points_to_evaluate: Sequence[Mapping[str, ParamValue]] = (),
    ) -> None:
        self.space = space
        points = [space.normalize(p) for p in points_to_evaluate]
        grid = [g for g in space.grid(points_per_param) if not any(_same(g, p) for p in points)]
        self.configs: tuple[Config, ...] = (*points, *grid)

    def __len__(self) -> int:
        return len(self.configs)

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number >= len(self.configs):
            return None
        return Suggestion(dict(self.configs[number]))
