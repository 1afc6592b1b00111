"""Schedulers: when a report arrives, continue, pause or stop; when a slot frees, what runs next.

A scheduler keeps no state of its own that the trials do not already hold: everything it needs
(rung results, who was promoted) is derived from the :class:`StudyView` it is handed. That is what
lets a study restored from the store after a restart make exactly the decisions it would have made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hpod.core.states import Decision, TrialState

if TYPE_CHECKING:
    from hpod.core.objective import Objective
    from hpod.core.space import Config
    from hpod.core.spec import StudySpec


class TrialView(Protocol):
    """What a scheduler may read of a trial."""

    @property
    def trial_id(self) -> int: ...
    @property
    def state(self) -> TrialState: ...
    @property
    def bracket(self) -> int: ...
    @property
    def resume_from(self) -> float: ...
    @property
    def max_resource(self) -> float: ...
    @property
    def config(self) -> Config: ...
    @property
    def curve(self) -> Mapping[float, float]:
        """Counted objective values by resource level, in increasing resource order."""
        ...

    @property
    def last_resource(self) -> float: ...


class StudyView(Protocol):
    """What a scheduler may read of the study."""

    @property
    def spec(self) -> StudySpec: ...
    @property
    def objective(self) -> Objective: ...
    @property
    def trials(self) -> Sequence[TrialView]: ...


@dataclass(frozen=True)
class NewTrial:
    """Start a new configuration, to run up to ``max_resource`` (its first rung).

    ``config``: the configuration, when the scheduler chose it (DyHPO); None asks the searcher.
    ``how``: how it was chosen, for the study's decision counts ("random", "model")."""

    max_resource: float
    bracket: int = 0
    config: Config | None = None
    how: str = "random"


@dataclass(frozen=True)
class Promote:
    """Resume a paused trial from where it paused, up to ``max_resource`` (its next rung).

    ``how``: by the rung rule ("asha") or by a model's score ("model")."""

    trial_id: int
    max_resource: float
    how: str = "asha"


Plan = NewTrial | Promote


class Scheduler(Protocol):
    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        """Called after ``trial``'s report at ``resource`` was counted into its curve."""
        ...

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        """What to run in a free slot; None when nothing should start now."""
        ...


def ranking_value(objective: Objective, trial: TrialView, upto: float | None = None) -> float:
    """The value a trial ranks by, over its counted reports up to ``upto`` (all when None)."""
    values = [v for r, v in trial.curve.items() if upto is None or r <= upto]
    return objective.summary(values)


class FifoScheduler:
    """Every trial runs to ``max_resource``; no early stopping, no pausing."""

    def __init__(self, max_resource: float) -> None:
        self.max_resource = max_resource

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        return Decision.STOP if resource >= trial.max_resource else Decision.CONTINUE

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        return NewTrial(self.max_resource) if can_start_new else None


def make_scheduler(spec: StudySpec) -> Scheduler:
    # Imported here: the rung schedulers build on this module's protocol and plans.
    from hpod.core.asha import RungScheduler
    from hpod.core.median import MedianStoppingScheduler
    from hpod.core.rungs import max_brackets, rung_levels
    from hpod.core.spec import RungType, SchedulerType

    s = spec.scheduler
    kind = s.type
    if kind is SchedulerType.FIFO:
        return FifoScheduler(s.max_resource)
    if kind in (SchedulerType.ASHA, SchedulerType.HYPERBAND):
        brackets = min(s.brackets, max_brackets(s)) if kind is SchedulerType.HYPERBAND else 1
        return RungScheduler(
            rung_levels(s),
            s.max_resource,
            s.reduction_factor,
            promotion=s.rung_type is RungType.PROMOTION,
            brackets=brackets,
        )
    if kind is SchedulerType.MEDIAN:
        return MedianStoppingScheduler(s.max_resource, s.grace_period, s.min_trials)
    assert kind is SchedulerType.DYHPO
    from hpod.core.dyhpo import DyHPOScheduler

    return DyHPOScheduler(
        spec.space,
        rung_levels(s),
        s.max_resource,
        s.reduction_factor,
        probability_sh=s.probability_sh,
        seed=spec.searcher.seed,
        maximize=spec.objective.maximize,
        min_points=spec.searcher.num_init_trials,
        options=s.options,
    )
