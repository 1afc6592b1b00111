"""The median stopping rule (Golovin et al. 2017, "Google Vizier").

At each report at resource t, once t >= ``grace_period``: the trial is stopped when its best value
so far is worse than the median of the running averages, at t, of the other trials that have
reached t — and only when at least ``min_trials`` other trials have. A running average at t is the
mean of a trial's counted values up to t. A NaN value ranks worst, in averages as in bests.

Several objectives: the same rule per metric, and the trial is stopped when the median vector
(each metric's median of the others' running averages) dominates its vector of bests so far:
at least as good on every metric and strictly better on one. With one metric that is exactly the
rule above; with several a trial is stopped only when it is behind the typical trial on every
metric at once, so a trial that trades one metric for another (a point of the front) runs on.
Stopping on any one metric would stop every trial at the cheap end of the front.

One objective, on a study it is attached to (:class:`~hpod.core.plans.IndexedScheduler`): each
level a decision has asked about keeps the running averages there in order (derived state only,
built on the first decision at that level and kept as the study hands over each changed trial),
so that a report costs O(log n) in the study's size instead of a walk of every trial's curve.
Several objectives, or a study it is not attached to, walk the trials: the same rule written out.
"""

from __future__ import annotations

import bisect
import math
from array import array

from hpod.core.objective import Objective
from hpod.core.pareto import dominates
from hpod.core.plans import NewTrial, Plan, StudyView, TrialView
from hpod.core.rungs import reached
from hpod.core.states import Decision

# The most distinct report levels a restored study's index is built for at once.
EAGER_LEVELS = 256


class Averages:
    """One level's running averages (sort keys): in order, and each trial's by its id.

    Two arrays of doubles, not a list of (key, trial id) tuples and a dict: the rule needs the
    others' median only, so equal keys are interchangeable and a trial's own is found by its
    value. At 10,000 trials and 27 levels the tuples, their floats and the dicts were 37 MB of
    the daemon's memory and a quarter million objects for every full collection to walk; the
    arrays are 16 bytes an entry and no object at all. Keys are never NaN (Objective.sort_key
    makes it +inf), so NaN in ``by_trial`` means "not reached"."""

    __slots__ = ("by_trial", "ordered")

    def __init__(self) -> None:
        self.ordered = array("d")
        self.by_trial = array("d")

    @classmethod
    def of(cls, by_trial: array[float]) -> Averages:
        """Each trial's key by its id (NaN: not reached), put in order once."""
        averages = cls()
        averages.by_trial = by_trial
        averages.ordered = array("d", sorted(v for v in by_trial if not math.isnan(v)))
        return averages

    def get(self, trial_id: int) -> float | None:
        if trial_id >= len(self.by_trial):
            return None
        value = self.by_trial[trial_id]
        return None if math.isnan(value) else value

    def put(self, trial_id: int, value: float | None) -> None:
        old = self.get(trial_id)
        if old == value:
            return
        if old is not None:
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        if value is None:
            self.by_trial[trial_id] = math.nan  # it had one: in range
            return
        missing = trial_id + 1 - len(self.by_trial)
        if missing > 0:
            self.by_trial.extend(_unreached(missing))
        self.by_trial[trial_id] = value
        bisect.insort(self.ordered, value)


def _unreached(n: int) -> array[float]:
    return array("d", [math.nan]) * n


class MedianStoppingScheduler:
    def __init__(self, max_resource: float, grace_period: float, min_trials: int) -> None:
        self.max_resource = float(max_resource)
        self.grace_period = float(grace_period)
        self.min_trials = min_trials
        self._study: StudyView | None = None
        # Level -> the running averages' keys there of the trials that reached it; the levels
        # in increasing order beside it, so that an in-order report finds those it passed.
        self._at: dict[float, Averages] = {}
        self._levels: list[float] = []

    # -- the index (hpod.core.plans.IndexedScheduler) ----------------------------------------

    def attach(self, study: StudyView) -> None:
        self._study = None if study.objective.is_multi else study
        self._at = {}
        self._levels = []
        if self._study is not None:
            self._build(study)

    def _build(self, study: StudyView) -> None:
        """A restored study's levels, all at once, each trial's up to the last it reached: built
        at each level's first decision, each walked every trial (120 ms of the daemon's loop a
        level, 27 times, at 10,000 trials). Only where the levels are few (epochs, not seconds):
        otherwise each is still built at its first decision."""
        levels = sorted({r for t in study.trials for r in t.curve if r >= self.grace_period})
        if not levels or len(levels) > EAGER_LEVELS:
            return
        size = max((t.trial_id for t in study.trials), default=-1) + 1
        by_trial = {level: _unreached(size) for level in levels}
        for t in study.trials:
            for level in levels:
                key = self._key(t, level)
                if key is None:
                    break  # not reached: nor any level above (they are in order)
                by_trial[level][t.trial_id] = key
        self._at = {level: Averages.of(keys) for level, keys in by_trial.items()}
        self._levels = levels

    def touched(self, trial: TrialView, since: float | None = None) -> None:
        if self._study is None or not self._levels:
            return
        levels = self._levels
        start = 0 if since is None else bisect.bisect_right(levels, since)
        if since is not None:
            # In order: what it had up to ``since`` is as it was, and it reached no level above
            # its last report.
            end = bisect.bisect_right(levels, trial.last_resource) if trial.curve else start
        else:
            end = len(levels)
        for level in levels[start:end]:
            self._at[level].put(trial.trial_id, self._key(trial, level))

    def _key(self, trial: TrialView, level: float) -> float | None:
        assert self._study is not None
        if not reached(trial, level):
            return None
        return _average_key(self._study.objective, trial, level)

    def _averages(self, study: StudyView, level: float) -> Averages:
        averages = self._at.get(level)
        if averages is None:
            # The first decision at this level: one walk, then kept by ``touched``.
            averages = self._at[level] = Averages()
            bisect.insort(self._levels, level)
            for t in study.trials:
                averages.put(t.trial_id, self._key(t, level))
        return averages

    # -- reports ------------------------------------------------------------------------------

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        if resource < self.grace_period:
            return Decision.CONTINUE
        objective = study.objective
        if objective.is_multi:
            return self._on_report_multi(study, trial, resource)
        if study is self._study:
            median = self._indexed_median(study, trial, resource)
        else:
            median = self._walked_median(study, trial, resource)
        if median is None:
            return Decision.CONTINUE
        best_so_far = [v for r, v in trial.curve.items() if r <= resource]
        best = math.nan
        for v in best_so_far:
            if objective.better(v, best):
                best = v
        # Keys are "smaller is better" in both directions, with NaN as +inf.
        return Decision.STOP if objective.sort_key(best) > median else Decision.CONTINUE

    def _walked_median(self, study: StudyView, trial: TrialView, resource: float) -> float | None:
        objective = study.objective
        keys: list[float] = []
        for other in study.trials:
            if other.trial_id == trial.trial_id or not reached(other, resource):
                continue
            keys.append(_average_key(objective, other, resource))
        if len(keys) < self.min_trials:
            return None
        keys.sort()
        return _median(keys)

    def _indexed_median(self, study: StudyView, trial: TrialView, resource: float) -> float | None:
        averages = self._averages(study, resource)
        keys = averages.ordered
        own = averages.get(trial.trial_id)
        # Its own left out: any one entry equal to it is as good as another.
        skip = len(keys) if own is None else bisect.bisect_left(keys, own)
        n = len(keys) - (own is not None)
        if n < self.min_trials:
            return None

        # The others' i-th key: the trial's own left out of the order.
        def kth(i: int) -> float:
            return keys[i if i < skip else i + 1]

        mid = n // 2
        return kth(mid) if n % 2 else (kth(mid - 1) + kth(mid)) / 2

    def _on_report_multi(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        objective = study.objective
        columns: list[list[float]] = [[] for _ in objective.metrics]
        for other in study.trials:
            if other.trial_id == trial.trial_id or not any(r >= resource for r in other.vectors):
                continue
            rows = [v for r, v in other.vectors.items() if r <= resource]
            for i, m in enumerate(objective.metrics):
                col = [row[i] for row in rows]
                avg = math.fsum(col) / len(col) if col else math.nan
                columns[i].append(m.single.sort_key(avg))
        if len(columns[0]) < self.min_trials:
            return Decision.CONTINUE
        median = tuple(_median(sorted(col)) for col in columns)
        mine = [v for r, v in trial.vectors.items() if r <= resource]
        # Each metric's best so far (sort keys: smaller is better, NaN as +inf), whatever its
        # mode, as the single-objective rule takes the best.
        best = tuple(
            min((m.single.sort_key(row[i]) for row in mine), default=math.inf)
            for i, m in enumerate(objective.metrics)
        )
        return Decision.STOP if dominates(median, best) else Decision.CONTINUE

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        return NewTrial(self.max_resource) if can_start_new else None


def _median(keys: list[float]) -> float:
    mid = len(keys) // 2
    return keys[mid] if len(keys) % 2 else (keys[mid - 1] + keys[mid]) / 2


def _average_key(objective: Objective, trial: TrialView, level: float) -> float:
    """The sort key of a trial's running average at ``level``: the mean of its counted reports
    up to there (NaN, as +inf, when it has none)."""
    values = [v for r, v in trial.curve.items() if r <= level]
    return objective.sort_key(math.fsum(values) / len(values) if values else math.nan)
