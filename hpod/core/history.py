"""A study's history for its searcher, read from the trials' own curves.

A searcher is handed the study's observations (:class:`~hpod.core.plans.Observation`, one a
report, and one a launched trial that has reported nothing). Kept as objects they were 280,000 of
them at 10,000 trials of 27 levels, 21 MB of the daemon's memory beside the curves they copied
(bench/scale.py, bo). :class:`History` holds one :class:`TrialHistory` a trial instead (its
configuration, that configuration's key and its live curve) and makes observations only for a
reader that iterates it; the readers that matter (:func:`points_by_config`,
:func:`config_keys`) read the parts directly, with no observation made at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from hpod.core.plans import Observation, config_key, observed_key

if TYPE_CHECKING:
    from hpod.core.space import ParamValue

ConfigKey = tuple[tuple[str, str, object], ...]
Vector = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class TrialHistory:
    """One trial's part of the history: its configuration (a copy nobody changes), its
    :func:`~hpod.core.plans.config_key`, and its counted reports by level, read live (the study
    owns them; a searcher reads them during one call and keeps none)."""

    config: Mapping[str, ParamValue]
    key: ConfigKey
    curve: Mapping[float, float]
    # Multi-objective: each level's metric values as the study counted them, and the function
    # that makes them losses (Objective.minimized); None for a single objective.
    vectors: Mapping[float, Vector] | None = None
    minimized: Callable[[Vector], Vector] | None = None

    @classmethod
    def of(
        cls,
        config: Mapping[str, ParamValue],
        curve: Mapping[float, float],
        vectors: Mapping[float, Vector] | None = None,
        minimized: Callable[[Vector], Vector] | None = None,
    ) -> TrialHistory:
        return cls(config, config_key(config), curve, vectors, minimized)

    def observations(self) -> Iterator[Observation]:
        config, key, curve = self.config, self.key, self.curve
        # Launched, nothing counted yet: a model-based searcher treats it as pending.
        if not curve:
            yield Observation(config, 0.0, math.nan, key=key)
        if self.vectors is not None and self.minimized is not None:
            minimized = self.minimized
            for r, v in self.vectors.items():
                yield Observation(config, r, curve.get(r, math.nan), minimized(v), key)
            return
        for r, value in curve.items():
            yield Observation(config, r, value, key=key)

    def count(self) -> int:
        levels = self.vectors if self.vectors is not None else self.curve
        return len(levels) + (not self.curve)


class History(Sequence[Observation]):
    """The observations of a study's trials, in trial order, made on demand from ``parts``."""

    __slots__ = ("_list", "parts")

    def __init__(self, parts: Sequence[TrialHistory]) -> None:
        self.parts = parts
        self._list: list[Observation] | None = None

    def __iter__(self) -> Iterator[Observation]:
        for part in self.parts:
            yield from part.observations()

    def __len__(self) -> int:
        return sum(part.count() for part in self.parts)

    @overload
    def __getitem__(self, index: int) -> Observation: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Observation]: ...
    def __getitem__(self, index: int | slice) -> Observation | Sequence[Observation]:
        # Indexing is for tests and rare readers: made once, on the first index.
        if self._list is None:
            self._list = list(self)
        return self._list[index]


def points_by_config(
    history: Sequence[Observation],
) -> tuple[dict[ConfigKey, list[tuple[float, float]]], dict[ConfigKey, Mapping[str, ParamValue]]]:
    """Each distinct configuration's (level, value) points, and the configuration itself, in the
    order of first appearance. A launched trial with no report adds its configuration and no
    point (its NaN observation at 0 only says it was launched)."""
    by_config: dict[ConfigKey, list[tuple[float, float]]] = {}
    configs: dict[ConfigKey, Mapping[str, ParamValue]] = {}
    if isinstance(history, History) and all(p.vectors is None for p in history.parts):
        for part in history.parts:
            configs.setdefault(part.key, part.config)
            by_config.setdefault(part.key, []).extend(
                (r, v) for r, v in part.curve.items() if r > 0 or not math.isnan(v)
            )
        return by_config, configs
    # A trial's observations share one config object and its key: read once a trial, not made
    # once a report (27 times a trial; 1.5 s of the loop at 10,000).
    last_config: Mapping[str, ParamValue] | None = None
    points: list[tuple[float, float]] = []
    for obs in history:
        if obs.config is not last_config:
            last_config = obs.config
            key = observed_key(obs)
            configs.setdefault(key, obs.config)
            points = by_config.setdefault(key, [])
        if obs.resource > 0 or not math.isnan(obs.value):
            points.append((obs.resource, obs.value))
    return by_config, configs


def config_keys(history: Sequence[Observation]) -> set[ConfigKey]:
    """The keys of every configuration in ``history``."""
    if isinstance(history, History):
        return {part.key for part in history.parts}
    return {observed_key(o) for o in history}
