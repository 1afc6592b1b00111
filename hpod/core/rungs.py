"""Rung levels, how many trials a rung promotes, and Hyperband's brackets.

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

Pure: no I/O, and everything is derived from the trials, so it holds after a restart. Arithmetic
only: the preview of a spec and the rung occupancy of a study are in :mod:`hpod.core.preview`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from hpod.core.pareto import pareto_order

if TYPE_CHECKING:
    from hpod.core.objective import Objective
    from hpod.core.plans import TrialView


class RungSpec(Protocol):
    """What the rung arithmetic reads of a scheduler spec (:class:`hpod.core.spec.SchedulerSpec`):
    declared here, so that the spec, which counts the default rungs, and the rungs do not import
    each other."""

    @property
    def min_resource(self) -> float: ...
    @property
    def max_resource(self) -> float: ...
    @property
    def reduction_factor(self) -> float: ...
    @property
    def rung_levels(self) -> Sequence[float] | None: ...


def default_levels(min_resource: float, max_resource: float, eta: float) -> tuple[float, ...]:
    """``min_resource * eta**k`` for every k with a level strictly below ``max_resource``."""
    out: list[float] = []
    level = float(min_resource)
    # The tolerance keeps 3**4 computed as 80.99999 from becoming a rung at max_resource 81.
    while level < max_resource * (1 - 1e-9):
        out.append(float(round(level, 9)))
        level *= eta
    return tuple(out)


def rung_levels(s: RungSpec) -> tuple[float, ...]:
    """The rung levels of a scheduler spec, lowest first; ``max_resource`` is not among them."""
    if s.rung_levels is not None:
        return tuple(float(v) for v in s.rung_levels if v < s.max_resource)
    return default_levels(s.min_resource, s.max_resource, s.reduction_factor)


def max_brackets(s: RungSpec) -> int:
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


# Adaptive brackets (the default's Hyperband): a bracket's budget share is Hyperband's times
# max(0, tau)**AGREEMENT_POWER, tau being Kendall's rank correlation, over the AGREEMENT_TRIALS
# newest trials that reached the highest level AGREEMENT_MIN_TRIALS have reached, between their
# values at the bracket's first rung and at that level (bench/results/quality.md).
AGREEMENT_POWER = 2.0
AGREEMENT_TRIALS = 40
AGREEMENT_MIN_TRIALS = 6
# A bracket whose rung ranks the wrong way round still gets a trial now and then, so that its
# agreement goes on being measured (and a share is never 0, which pick_bracket cannot take).
AGREEMENT_FLOOR = 1e-6


def rank_agreement(low: Sequence[float], high: Sequence[float]) -> float:
    """Kendall's tau (tau-a) of two rankings of the same trials: 1 when the order at the low
    level is the order at the high one, about 0 when it says nothing, -1 when it is reversed."""
    n = len(low)
    if n < 2:
        return 0.0
    total = 0
    for i in range(n):
        li, hi = low[i], high[i]
        for j in range(i + 1, n):
            a, b = li - low[j], hi - high[j]
            if a and b:
                total += 1 if (a > 0) == (b > 0) else -1
    return total / (n * (n - 1) / 2)


def agreement_weights(weights: Sequence[float], agreements: Sequence[float | None]) -> list[float]:
    """Hyperband's bracket weights, each times ``max(0, tau)**AGREEMENT_POWER`` for the brackets
    with an agreement (None: a bracket that starts at or above the level compared with, kept)."""
    out: list[float] = []
    for w, tau in zip(weights, agreements, strict=True):
        trust = 1.0 if tau is None else max(tau, 0.0) ** AGREEMENT_POWER
        out.append(max(w * trust, AGREEMENT_FLOOR))
    return out


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


def rung_vector(objective: Objective, trial: TrialView, level: float) -> tuple[float, ...]:
    """Multi-objective: :func:`rung_value` for every metric (objective.names order)."""
    vectors = trial.vectors
    values = [v for r, v in vectors.items() if r <= level]
    if level not in vectors:
        past = next((v for r, v in vectors.items() if r > level), None)
        if past is not None:
            values.append(past)
    if not values:
        return tuple(math.nan for _ in objective.names)
    return objective.summary_vector(values)


def ranked(objective: Objective, trials: Sequence[TrialView], level: float) -> list[TrialView]:
    """The trials that reached ``level``, best first (NaN last, ties to the older trial).

    Several objectives: by Pareto front of their rung vectors, then crowding distance within
    the front (larger first), then trial id (:func:`hpod.core.pareto.pareto_order`)."""
    at = [t for t in trials if reached(t, level)]
    if objective.is_multi:
        points = [objective.minimized(rung_vector(objective, t, level)) for t in at]
        return [at[i] for i in pareto_order(points, [t.trial_id for t in at])]
    return sorted(
        at, key=lambda t: (objective.sort_key(rung_value(objective, t, level)), t.trial_id)
    )
