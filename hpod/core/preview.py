"""What hpodctl shows of a study's rungs: the preview of a spec before anything runs, and the
occupancy of each rung while it runs. Built on the arithmetic of :mod:`hpod.core.rungs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hpod.core import budget as bud
from hpod.core.plans import TrialView
from hpod.core.rungs import (
    bracket_levels,
    bracket_weights,
    continue_quota,
    max_brackets,
    pick_bracket,
    promotion_quota,
    reached,
    rung_levels,
)
from hpod.core.searchers import GridSearcher
from hpod.core.spec import (
    SUBSET_KEY,
    RungType,
    SchedulerSpec,
    SchedulerType,
    SearcherType,
    StudySpec,
    budget_shape,
)
from hpod.core.states import TrialState


def occupancy(spec: StudySpec, trials: Sequence[TrialView]) -> list[dict[str, Any]]:
    """Each bracket's rungs: how many trials reached each, run toward it, wait paused at it, and
    were promoted past it. Empty for schedulers without rungs. One pass over the trials; a study
    keeps the same counts as its trials change (:class:`Occupancy`)."""
    counter = Occupancy(spec)
    for t in trials:
        counter.update(t)
    return counter.view()


class Occupancy:
    """The counts of :func:`occupancy`, kept as trials change: a changed trial's share is taken
    out and put back, a few steps a rung, so that ``show`` on a 10,000-trial study walks no
    list of trials (the walk was 20-40 ms of the daemon's loop at each call)."""

    def __init__(self, spec: StudySpec) -> None:
        s = spec.scheduler
        self._spec = s
        self.active = s.type in (SchedulerType.ASHA, SchedulerType.HYPERBAND)
        levels = rung_levels(s) if self.active else ()
        self._n = _brackets(s) if self.active else 0
        self._rungs = [[*bracket_levels(levels, b), float(s.max_resource)] for b in range(self._n)]
        # Each bracket's rungs' [reached, running toward, paused at, promoted past].
        self._counts = [[[0, 0, 0, 0] for _ in r] for r in self._rungs]
        self._of: dict[int, tuple[tuple[int, int], ...]] = {}

    def update(self, t: TrialView) -> None:
        """Count ``t`` as it is now (in place of what it counted for before)."""
        if not self.active:
            return
        for k, i in self._of.pop(t.trial_id, ()):
            self._counts[t.bracket][k][i] -= 1
        share = tuple(self._share(t))
        for k, i in share:
            self._counts[t.bracket][k][i] += 1
        if share:
            self._of[t.trial_id] = share

    def _share(self, t: TrialView) -> list[tuple[int, int]]:
        if not 0 <= t.bracket < self._n:
            return []
        out: list[tuple[int, int]] = []
        blevels = self._rungs[t.bracket]
        last = t.last_resource if t.curve else 0.0
        running = t.state is TrialState.RUNNING
        paused = t.state is TrialState.PAUSED
        for k, level in enumerate(blevels):
            below = blevels[k - 1] if k else 0.0
            if running and t.max_resource >= level and below <= last < level:
                out.append((k, 1))
            if not reached(t, level):
                continue
            out.append((k, 0))
            if paused and t.max_resource <= level:
                out.append((k, 2))
            if k + 1 < len(blevels) and t.max_resource >= blevels[k + 1]:
                out.append((k, 3))
        return out

    def view(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for b, blevels in enumerate(self._rungs):
            for k, level in enumerate(blevels):
                reached_n, running_n, paused_n, promoted_n = self._counts[b][k]
                nxt = blevels[k + 1] if k + 1 < len(blevels) else None
                out.append(
                    {
                        "bracket": b,
                        "rung": k,
                        "level": _num(level),
                        "top": nxt is None,
                        "reached": reached_n,
                        "running": running_n,
                        "paused": paused_n,
                        "promoted": promoted_n,
                        "quota": None
                        if nxt is None
                        else promotion_quota(reached_n, self._spec.reduction_factor),
                    }
                )
        return out


def _brackets(s: SchedulerSpec) -> int:
    if s.type is SchedulerType.HYPERBAND:
        return min(s.brackets, max_brackets(s))
    return 1


def _grid(spec: StudySpec) -> dict[str, Any] | None:
    """A grid study's size (points_to_evaluate included), and whether max_trials cuts it short:
    with a quantized parameter's whole lattice on the grid, that is easy to miss."""
    s = spec.searcher
    if s.type is not SearcherType.GRID:
        return None
    points = GridSearcher(spec.space, s.grid_points, s.points_to_evaluate).size
    limit = spec.limits.max_trials
    return {
        "points": points,
        "grid_points": s.grid_points,
        "partial": limit is not None and points > limit,
    }


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def time_budget(spec: StudySpec) -> dict[str, Any] | None:
    """What the time budget will do (docs/time-budget.md), before anything is measured: what it
    derived from the spec, what it will measure, and what it then sets. None without one."""
    limits = spec.limits
    if limits.time_ratio is None or limits.full_resource is None:
        return None
    shape = budget_shape(spec.scheduler)
    unit = spec.objective.resource
    subset = spec.space[SUBSET_KEY].choices if SUBSET_KEY in spec.space.names else None
    smallest = bud.min_trials(shape)
    units, _ = bud.work(shape, smallest)
    ratio = limits.time_ratio
    return {
        "time_ratio": ratio,
        "full_resource": limits.full_resource,
        "subset_ratio": subset[0] if subset and len(subset) == 1 else None if subset else 1.0,
        "derived": list(spec.derived),
        "concurrency": limits.max_concurrent,
        "smallest_bracket": {"trials": smallest, "units": _num(units)},
        "measures": (
            f"from the first trials' own reports: start-up (launch to the first report), time "
            f"per {unit} (between reports) and the time after the last report; until then no "
            "time limit or trial count applies"
        ),
        "then": (
            f"one full training = start-up + {limits.full_resource} x time per {unit} + end "
            f"time; optimization_time = {ratio:g} x that"
            + ("" if limits.max_trials is not None else "; max_trials: as many as fit")
            + "; estimated again as trials report (hpodctl show)"
        ),
    }


def preview(spec: StudySpec) -> dict[str, Any]:
    """What a study will do before anything runs: its rungs, how many trials each bracket and
    rung will see, and the budget in resource units.

    With ``limits.max_trials`` the trials are split between brackets as :func:`pick_bracket` will
    split them; without it, one round of synchronous Hyperband's numbers (``n_s`` trials in bracket
    s) stands in. Each rung then sees ``promotion_quota`` of the rung below (at least one, as when
    the study has started its last trial). The budget counts each resource unit trained once:
    promoted trials resume from their checkpoint. It is what the rung system spends when every
    rung fills; trials that fail or a study stopped early spend less.
    """
    s = spec.scheduler
    max_r = float(s.max_resource)
    limit = spec.limits.max_trials
    out: dict[str, Any] = {
        "name": spec.name,
        "scheduler": s.type.value,
        "searcher": spec.searcher.type.value,
        # bo: random configurations before its model (20 with the default, 5 where bo is named)
        "num_init_trials": (
            spec.searcher.num_init_trials if spec.searcher.type is SearcherType.BO else None
        ),
        # bo: the share of its turns after those drawn at random (0.25 with the default)
        "random_fraction": (
            spec.searcher.random_fraction if spec.searcher.type is SearcherType.BO else None
        ),
        # hyperband: brackets weighted by the study's rank agreement (on with the default)
        "adaptive_brackets": s.adaptive_brackets and s.type is SchedulerType.HYPERBAND,
        # The spec named no scheduler type and got the default (hpod.core.spec.DEFAULT_SCHEDULER)
        "default": "scheduler.type" in spec.derived and spec.limits.time_ratio is None,
        "max_resource": _num(max_r),
        "max_trials": limit,
        "resource": spec.objective.resource,
        "grid": _grid(spec),
        "time_budget": time_budget(spec),
    }
    if s.type not in (SchedulerType.ASHA, SchedulerType.HYPERBAND):
        out["rung_levels"] = []
        out["brackets"] = []
        note = "every trial runs to max_resource"
        if s.type is SchedulerType.MEDIAN:
            note = (
                f"median stopping after {s.grace_period} {spec.objective.resource}(s) and "
                f"{s.min_trials} trials; the budget is the most it can spend"
            )
        out["note"] = note
        out["budget"] = None if limit is None else _num(limit * max_r)
        return out
    levels = rung_levels(s)
    eta = s.reduction_factor
    nb = _brackets(s)
    weights = bracket_weights(len(levels), nb, eta)
    if limit is not None:
        counts = [0] * nb
        for _ in range(limit):
            counts[pick_bracket(counts, weights)] += 1
    else:
        counts = [math.ceil(w - 1e-9) for w in weights]
    brackets: list[dict[str, Any]] = []
    total = 0.0
    for b in range(nb):
        blevels = [*bracket_levels(levels, b), max_r]
        n = counts[b]
        rungs: list[dict[str, Any]] = []
        budget = 0.0
        prev = 0.0
        for k, level in enumerate(blevels):
            if k == 0:
                seen = n
            elif s.rung_type is RungType.STOPPING:
                # A trial's rank is taken against those before it (the first always goes on), so
                # asynchronously a few more than this go on.
                seen = continue_quota(rungs[-1]["trials"], eta)
            else:
                seen = promotion_quota(rungs[-1]["trials"], eta, final=True)
            rungs.append({"level": _num(level), "trials": seen, "top": k == len(blevels) - 1})
            budget += seen * (level - prev)
            prev = level
        total += budget
        brackets.append({"bracket": b, "trials": n, "rungs": rungs, "budget": _num(budget)})
    out["rung_levels"] = [_num(v) for v in levels]
    out["reduction_factor"] = eta
    out["rung_type"] = s.rung_type.value
    out["brackets"] = brackets
    out["budget"] = _num(total)
    out["fifo_budget"] = _num(sum(counts) * max_r)
    if limit is None:
        out["note"] = "no limits.max_trials: one round of Hyperband's bracket sizes shown"
    return out
