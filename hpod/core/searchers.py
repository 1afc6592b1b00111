"""Searchers: which configuration trial number ``n`` gets.

A searcher is a pure function of (its settings, the trial number, the history): a study restored
from the store after a restart asks again for trial ``n`` and gets the same configuration, so a
trial that was pending when the daemon died is not silently replaced by a different one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hpod.core.space import Config, ParamValue, SearchSpace
from hpod.core.spec import SearcherType, StudySpec


@dataclass(frozen=True, slots=True)
class Observation:
    """One reported objective value of one configuration at one resource level.

    ``resource`` 0 with a NaN ``value`` only says that the configuration was launched and has
    reported nothing yet: a model-based searcher counts it as pending."""

    config: Mapping[str, ParamValue]
    resource: float
    value: float


class Searcher(Protocol):
    # A searcher that sets ``needs_history = False`` is handed an empty history: building it
    # walks every report of the study, 40 ms on the event loop at 16,000 reports.
    def suggest(self, number: int, history: Sequence[Observation]) -> Config | None:
        """The configuration of trial ``number`` (0-based), or None when the search is over."""
        ...


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


def config_key(config: Mapping[str, ParamValue]) -> tuple[tuple[str, str, object], ...]:
    """A hashable key that is equal for the same point (64 and 64.0 alike, as in ``_same``)."""
    out: list[tuple[str, str, object]] = []
    for key in sorted(config):
        v = config[key]
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append((key, "n", float(v)))
        else:
            out.append((key, type(v).__name__, v))
    return tuple(out)


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

    def suggest(self, number: int, history: Sequence[Observation]) -> Config | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number < len(self.points):
            return dict(self.points[number])
        # A generator per trial, not one shared stream: trial n's configuration must not depend
        # on how many draws earlier trials made, or on the order in which they were asked for.
        return self.space.sample(np.random.default_rng([self.seed, number]))


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

    def suggest(self, number: int, history: Sequence[Observation]) -> Config | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number >= len(self.configs):
            return None
        return dict(self.configs[number])


def make_searcher(spec: StudySpec) -> Searcher:
    """The searcher a study spec asks for."""
    s = spec.searcher
    if s.type is SearcherType.GRID:
        return GridSearcher(spec.space, s.grid_points, s.points_to_evaluate)
    if s.type is SearcherType.BO:
        from hpod.core.bo import BOSearcher

        return BOSearcher(
            spec.space,
            s.seed,
            s.points_to_evaluate,
            maximize=spec.objective.maximize,
            num_init_trials=s.num_init_trials,
            acquisition=s.acquisition,
            kappa=s.kappa,
            kappa_decay=s.kappa_decay,
            kappa_decay_delay=s.kappa_decay_delay,
        )
    # random, and dyhpo: the DyHPO scheduler picks its new configurations itself and hands them
    # over with its plan; this one stands in while it has no model.
    return RandomSearcher(spec.space, s.seed, s.points_to_evaluate)
