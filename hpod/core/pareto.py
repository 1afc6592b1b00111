"""Pareto ranking for studies with several objectives.

Every point is a tuple of floats already turned into "smaller is better" by each metric's mode
(see ``Objective.minimized``). NaN (a diverged trial, a missing metric) counts as the worst value
there is, like +inf, so a broken trial is never on a better front than a finite one.

The ranking rule, used wherever hpod ranks trials of a multi-objective study (rungs, median
stopping, ``best``, top-k, reports, checkpoint retention): by front (non-dominated sorting),
then by crowding distance within the front, larger first (MOASHA's and NSGA-II's default: it
keeps the spread of the front), then by trial id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float]


def _clean(point: Point) -> tuple[float, ...]:
    return tuple(math.inf if math.isnan(v) else float(v) for v in point)


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    strictly = False
    for x, y in zip(_clean(a), _clean(b), strict=True):
        if x > y:
            return False
        if x < y:
            strictly = True
    return strictly


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """The successive Pareto fronts, as indices into ``points``, each front in index order.

    Equal points never dominate each other, so duplicates share a front. Two metrics take a
    sweep, O(n log n + n * fronts); more take the pairwise O(n^2) of NSGA-II, since rungs and
    the simulator sort often.
    """
    clean = [_clean(p) for p in points]
    if clean and all(len(p) == 2 for p in clean):
        return _sort_2d(clean)
    return _sort_pairwise(clean)


def _sort_2d(clean: Sequence[tuple[float, ...]]) -> list[list[int]]:
    # In (x, y) order every earlier point has x <= this one's, so it is dominated by a front
    # exactly when that front's lowest y is below its y, or equal to it at a smaller x.
    lowest: list[tuple[float, float]] = []  # per front: (lowest y, the x of its first holder)
    fronts: list[list[int]] = []
    for i in sorted(range(len(clean)), key=lambda k: (clean[k][0], clean[k][1], k)):
        x, y = clean[i]
        k = 0
        while k < len(fronts):
            low_y, low_x = lowest[k]
            if low_y > y or (low_y == y and low_x == x):
                break
            k += 1
        if k == len(fronts):
            fronts.append([])
            lowest.append((y, x))
        elif y < lowest[k][0]:
            lowest[k] = (y, x)
        fronts[k].append(i)
    return [sorted(f) for f in fronts]


def _sort_pairwise(clean: Sequence[tuple[float, ...]]) -> list[list[int]]:
    n = len(clean)
    dominated_by_count = [0] * n
    dominating: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(clean[i], clean[j]):
                dominating[i].append(j)
                dominated_by_count[j] += 1
            elif dominates(clean[j], clean[i]):
                dominating[j].append(i)
                dominated_by_count[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if dominated_by_count[i] == 0]
    while current:
        fronts.append(sorted(current))
        following: list[int] = []
        for i in current:
            for j in dominating[i]:
                dominated_by_count[j] -= 1
                if dominated_by_count[j] == 0:
                    following.append(j)
        current = following
    return fronts


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> list[float]:
    """NSGA-II's crowding distance of each member of ``front`` (same order), within the front.

    The two ends of the front on each metric get +inf. Infinite values (NaN, +inf) are placed
    just past the front's largest finite value on that metric, so distances stay finite numbers
    for the inner points. Ties on a metric are broken by index, so the result is deterministic.
    """
    m = len(front)
    if m == 0:
        return []
    clean = [_clean(points[i]) for i in front]
    dims = len(clean[0])
    distance = [0.0] * m
    if m <= 2:
        return [math.inf] * m
    for d in range(dims):
        column = [p[d] for p in clean]
        finite = [v for v in column if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            past = hi + (hi - lo if hi > lo else 1.0)
        else:
            lo = hi = past = 0.0
        column = [v if math.isfinite(v) else (past if v > 0 else lo - (past - hi)) for v in column]
        order = sorted(range(m), key=lambda k: (column[k], front[k]))
        span = column[order[-1]] - column[order[0]]
        distance[order[0]] = math.inf
        distance[order[-1]] = math.inf
        if span <= 0:
            continue
        for pos in range(1, m - 1):
            k = order[pos]
            if math.isinf(distance[k]):
                continue
            distance[k] += (column[order[pos + 1]] - column[order[pos - 1]]) / span
    return distance


def pareto_rank_key(points: Sequence[Point]) -> list[tuple[int, float]]:
    """Each point's rank key, (front number, -crowding distance): smaller sorts first.

    Callers append the trial id as the last tie-break: ``(*keys[i], trial_id)``.
    """
    keys: list[tuple[int, float]] = [(0, 0.0)] * len(points)
    for number, front in enumerate(non_dominated_sort(points)):
        for i, dist in zip(front, crowding_distance(points, front), strict=True):
            keys[i] = (number, -dist)
    return keys


def pareto_order(points: Sequence[Point], ids: Sequence[int]) -> list[int]:
    """Indices of ``points`` best first: by front, crowding distance (larger first), then id."""
    keys = pareto_rank_key(points)
    return sorted(range(len(points)), key=lambda i: (keys[i][0], keys[i][1], ids[i]))


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (the first front), in index order."""
    fronts = non_dominated_sort(points)
    return fronts[0] if fronts else []


def hypervolume_2d(points: Sequence[Point], reference: Point) -> float:
    """The area dominated by ``points`` and bounded by ``reference`` (both metrics minimized).

    Points that do not strictly dominate the reference on both metrics (and NaN or infinite
    ones) add nothing.
    """
    rx, ry = float(reference[0]), float(reference[1])
    inside = sorted(
        (float(p[0]), float(p[1]))
        for p in points
        if math.isfinite(p[0]) and math.isfinite(p[1]) and p[0] < rx and p[1] < ry
    )
    area = 0.0
    ceiling = ry
    for x, y in inside:
        if y < ceiling:
            area += (rx - x) * (ceiling - y)
            ceiling = y
    return area
