"""Rung levels, how many trials a rung promotes, Hyperband's brackets, and the preview.

A rung is a resource level at which a trial is compared with the others that reached it. The levels
are ``min_resource * eta**k`` for k = 0, 1, ... strictly below ``max_resource`` (or the spec's
explicit ``rung_levels``); ``max_resource`` itself is where a trial ends, not a rung. Bracket ``b``
of Hyperband uses the levels from the b-th on, so bracket 0 is ASHA and the last bracket (with no
rung at all) is plain random search to ``max_resource``.

How many of the n trials that reached a rung are promoted (:func:`promotion_quota`):
``floor(n / eta)`` — the best ones by the objective's ranking value, ties to the older trial —
and, once the study can start no new trial (``max_trials`` reached, the grid exhausted), at least
one, so the best configuration still reaches ``max_resource`` when the last rungs hold fewer than
``eta`` trials. With the stopping rung type a trial continues past a rung when its rank among the
n trials that reached it so far (itself included) is below ``max(1, floor(n / eta))``
(:func:`continue_quota`): the top 1/eta of the rung, as Li et al. 2020 state it (and as Optuna's
SuccessiveHalvingPruner applies it), and the single best while the rung holds fewer than eta.

Pure: no I/O, and everything is derived from the trials, so it holds after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpod.core.objective import Objective
    from hpod.core.schedulers import TrialView
    from hpod.core.spec import SchedulerSpec, StudySpec


def default_levels(min_resource: float, max_resource: float, eta: float) -> tuple[float, ...]:
    """``min_resource * eta**k`` for every k with a level strictly below ``max_resource``."""
    out: list[float] = []
    level = float(min_resource)
    # The tolerance keeps 3**4 computed as 80.99999 from becoming a rung at max_resource 81.
    while level < max_resource * (1 - 1e-9):
        out.append(float(round(level, 9)))
        level *= eta
    return tuple(out)


def rung_levels(s: SchedulerSpec) -> tuple[float, ...]:
    """The rung levels of a scheduler spec, lowest first; ``max_resource`` is not among them."""
    if s.rung_levels is not None:
        return tuple(float(v) for v in s.rung_levels if v < s.max_resource)
    return default_levels(s.min_resource, s.max_resource, s.reduction_factor)


def max_brackets(s: SchedulerSpec) -> int:
    """Hyperband's bracket count at most: one per rung, plus the one that starts at the top."""
    return len(rung_levels(s)) + 1


def bracket_levels(levels: Sequence[float], bracket: int) -> tuple[float, ...]:
    """The rungs of bracket ``b``: the levels from the b-th on (bracket 0 has them all)."""
    return tuple(levels[bracket:])


def bracket_weights(n_levels: int, brackets: int, eta: float) -> list[float]:
    """How often each bracket gets a new trial, relative to the others.

    Synchronous Hyperband (Li et al. 2018) starts bracket s with ``ceil((s_max+1)/(s+1) * eta**s)``
    configurations, so that every bracket spends about the same budget; the asynchronous Hyperband
    of Li et al. 2020 keeps that proportion when it assigns new trials. Our bracket b is their
    s = s_max - b, with s_max = the number of rungs.
    """
    s_max = n_levels
    return [(s_max + 1) / (s_max - b + 1) * eta ** (s_max - b) for b in range(brackets)]


def pick_bracket(counts: Sequence[int], weights: Sequence[float]) -> int:
    """The bracket of the next new trial: the one furthest behind its share (smooth weighted round
    robin on the counts so far), lowest bracket on ties. A function of the counts only, so a
    restored study assigns the same brackets."""
    total = sum(weights)
    n = sum(counts) + 1
    best, best_gap = 0, -math.inf
    for b, (c, w) in enumerate(zip(counts, weights, strict=True)):
        gap = n * w / total - c
        if gap > best_gap + 1e-12:
            best, best_gap = b, gap
    return best


def promotion_quota(n: int, eta: float, *, final: bool = False) -> int:
    """How many of the ``n`` trials at a rung are promoted: floor(n/eta); at least 1 when final."""
    q = math.floor(n / eta + 1e-9)
    return max(q, 1) if final and n > 0 else q


def continue_quota(n: int, eta: float) -> int:
    """Stopping type: how many of the ``n`` trials seen at a rung go on past it: the top 1/eta,
    floor(n/eta), and at least the best one, max(1, floor(n/eta))."""
    return max(1, math.floor(n / eta + 1e-9)) if n > 0 else 0


def reached(trial: TrialView, level: float) -> bool:
    """Whether a trial has a counted report at or past ``level``."""
    # The curve is in resource order: its last level says it, without a walk over every report.
    return bool(trial.curve) and trial.last_resource >= level


def rung_value(objective: Objective, trial: TrialView, level: float) -> float:
    """The value a trial ranks by at a rung: over its counted reports up to the level (the last
    one for min/max, the best one for ``*_global``). A trial that jumped over the level ranks by
    its first report past it too: that is what it had when it got there."""
    curve = trial.curve
    if not objective.is_global and level in curve:
        return curve[level]  # the common case, kept cheap: the simulator asks this very often
    values = [v for r, v in curve.items() if r <= level]
    if level not in curve:
        values.extend(v for r, v in curve.items() if r > level)
        values = values[: len([r for r in curve if r <= level]) + 1]
    return objective.summary(values)


def ranked(objective: Objective, trials: Sequence[TrialView], level: float) -> list[TrialView]:
    """The trials that reached ``level``, best first (NaN last, ties to the older trial)."""
    at = [t for t in trials if reached(t, level)]
    return sorted(
        at, key=lambda t: (objective.sort_key(rung_value(objective, t, level)), t.trial_id)
    )


def occupancy(spec: StudySpec, trials: Sequence[TrialView]) -> list[dict[str, Any]]:
    """Each bracket's rungs: how many trials reached each, run toward it, wait paused at it, and
    were promoted past it. Empty for schedulers without rungs."""
    from hpod.core.spec import SchedulerType
    from hpod.core.states import TrialState

    s = spec.scheduler
    if s.type not in (SchedulerType.ASHA, SchedulerType.HYPERBAND):
        return []
    levels = rung_levels(s)
    out: list[dict[str, Any]] = []
    for b in range(_brackets(s)):
        mine = [t for t in trials if t.bracket == b]
        blevels = [*bracket_levels(levels, b), float(s.max_resource)]
        for k, level in enumerate(blevels):
            at = [t for t in mine if reached(t, level)]
            below = blevels[k - 1] if k else 0.0
            running = [
                t
                for t in mine
                if t.state is TrialState.RUNNING
                and t.max_resource >= level
                and max(t.curve, default=0.0) < level
                and max(t.curve, default=0.0) >= below
            ]
            paused = [t for t in at if t.state is TrialState.PAUSED and t.max_resource <= level]
            nxt = blevels[k + 1] if k + 1 < len(blevels) else None
            promoted = [t for t in at if nxt is not None and t.max_resource >= nxt]
            out.append(
                {
                    "bracket": b,
                    "rung": k,
                    "level": _num(level),
                    "top": nxt is None,
                    "reached": len(at),
                    "running": len(running),
                    "paused": len(paused),
                    "promoted": len(promoted),
                    "quota": None if nxt is None else promotion_quota(len(at), s.reduction_factor),
                }
            )
    return out


def _brackets(s: SchedulerSpec) -> int:
    from hpod.core.spec import SchedulerType

    if s.type is SchedulerType.HYPERBAND:
        return min(s.brackets, max_brackets(s))
    return 1


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


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
    from hpod.core.spec import RungType, SchedulerType

    s = spec.scheduler
    max_r = float(s.max_resource)
    limit = spec.limits.max_trials
    out: dict[str, Any] = {
        "name": spec.name,
        "scheduler": s.type.value,
        "max_resource": _num(max_r),
        "max_trials": limit,
        "resource": spec.objective.resource,
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
