from __future__ import annotations

import math

import pytest

from hpod.core.pareto import (
    crowding_distance,
    dominates,
    hypervolume_2d,
    non_dominated_sort,
    pareto_front,
    pareto_order,
    pareto_rank_key,
)


def test_dominates() -> None:
    assert dominates((1, 1), (2, 2))
    assert dominates((1, 2), (1, 3))
    assert not dominates((1, 2), (1, 2))
    assert not dominates((1, 3), (2, 2))
    assert dominates((1, 1), (math.nan, 1))
    assert not dominates((math.nan, 1), (1, 1))


def test_fronts_of_a_hand_made_set() -> None:
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (5, 5), (2, 2), (6, 6)]
    assert non_dominated_sort(points) == [[0, 3, 5], [1], [2], [4], [6]]
    assert pareto_front(points) == [0, 3, 5]


def test_duplicates_share_a_front() -> None:
    points = [(1, 2), (1, 2), (2, 1), (3, 3), (3, 3)]
    assert non_dominated_sort(points) == [[0, 1, 2], [3, 4]]


def test_nan_and_inf_rank_worst() -> None:
    points = [(math.nan, 0.0), (5.0, 5.0), (math.inf, 0.0), (math.nan, math.nan), (0.0, 9.0)]
    fronts = non_dominated_sort(points)
    # (nan, 0) is (inf, 0): not dominated by (5, 5), but it equals (inf, 0)
    assert fronts[0] == [0, 1, 2, 4]
    assert fronts[1] == [3]


def test_empty() -> None:
    assert non_dominated_sort([]) == []
    assert crowding_distance([], []) == []
    assert pareto_order([], []) == []
    assert hypervolume_2d([], (1, 1)) == 0.0


def test_crowding_distance_of_a_line() -> None:
    points = [(0, 4), (1, 3), (3, 1), (4, 0), (2, 2)]
    front = [0, 1, 2, 3, 4]
    d = crowding_distance(points, front)
    assert d[0] == math.inf
    assert d[3] == math.inf
    # inner: (next - prev) / span per metric, summed over both metrics
    assert d[1] == pytest.approx(2 / 4 * 2)
    assert d[4] == pytest.approx(2 / 4 * 2)
    assert d[2] == pytest.approx(2 / 4 * 2)


def test_crowding_distance_small_fronts_are_infinite() -> None:
    assert crowding_distance([(0, 1), (1, 0)], [0, 1]) == [math.inf, math.inf]
    assert crowding_distance([(0, 1)], [0]) == [math.inf]


def test_crowding_distance_with_nan_is_finite_inside() -> None:
    points = [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0), (math.nan, 0.0)]
    d = crowding_distance(points, [0, 1, 2, 3])
    assert d[0] == math.inf
    assert d[3] == math.inf
    assert all(math.isfinite(x) for x in (d[1], d[2]))


def test_crowding_distance_duplicates_deterministic() -> None:
    points = [(1, 1), (1, 1), (1, 1)]
    d = crowding_distance(points, [0, 1, 2])
    assert d == [math.inf, 0.0, math.inf]


def test_rank_key_and_order() -> None:
    points = [(0, 4), (1, 3), (2.5, 1.5), (4, 0), (3, 3), (5, 5)]
    keys = pareto_rank_key(points)
    assert [k[0] for k in keys] == [0, 0, 0, 0, 1, 2]
    # ends of the first front first (by id), then the inner ones by crowding, larger first
    order = pareto_order(points, [10, 11, 12, 13, 14, 15])
    assert order[:2] == [0, 3]
    assert set(order[2:4]) == {1, 2}
    assert order[4:] == [4, 5]
    assert keys[1][1] < 0
    assert keys[2][1] < 0


def test_order_ties_break_by_id() -> None:
    points = [(1, 1), (1, 1)]
    assert pareto_order(points, [7, 3]) == [1, 0]


def test_hypervolume_of_known_sets() -> None:
    assert hypervolume_2d([(0, 0)], (1, 1)) == pytest.approx(1.0)
    assert hypervolume_2d([(1, 2), (2, 1)], (3, 3)) == pytest.approx(3.0)
    # dominated and duplicate points add nothing
    assert hypervolume_2d([(1, 2), (2, 1), (2, 2), (1, 2)], (3, 3)) == pytest.approx(3.0)
    # points on or past the reference add nothing
    assert hypervolume_2d([(3, 0), (0, 3), (4, 4)], (3, 3)) == 0.0
    assert hypervolume_2d([(math.nan, 0), (0, math.inf)], (3, 3)) == 0.0
    # a staircase: (0,3),(1,2),(2,1),(3,0) against (4,4): 4 + 3 + 2 + 1 = 10
    assert hypervolume_2d([(3, 0), (0, 3), (2, 1), (1, 2)], (4, 4)) == pytest.approx(10.0)


def test_two_metric_sweep_agrees_with_the_pairwise_sort() -> None:
    import random

    from hpod.core.pareto import _clean, _sort_2d, _sort_pairwise

    rng = random.Random(7)
    for trial in range(300):
        n = rng.randint(0, 40)
        values = [0.0, 1.0, 2.0, 3.0, math.inf, math.nan] if trial % 2 else None
        points = [
            (rng.choice(values), rng.choice(values)) if values else (rng.random(), rng.random())
            for _ in range(n)
        ]
        clean = [_clean(p) for p in points]
        assert _sort_2d(clean) == _sort_pairwise(clean), points
    # three metrics take the pairwise sort
    assert non_dominated_sort([(1, 1, 1), (0, 2, 2), (2, 2, 2)]) == [[0, 1], [2]]
