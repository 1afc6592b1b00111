"""The history a searcher reads: its shortcuts give what a walk of its observations gives."""

from __future__ import annotations

import math

from hpod.core.bo import level_data
from hpod.core.history import History, TrialHistory, config_keys, points_by_config


def _history() -> History:
    return History(
        [
            TrialHistory.of({"lr": 0.1, "opt": "sgd"}, {1.0: 0.5, 3.0: 0.4}),
            TrialHistory.of({"lr": 0.2, "opt": "adam"}, {}),  # launched, nothing reported
            TrialHistory.of({"lr": 0.1, "opt": "sgd"}, {1.0: 0.45, 9.0: 0.3}),  # the same point
            TrialHistory.of({"lr": 0.3, "opt": "sgd"}, {0.0: math.nan, 1.0: math.nan}),
            TrialHistory.of({"lr": 0.4, "opt": "adam"}, {1.0: 0.2, 3.0: 0.25, 9.0: 0.1}),
        ]
    )


def test_the_shortcuts_equal_a_walk_of_the_observations() -> None:
    history = _history()
    walked = list(history)  # a plain list takes the walking path
    assert repr(points_by_config(history)) == repr(points_by_config(walked))
    assert config_keys(history) == config_keys(walked)
    for level in (None, 1.0, 3.0, 9.0):
        for points in (1, 2, 3):
            fast = level_data(history, maximize=False, min_points=points, level=level)
            slow = level_data(walked, maximize=False, min_points=points, level=level)
            assert repr(fast) == repr(slow), (level, points)


def test_a_history_counts_and_indexes_as_its_observations() -> None:
    history = _history()
    walked = list(history)
    # One observation a report, and one for the trial that has reported nothing.
    assert len(history) == len(walked) == 2 + 1 + 2 + 2 + 3
    assert repr(history[1]) == repr(walked[1])
    assert repr(list(history[-3:])) == repr(walked[-3:])
    unreported = walked[2]
    assert unreported.resource == 0.0
    assert math.isnan(unreported.value)


def test_it_reads_the_curves_live() -> None:
    curve: dict[float, float] = {}
    history = History([TrialHistory.of({"x": 1}, curve)])
    assert points_by_config(history)[0] == {(("x", "n", 1.0),): []}
    curve[1.0] = 0.5
    assert points_by_config(history)[0] == {(("x", "n", 1.0),): [(1.0, 0.5)]}


def test_a_multi_objective_part_makes_loss_vectors() -> None:
    vectors = {1.0: (0.5, 2.0), 3.0: (0.4, 3.0)}
    part = TrialHistory.of({"x": 1}, {1.0: 0.5, 3.0: 0.4}, vectors, lambda v: (v[0], -v[1]))
    history = History([part, TrialHistory.of({"x": 2}, {}, {}, lambda v: v)])
    observed = [(o.resource, o.value, o.vector) for o in history]
    assert observed[:2] == [(1.0, 0.5, (0.5, -2.0)), (3.0, 0.4, (0.4, -3.0))]
    assert observed[2][0] == 0.0
    assert math.isnan(observed[2][1])
    assert observed[2][2] is None
    assert len(history) == 3
    assert repr(points_by_config(history)) == repr(points_by_config(list(history)))
