"""The study's limits as pure arithmetic: which one is reached, how much of each is used, and
whether the next rung could still finish in time. The shell reads the clocks and passes them in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from hpod.core.deadlines import format_deadline
from hpod.core.objective import Objective
from hpod.core.pareto import pareto_front, pareto_order
from hpod.core.spec import LimitsSpec, SchedulerSpec
from hpod.core.states import TrialState


@dataclass(frozen=True)
class Clocks:
    """What a study has used so far."""

    elapsed: float = 0.0  # optimization seconds: wall clock while the daemon runs the study
    compute: float = 0.0  # device-seconds: run seconds x devices held, summed over trials
    trials: int = 0  # trials started
    # Wall time (epoch seconds) the clocks were read at, for a deadline; None: not known, and
    # a deadline is not looked at.
    wall: float | None = None


@dataclass(frozen=True)
class LimitHit:
    limit: str  # "optimization_time", "compute_time", "deadline" or "max_trials"
    reason: str


def _seconds(value: float) -> str:
    return f"{value:g}s"


def limit_hit(limits: LimitsSpec, clocks: Clocks) -> LimitHit | None:
    """The time limit the study has reached, if any (max_trials ends it by running out of work)."""
    if limits.optimization_time is not None and clocks.elapsed >= limits.optimization_time:
        return LimitHit(
            "optimization_time",
            f"optimization_time limit of {_seconds(limits.optimization_time)} reached",
        )
    if limits.compute_time is not None and clocks.compute >= limits.compute_time:
        return LimitHit(
            "compute_time", f"compute_time limit of {_seconds(limits.compute_time)} reached"
        )
    if limits.deadline is not None and clocks.wall is not None and clocks.wall >= limits.deadline:
        return LimitHit("deadline", f"deadline of {format_deadline(limits.deadline)} reached")
    return None


def max_trials_reason(limits: LimitsSpec, clocks: Clocks) -> str | None:
    if limits.max_trials is not None and clocks.trials >= limits.max_trials:
        return f"max_trials limit of {limits.max_trials} reached"
    return None


def usage(limits: LimitsSpec, clocks: Clocks) -> dict[str, dict[str, float]]:
    """Each set limit: its value, what is used, and the share used (1.0 = reached)."""
    out: dict[str, dict[str, float]] = {}
    for name, limit, used in (
        ("optimization_time", limits.optimization_time, clocks.elapsed),
        ("compute_time", limits.compute_time, clocks.compute),
        ("max_trials", limits.max_trials, float(clocks.trials)),
    ):
        if limit is None:
            continue
        share = used / limit if limit > 0 else 1.0
        out[name] = {"limit": float(limit), "used": used, "share": share}
    return out


def seconds_to_limit(limits: LimitsSpec, clocks: Clocks, devices_running: int) -> float:
    """Wall seconds until a time limit is reached at the current rate (inf: none will be)."""
    left = math.inf
    if limits.optimization_time is not None:
        left = min(left, limits.optimization_time - clocks.elapsed)
    if limits.compute_time is not None and devices_running > 0:
        left = min(left, (limits.compute_time - clocks.compute) / devices_running)
    if limits.deadline is not None and clocks.wall is not None:
        left = min(left, limits.deadline - clocks.wall)
    return max(0.0, left)


def time_left_for(
    limits: LimitsSpec, clocks: Clocks, devices_running: int, devices_new: int
) -> float:
    """Wall seconds a trial started now with ``devices_new`` devices may run before a limit."""
    left = math.inf
    if limits.optimization_time is not None:
        left = min(left, limits.optimization_time - clocks.elapsed)
    if limits.compute_time is not None:
        rate = devices_running + max(1, devices_new)
        left = min(left, (limits.compute_time - clocks.compute) / rate)
    if limits.deadline is not None and clocks.wall is not None:
        left = min(left, limits.deadline - clocks.wall)
    return max(0.0, left)


@dataclass(frozen=True)
class Pace:
    """Measured wall seconds per resource unit (an epoch, a step), over a study's reports."""

    seconds: float = 0.0
    units: float = 0.0

    def add(self, seconds: float, units: float) -> Pace:
        if units <= 0 or seconds < 0:
            return self
        return Pace(self.seconds + seconds, self.units + units)

    @property
    def per_unit(self) -> float | None:
        return self.seconds / self.units if self.units > 0 else None


def first_rung_span(scheduler: SchedulerSpec) -> float:
    """The least resource a new trial's first run covers: one rung (FIFO: the whole run)."""
    if scheduler.type.value == "fifo":
        return float(scheduler.max_resource)
    if scheduler.rung_levels:
        return float(min(scheduler.rung_levels))
    return float(scheduler.min_resource)


def could_finish(pace: Pace, span: float, time_left: float) -> bool:
    """Whether ``span`` resource units at the measured pace fit in ``time_left`` seconds.

    With no measurement yet the answer is yes: the first trials are how the pace is learnt.
    """
    per_unit = pace.per_unit
    if per_unit is None:
        return time_left > 0
    return per_unit * span <= time_left


def checkpoints_to_delete(
    objective: Objective,
    trials: Iterable[tuple[int, TrialState, float | tuple[float, ...] | None]],
    keep: int,
) -> list[int]:
    """Trials whose checkpoints may go: finished, with a value outside the top ``keep``.

    ``trials`` gives (trial id, state, ranking value or None; for several objectives the value
    vector, ``Study.vector_of``). A paused, running, pending or interrupted trial may still
    resume from its checkpoint, so it is never chosen; the best trial is always kept, even with
    ``keep = 0``. Several objectives: the top ``keep`` in Pareto order (front by front, then
    crowding distance, then id), and the whole first front always, so no point of the front
    loses its checkpoint, whatever ``keep`` says.
    """
    finished = (TrialState.COMPLETED, TrialState.STOPPED, TrialState.FAILED)
    rows = list(trials)
    if objective.is_multi:
        valued = [(r[0], r[2]) for r in rows if isinstance(r[2], tuple)]
        points = [objective.minimized(v) for _, v in valued]
        order = pareto_order(points, [tid for tid, _ in valued])
        kept = {valued[i][0] for i in order[:keep]}
        kept.update(valued[i][0] for i in pareto_front(points))
    else:
        ranked = sorted(
            (r for r in rows if r[2] is not None),
            key=lambda r: (objective.sort_key(r[2]), r[0]),  # type: ignore[arg-type]
        )
        kept = {r[0] for r in ranked[: max(1, keep)]}
    return [tid for tid, state, _ in rows if state in finished and tid not in kept]
