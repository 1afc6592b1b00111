"""The model-free searchers: random and grid.

Which configuration trial number ``n`` gets, as a pure function of (the searcher's settings, the
trial number, the history): the protocol and why it is pure are in :mod:`hpod.core.plans`. The
BO searcher is in :mod:`hpod.core.bo`, and :func:`hpod.core.study.make_searcher` picks one for a
spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hpod.core.history import config_keys
from hpod.core.plans import Observation, Suggestion, config_key
from hpod.core.space import Config, ParamValue, SearchSpace

# numpy's first Generator in a process sets up its bit generators (12 ms measured): made here, at
# import, so that a daemon's first decision does not pay for it on its loop.
np.random.default_rng(0)


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


# Draws tried before a finite space is walked in a random order for a configuration not yet run.
DISTINCT_DRAWS = 32
# A finite space up to this size is walked (a permutation of its indices); a larger one only drawn.
DISTINCT_WALK = 100_000


class DistinctSearcher(RandomSearcher):
    """Random draws that skip every configuration an earlier trial already has: DyHPO's
    searcher, so a study never trains the same configuration twice (it resumes the trial that
    has it instead). ``points_to_evaluate`` first, as given; then trial ``n``'s draw from
    (seed, n), as :class:`RandomSearcher`'s, and while that one was run, draws from
    (seed, n, attempt); a finite space (choices and quantized parameters only) is walked in an
    order drawn from (seed, n) when those all were. None once a finite space is exhausted: the
    study then starts nothing new. Pure: the history names every trial started so far (a trial
    with no counted report as a NaN observation at 0)."""

    needs_history = True

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        # points_to_evaluate, the check of ``number`` and the draw from (seed, n): RandomSearcher's.
        first = super().suggest(number, history)
        if number < len(self.points) or first is None:
            return first
        # Each key made once a trial by the study (history.TrialHistory), not once a report here.
        seen = config_keys(history)
        size = self.space.finite_size
        if size is not None and len(seen) >= size:
            return None
        config: Config = first.config
        for attempt in range(DISTINCT_DRAWS):
            if attempt:
                config = self.space.sample(np.random.default_rng([self.seed, number, attempt]))
            if config_key(config) not in seen:
                return Suggestion(config)
        if size is None or size > DISTINCT_WALK:
            return Suggestion(config)  # a continuous space: 32 draws all run is no real case
        order = np.random.default_rng([self.seed, number, DISTINCT_DRAWS]).permutation(size)
        for index in order:
            config = self.space.grid_point(int(index), 1)
            if config_key(config) not in seen:
                return Suggestion(config)
        return None


class GridSearcher:
    """``points_to_evaluate`` first, then the grid in its stable order, then None.

    The grid is never listed: a quantized parameter brings its whole lattice, so the grid can be
    far larger than the trials a study runs (``searcher.partial_grid``). Trial ``n``'s point is
    computed from ``n``, skipping the grid points that ``points_to_evaluate`` already ran.
    """

    needs_history = False

    def __init__(
        self,
        space: SearchSpace,
        points_per_param: int = 5,
        points_to_evaluate: Sequence[Mapping[str, ParamValue]] = (),
    ) -> None:
        self.space = space
        self.points_per_param = points_per_param
        self.points: tuple[Config, ...] = tuple(space.normalize(p) for p in points_to_evaluate)
        self._grid_size = space.grid_size(points_per_param)
        on_grid = {self._grid_index(p) for p in self.points}
        self._skipped = sorted(i for i in on_grid if i is not None)

    def _grid_index(self, point: Config) -> int | None:
        index = self.space.grid_index(point, self.points_per_param)
        if index is None or not _same(self.space.grid_point(index, self.points_per_param), point):
            return None
        return index

    @property
    def size(self) -> int:
        """How many configurations it suggests before None (points_to_evaluate included)."""
        return len(self.points) + self._grid_size - len(self._skipped)

    def __len__(self) -> int:
        return self.size

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number < len(self.points):
            return Suggestion(dict(self.points[number]))
        index = number - len(self.points)
        if index >= self._grid_size - len(self._skipped):
            return None
        for skipped in self._skipped:  # sorted: each one at or before the index moves it on
            if skipped > index:
                break
            index += 1
        return Suggestion(self.space.grid_point(index, self.points_per_param))
