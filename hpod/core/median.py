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
"""

from __future__ import annotations

import math

from hpod.core.pareto import dominates
from hpod.core.plans import NewTrial, Plan, StudyView, TrialView
from hpod.core.states import Decision


class MedianStoppingScheduler:
    def __init__(self, max_resource: float, grace_period: float, min_trials: int) -> None:
        self.max_resource = float(max_resource)
        self.grace_period = float(grace_period)
        self.min_trials = min_trials

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        if resource < self.grace_period:
            return Decision.CONTINUE
        objective = study.objective
        if objective.is_multi:
            return self._on_report_multi(study, trial, resource)
        keys: list[float] = []
        for other in study.trials:
            if other.trial_id == trial.trial_id or not any(r >= resource for r in other.curve):
                continue
            values = [v for r, v in other.curve.items() if r <= resource]
            avg = math.fsum(values) / len(values) if values else math.nan
            keys.append(objective.sort_key(avg))
        if len(keys) < self.min_trials:
            return Decision.CONTINUE
        keys.sort()
        mid = len(keys) // 2
        median = keys[mid] if len(keys) % 2 else (keys[mid - 1] + keys[mid]) / 2
        best_so_far = [v for r, v in trial.curve.items() if r <= resource]
        best = math.nan
        for v in best_so_far:
            if objective.better(v, best):
                best = v
        # Keys are "smaller is better" in both directions, with NaN as +inf.
        return Decision.STOP if objective.sort_key(best) > median else Decision.CONTINUE

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
