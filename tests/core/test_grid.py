"""A grid study: every lattice point of a quantized parameter, its size said before it runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpod.core.preview import preview
from hpod.core.searchers import GridSearcher
from hpod.core.space import Param, SearchSpace
from hpod.core.spec import StudySpec
from hpod.errors import SpecError

SPEC = """
name = "g"
command = ["python", "train.py", "{{x}}"]
[objective]
metric = "loss"
mode = "min"
[space]
x = {{ param_type = "quniform", range = [0.0, 1.0, 0.1] }}
{more}
[searcher]
type = "grid"
{searcher}
[limits]
{limits}
"""

TENTHS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def grid_spec(more: str = "", searcher: str = "", limits: str = "") -> StudySpec:
    text = SPEC.format(more=more, searcher=searcher, limits=limits)
    return StudySpec.from_toml(text, base_dir=Path("/tmp"))


def configs(s: GridSearcher) -> list[dict[str, object]]:
    out = []
    for n in range(len(s) + 1):
        suggestion = s.suggest(n, [])
        if suggestion is None:
            break
        out.append(suggestion.config)
    return out


def test_a_grid_over_a_quantized_parameter_runs_its_whole_lattice() -> None:
    # grid_points spread it over 5 values (0, 0.2, 0.5, 0.8, 1): an optimum at 0.3 was missed.
    spec = grid_spec()
    s = GridSearcher(spec.space, spec.searcher.grid_points)
    assert [c["x"] for c in configs(s)] == TENTHS
    assert Param.quniform("x", 0.0, 1.0, 0.1).grid_values(5) == TENTHS
    assert Param.qloguniform("w", 16, 512, 16, 2).grid_values(3) == list(range(16, 513, 16))
    assert Param.quniform("k", 0, 100, 1).grid_count(5) == 101


def test_only_continuous_parameters_are_spread_over_grid_points() -> None:
    space = SearchSpace.of(
        Param.uniform("u", 0, 1),
        Param.loguniform("lr", 1e-4, 1e-1),
        Param.quniform("k", 1, 3, 1),
        Param.choice("o", ["a", "b"]),
    )
    assert space.grid_size(4) == 4 * 4 * 3 * 2
    assert len(space.grid(4)) == space.grid_size(4)
    s = GridSearcher(space, 4)
    # The same points in the same order as the listed grid (the last parameter varies fastest).
    assert configs(s) == space.grid(4)


def test_a_grid_larger_than_max_trials_is_refused_unless_it_asks_to_be_partial() -> None:
    with pytest.raises(SpecError) as info:
        grid_spec(limits="max_trials = 5")
    (problem,) = info.value.problems
    assert problem.startswith("limits.max_trials: 5 trials cannot run the grid's 11 points")
    assert "searcher.partial_grid = true" in problem
    spec = grid_spec(searcher="partial_grid = true", limits="max_trials = 5")
    assert spec.searcher.partial_grid is True
    assert StudySpec.from_mapping(spec.to_dict(), base_dir="/tmp") == spec
    # Exactly enough trials, or no limit at all, runs the whole grid: nothing to refuse.
    assert grid_spec(limits="max_trials = 11").searcher.partial_grid is False
    assert grid_spec().limits.max_trials is None


def test_points_to_evaluate_count_towards_the_grid_once() -> None:
    more = 'u = { param_type = "uniform", range = [0, 1] }'
    # One grid point per continuous parameter: u is 0.5, so (0.3, 0.5) is on the grid.
    on_grid = "grid_points = 1\npoints_to_evaluate = [{ x = 0.3, u = 0.5 }]"
    spec = grid_spec(more, on_grid, "max_trials = 11")
    s = GridSearcher(spec.space, 1, spec.searcher.points_to_evaluate)
    assert [c["x"] for c in configs(s)] == [0.3, *[v for v in TENTHS if v != 0.3]]
    # Off the grid it is one trial more than the grid's 11.
    with pytest.raises(SpecError, match="the grid's 12 points"):
        grid_spec(more, on_grid.replace("u = 0.5", "u = 0.25"), "max_trials = 11")


def test_a_large_partial_grid_is_never_listed() -> None:
    # 10^12 points: trial n's point is computed from n, so only the trials that run cost anything.
    space = SearchSpace.of(Param.quniform("a", 0, 999_999, 1), Param.quniform("b", 0, 999_999, 1))
    start = time.perf_counter()
    s = GridSearcher(space, 5, [{"a": 0, "b": 1}])
    assert s.size == 10**12
    first = [s.suggest(n, []) for n in range(3)]
    assert [f.config if f else None for f in first] == [
        {"a": 0, "b": 1},
        {"a": 0, "b": 0},
        {"a": 0, "b": 2},
    ]
    last = s.suggest(10**12 - 1, [])
    assert last is not None
    assert last.config == {"a": 999_999, "b": 999_999}
    assert s.suggest(10**12, []) is None
    assert time.perf_counter() - start < 1.0


def test_preview_says_how_many_points_the_grid_has() -> None:
    full = preview(grid_spec(more='o = { param_type = "choice", range = ["a", "b"] }'))
    assert full["grid"] == {"points": 22, "grid_points": 5, "partial": False}
    part = preview(grid_spec(searcher="partial_grid = true", limits="max_trials = 5"))
    assert part["grid"] == {"points": 11, "grid_points": 5, "partial": True}
    random = grid_spec().to_dict()
    random["searcher"]["type"] = "random"
    assert preview(StudySpec.from_mapping(random, base_dir="/tmp"))["grid"] is None
