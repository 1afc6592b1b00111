"""ASHA and asynchronous Hyperband: one rung scheduler, with one bracket or several.

Promotion type (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning",
Algorithm 2): a trial runs to its bracket's first rung and pauses there with its checkpoint. When a
slot frees, the rungs are searched from the highest down for a paused trial among the best
``promotion_quota(n, eta)`` of the n trials at its rung (see :mod:`hpod.core.rungs`); the first
found is resumed up to the next rung (or ``max_resource`` from the top rung). With none, a new
configuration starts at the first rung of the bracket :func:`~hpod.core.rungs.pick_bracket` picks.

Stopping type: a trial is launched to ``max_resource`` and, each time a report carries it past a
rung, goes on only if it ranks among the best ``continue_quota(n, eta)`` = ``max(1, floor(n/eta))``
of the n trials that have reached that rung so far (itself included); otherwise it is stopped.

No private state: a trial's rung results are its counted curve, and "promoted past a rung" is its
``max_resource`` above the rung, so a study rebuilt from the store decides the same. What it does
keep is an index of those, derived only (:class:`RungIndex`): each rung's trials in rank order
and its promotable ones, updated as the study hands it each changed trial
(:class:`~hpod.core.plans.IndexedScheduler`), so that a report or a free slot costs O(log n) in
the study's size instead of a sort of every trial. A study it is not attached to (DyHPO's inner
ASHA, a caller's own view) is decided by walking its trials, the same rule written out.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence

from hpod.core.plans import NewTrial, Plan, Promote, StudyView, TrialView
from hpod.core.rungs import (
    AGREEMENT_MIN_TRIALS,
    AGREEMENT_TRIALS,
    agreement_weights,
    bracket_levels,
    bracket_weights,
    continue_quota,
    pick_bracket,
    promotion_quota,
    rank_agreement,
    ranked,
    rung_value,
)
from hpod.core.states import Decision, TrialState
from hpod.core.tracked import TrackedDict

# A trial's place at a rung: its ranking value's sort key (smaller is better, NaN as +inf), then
# its id (ties to the older trial), exactly the order of hpod.core.rungs.ranked.
Key = tuple[float, int]


class Ranks:
    """Keys in order, with each trial's own: a sorted list kept by bisection. Inserting into a
    Python list moves its tail (a memmove: some microseconds at 10,000 trials), the rest is
    O(log n); a balanced tree would win only far beyond the sizes a study reaches."""

    __slots__ = ("keys", "of")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.of: dict[int, Key] = TrackedDict()  # never untracked (hpod.core.tracked)

    def __len__(self) -> int:
        return len(self.keys)

    def put(self, trial_id: int, key: Key | None) -> None:
        old = self.of.get(trial_id)
        if old == key:
            return
        if old is not None:
            del self.keys[bisect.bisect_left(self.keys, old)]
            del self.of[trial_id]
        if key is not None:
            bisect.insort(self.keys, key)
            self.of[trial_id] = key

    def rank(self, key: Key) -> int:
        return bisect.bisect_left(self.keys, key)


class RungIndex:
    """Each (bracket, rung) of a study: the trials that reached it in rank order, and those of
    them paused there and promotable (launched below the next rung, no report at it); and how
    many trials each bracket has. Derived from the trials only (see the module's docstring)."""

    def __init__(self, scheduler: RungScheduler, study: StudyView) -> None:
        self.study = study
        self.scheduler = scheduler
        n = scheduler.brackets
        self.rungs = [scheduler.rungs_of(b) for b in range(n)]
        self.at = [[Ranks() for _ in r[:-1]] for r in self.rungs]
        self.promotable = [[Ranks() for _ in r[:-1]] for r in self.rungs]
        self.counts = [0] * n
        self.seen: set[int] = set()
        # Every level (the rungs, then max_resource): the trials that reached it, for the
        # adaptive brackets' agreement, and that agreement's weights with what they were made of.
        self.levels = (*scheduler.levels, scheduler.max_resource)
        self.reached: list[set[int]] = [set() for _ in self.levels]
        self._agreed: tuple[tuple[int, int], list[float]] | None = None
        for t in study.trials:
            self.touched(t)

    def touched(self, t: TrialView, since: float | None = None) -> None:
        b = t.bracket
        if not 0 <= b < self.scheduler.brackets:
            return
        tid = t.trial_id
        if tid not in self.seen:
            self.seen.add(tid)
            self.counts[b] += 1
        objective = self.study.objective
        rungs = self.rungs[b]
        last = t.last_resource if t.curve else None
        for i, level in enumerate(self.levels):
            if last is not None and last >= level:
                self.reached[i].add(tid)
            else:
                self.reached[i].discard(tid)  # a report retracted
        for k in range(len(rungs) - 1):
            level = rungs[k]
            if since is not None and level <= since:
                # An in-order report above it: its value there, and (running) its promotability,
                # are as they were.
                continue
            at = self.at[b][k]
            if last is None or last < level:
                at.put(tid, None)
                self.promotable[b][k].put(tid, None)
                continue
            key = (objective.sort_key(rung_value(objective, t, level)), tid)
            at.put(tid, key)
            nxt = rungs[k + 1]
            can = t.state is TrialState.PAUSED and t.max_resource < nxt and last < nxt
            self.promotable[b][k].put(tid, key if can else None)

    def bracket_weights(self) -> list[float]:
        """The adaptive brackets' weights now (hpod.core.rungs.agreement_weights): Hyperband's
        until AGREEMENT_MIN_TRIALS trials have reached the second level; made again only when
        another trial reaches the level compared with, so a free slot costs a lookup."""
        scheduler = self.scheduler
        top = next(
            (
                i
                for i in reversed(range(len(self.levels)))
                if len(self.reached[i]) >= AGREEMENT_MIN_TRIALS
            ),
            0,
        )
        if top == 0:
            return scheduler.weights
        key = (top, len(self.reached[top]))
        if self._agreed is not None and self._agreed[0] == key:
            return self._agreed[1]
        by_id = self.study.trials
        objective = self.study.objective
        newest = [by_id[i] for i in heapq.nlargest(AGREEMENT_TRIALS, self.reached[top])]

        def values(level: float) -> list[float]:
            return [objective.sort_key(rung_value(objective, t, level)) for t in newest]

        high = values(self.levels[top])
        agreements: list[float | None] = []
        for b in range(scheduler.brackets):
            if b >= top:  # it starts at or above the level compared with (the last: at the top)
                agreements.append(None)
                continue
            agreements.append(rank_agreement(_finite(values(self.levels[b])), _finite(high)))
        weights = agreement_weights(scheduler.weights, agreements)
        self._agreed = (key, weights)
        return weights


def _finite(values: list[float]) -> list[float]:
    """Sort keys with NaN (a diverged run, the worst) as +inf, which compares."""
    return [math.inf if math.isnan(v) else v for v in values]


class RungScheduler:
    """ASHA (``brackets = 1``) or asynchronous Hyperband (``brackets > 1``)."""

    def __init__(
        self,
        levels: Sequence[float],
        max_resource: float,
        eta: float,
        *,
        promotion: bool = True,
        brackets: int = 1,
        adaptive: bool = False,
    ) -> None:
        if brackets < 1 or brackets > len(levels) + 1:
            raise ValueError(f"brackets must be in 1..{len(levels) + 1}, got {brackets}")
        self.levels = tuple(float(v) for v in levels)
        self.max_resource = float(max_resource)
        self.eta = eta
        self.promotion = promotion
        self.brackets = brackets
        # Weighted by the study's own rank agreement (RungIndex.bracket_weights); a study it is
        # not attached to keeps Hyperband's.
        self.adaptive = adaptive and brackets > 1
        self.weights = bracket_weights(len(self.levels), brackets, eta)
        # Every (level, bracket, k) rung, highest level first: the trials nearest the top go first.
        every = [(lv, b, k) for b in range(brackets) for k, lv in enumerate(self.rungs_of(b)[:-1])]
        self._order = sorted(every, key=lambda x: (-x[0], x[1]))
        self._index: RungIndex | None = None

    # -- the index (hpod.core.plans.IndexedScheduler) ----------------------------------------

    def attach(self, study: StudyView) -> None:
        # Several objectives rank by Pareto order, which no sorted key gives: they walk.
        self._index = None if study.objective.is_multi else RungIndex(self, study)

    def touched(self, trial: TrialView, since: float | None = None) -> None:
        if self._index is not None:
            self._index.touched(trial, since)

    def _index_for(self, study: StudyView) -> RungIndex | None:
        index = self._index
        return index if index is not None and index.study is study else None

    def rungs_of(self, bracket: int) -> tuple[float, ...]:
        """The bracket's rung levels followed by ``max_resource``."""
        return (*bracket_levels(self.levels, bracket), self.max_resource)

    # -- reports ------------------------------------------------------------------------------

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        if self.promotion:
            # The study pauses the trial at its launch's max_resource (its rung): nothing to add.
            return Decision.CONTINUE
        earlier = [r for r in trial.curve if r < resource]
        before = max(earlier, default=trial.resume_from)
        rungs = self.rungs_of(trial.bracket)[:-1]
        index = self._index_for(study)
        if index is not None:
            for k, level in enumerate(rungs):
                if not before < level <= resource:
                    continue
                at = index.at[trial.bracket][k]
                rank = at.rank(at.of[trial.trial_id])
                if rank >= continue_quota(len(at), self.eta):
                    return Decision.STOP
            return Decision.CONTINUE
        peers = [t for t in study.trials if t.bracket == trial.bracket]
        for level in rungs:
            if not before < level <= resource:
                continue
            order = ranked(study.objective, peers, level)
            rank = next(i for i, t in enumerate(order) if t.trial_id == trial.trial_id)
            if rank >= continue_quota(len(order), self.eta):
                return Decision.STOP
        return Decision.CONTINUE

    # -- free slots ---------------------------------------------------------------------------

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        if self.promotion:
            plan = self._promotion(study, final=not can_start_new)
            if plan is not None:
                return plan
        if not can_start_new:
            return None
        index = self._index_for(study)
        weights = self.weights
        if index is not None:
            counts = index.counts
            if self.adaptive:
                weights = index.bracket_weights()
        else:
            counts = [0] * self.brackets
            for t in study.trials:
                if 0 <= t.bracket < self.brackets:
                    counts[t.bracket] += 1
        bracket = pick_bracket(counts, weights)
        first = self.rungs_of(bracket)[0] if self.promotion else self.max_resource
        return NewTrial(max_resource=first, bracket=bracket)

    def _promotion(self, study: StudyView, *, final: bool) -> Promote | None:
        index = self._index_for(study)
        if index is not None:
            for _, b, k in self._order:
                promotable = index.promotable[b][k]
                if not promotable:
                    continue
                at = index.at[b][k]
                first = promotable.keys[0]
                # The best promotable trial is the first one met walking the rung's order.
                if at.rank(first) < promotion_quota(len(at), self.eta, final=final):
                    return Promote(first[1], max_resource=index.rungs[b][k + 1])
            return None
        for level, b, k in self._order:
            peers = [t for t in study.trials if t.bracket == b]
            order = ranked(study.objective, peers, level)
            nxt = self.rungs_of(b)[k + 1]
            for t in order[: promotion_quota(len(order), self.eta, final=final)]:
                # Paused at this rung and not promoted past it: its launch ended at the rung.
                # (One that reported past the next rung too is promoted from that rung instead.)
                if t.state is TrialState.PAUSED and t.max_resource < nxt <= max(t.curve):
                    continue
                if t.state is TrialState.PAUSED and t.max_resource < nxt:
                    return Promote(t.trial_id, max_resource=nxt)
        return None
