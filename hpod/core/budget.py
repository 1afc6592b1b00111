"""The time budget (``[limits] time_ratio``, ``full_resource``): what one full training costs,
measured from the study's own trials, and the study that fits ``time_ratio`` times that.

Pure and deterministic: the shell hands in what it measured (:class:`Samples`, sums of seconds
and resource units, kept across restarts as JSON) and how many trials run at once; the model
answers the estimate and the derived limits (:class:`Plan`). docs/time-budget.md writes the model
and its assumptions down.

The measurements, per run of a trial (a promoted trial's resume is a run of its own):

- ``first``: from the launch to the run's first counted report, and the units that report
  covered. It holds the start-up (interpreter, imports, data loading) and the first units.
- ``steps``: between consecutive counted reports of one run: pure time per unit, evaluation
  inside each unit included.
- ``ends``: from the last counted report to the exit, for a run that ended by itself (after its
  PAUSE or STOP answer, or its last unit): saving, final evaluation, tear-down.

From them: ``per_unit`` = steps' seconds / units (the first reports' when no step is measured
yet), ``startup`` = first seconds - per_unit x first units, per run, never below 0, and
``teardown`` the mean of the ends. One full training is ``startup + full_resource x per_unit /
subset_ratio + teardown`` (a trial's epoch on a subset costs that share of a full one).

Imports nothing of the spec (the spec derives its defaults through this module); the scheduler's
numbers come in as :class:`Shape`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpod.core.rungs import continue_quota, pick_bracket, promotion_quota

# hpopt's smallest proxy dataset, in samples: hpod.trial.subset never cuts below it either.
SUBSET_FLOOR = 500
# The smallest subset ratio the budget picks by itself (below it a trial learns next to nothing).
MIN_SUBSET_RATIO = 0.05
# The most trials the model sizes a study for: beyond it a budget is not the limit.
MAX_TRIALS = 20_000
# A revision is said (an event, the store) when the budget moves by more than this share, or the
# derived max_trials changes: the estimate moves a little with every report.
REVISE_SHARE = 0.05


@dataclass(frozen=True)
class Shape:
    """The rung system the budget sizes: the spec's scheduler, as numbers."""

    levels: tuple[float, ...]  # rung levels, max_resource not among them
    max_resource: float
    reduction_factor: float
    brackets: int = 1
    stopping: bool = True  # rung_type = "stopping": one run per trial; promotion: one per rung
    rungs: bool = True  # False: fifo or median (every trial to max_resource at most)


@dataclass(frozen=True)
class Samples:
    """What the study's runs measured, as sums (see the module's docstring)."""

    firsts: int = 0
    first_seconds: float = 0.0
    first_units: float = 0.0
    step_seconds: float = 0.0
    step_units: float = 0.0
    ends: int = 0
    end_seconds: float = 0.0

    def first(self, seconds: float, units: float) -> Samples:
        if seconds < 0 or units <= 0:
            return self
        return _replace(
            self,
            firsts=self.firsts + 1,
            first_seconds=self.first_seconds + seconds,
            first_units=self.first_units + units,
        )

    def step(self, seconds: float, units: float) -> Samples:
        if seconds < 0 or units <= 0:
            return self
        return _replace(
            self, step_seconds=self.step_seconds + seconds, step_units=self.step_units + units
        )

    def end(self, seconds: float) -> Samples:
        if seconds < 0:
            return self
        return _replace(self, ends=self.ends + 1, end_seconds=self.end_seconds + seconds)

    @property
    def measured(self) -> bool:
        return self.firsts > 0

    def to_dict(self) -> dict[str, float]:
        return {
            "firsts": self.firsts,
            "first_seconds": self.first_seconds,
            "first_units": self.first_units,
            "step_seconds": self.step_seconds,
            "step_units": self.step_units,
            "ends": self.ends,
            "end_seconds": self.end_seconds,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Samples:
        if not isinstance(raw, Mapping):
            return cls()
        try:
            return cls(
                firsts=int(raw.get("firsts", 0)),
                first_seconds=float(raw.get("first_seconds", 0.0)),
                first_units=float(raw.get("first_units", 0.0)),
                step_seconds=float(raw.get("step_seconds", 0.0)),
                step_units=float(raw.get("step_units", 0.0)),
                ends=int(raw.get("ends", 0)),
                end_seconds=float(raw.get("end_seconds", 0.0)),
            )
        except (TypeError, ValueError):
            return cls()


def _replace(s: Samples, **kw: float) -> Samples:
    values = s.to_dict()
    values.update(kw)
    return Samples(
        firsts=int(values["firsts"]),
        first_seconds=values["first_seconds"],
        first_units=values["first_units"],
        step_seconds=values["step_seconds"],
        step_units=values["step_units"],
        ends=int(values["ends"]),
        end_seconds=values["end_seconds"],
    )


@dataclass(frozen=True)
class Costs:
    """Seconds: a run's start-up, one resource unit (at the study's subset), a run's tear-down."""

    startup: float
    per_unit: float
    teardown: float

    def run(self, units: float) -> float:
        """One run that trains ``units``."""
        return self.startup + units * self.per_unit + self.teardown

    def to_dict(self) -> dict[str, float]:
        return {"startup": self.startup, "per_unit": self.per_unit, "teardown": self.teardown}


def costs(samples: Samples) -> Costs | None:
    """The costs the samples say; None before the first counted report of any run."""
    if not samples.measured:
        return None
    if samples.step_units > 0:
        per_unit = samples.step_seconds / samples.step_units
        startup = max(
            0.0, (samples.first_seconds - per_unit * samples.first_units) / samples.firsts
        )
    else:
        # One report per run so far: start-up and units cannot be told apart yet; all of it is
        # counted per unit, which overestimates a full training (the safe side).
        per_unit = samples.first_seconds / samples.first_units
        startup = 0.0
    teardown = samples.end_seconds / samples.ends if samples.ends else 0.0
    return Costs(startup=startup, per_unit=per_unit, teardown=teardown)


def full_training(c: Costs, full_resource: float, subset_ratio: float = 1.0) -> float:
    """Seconds of one training to ``full_resource`` on the whole dataset, in one run."""
    return c.startup + full_resource * c.per_unit / max(subset_ratio, 1e-9) + c.teardown


def work(shape: Shape, n: int) -> tuple[float, int]:
    """Resource units trained and runs started by ``n`` trials when every rung fills: each rung
    sees the quota of the rung below (the stopping type's top 1/eta, or promotion's, at least one
    once the study may start no trial), the trials split between brackets as the scheduler
    splits them. Without rungs every trial trains to max_resource."""
    per_trial = trial_work(shape, n)
    return float(sum(u for u, _ in per_trial)), sum(r for _, r in per_trial)


def trial_work(shape: Shape, n: int) -> list[tuple[float, int]]:
    """Each of ``n`` trials' resource units and runs, in start order, when every rung fills as
    :func:`work` counts it: within a bracket the earlier trials are the ones that go on (the
    first always does; later ones meet a fuller rung)."""
    if n <= 0:
        return []
    if not shape.rungs or not shape.levels:
        return [(shape.max_resource, 1)] * n
    levels = shape.levels
    eta = shape.reduction_factor
    nb = max(1, min(shape.brackets, len(levels) + 1))
    s_max = len(levels)
    weights = [(s_max + 1) / (s_max - b + 1) * eta ** (s_max - b) for b in range(nb)]
    counts = [0] * nb
    order: list[tuple[int, int]] = []  # (bracket, index within it), in start order
    for _ in range(n):
        b = 0 if nb == 1 else pick_bracket(counts, weights)
        order.append((b, counts[b]))
        counts[b] += 1
    reach: list[list[tuple[float, int]]] = []  # per bracket: (level, trials reaching it)
    for b, count in enumerate(counts):
        seen = count
        rows: list[tuple[float, int]] = []
        for k, level in enumerate([*levels[b:], shape.max_resource]):
            if k > 0:
                seen = (
                    continue_quota(seen, eta)
                    if shape.stopping
                    else promotion_quota(seen, eta, final=True)
                )
            rows.append((level, seen))
        reach.append(rows)
    out: list[tuple[float, int]] = []
    for b, i in order:
        reached = [level for level, seen in reach[b] if i < seen]
        k = len(reached)
        out.append((reached[-1] if reached else reach[b][0][0], 1 if shape.stopping else k))
    return out


def wall_seconds(shape: Shape, c: Costs, n: int, concurrency: int) -> float:
    """The wall time ``n`` trials take on ``concurrency`` slots: each started, in order, on the
    slot that is free first, and running its start-up, its units and its end (once per run)."""
    free = [0.0] * max(1, concurrency)
    heapq.heapify(free)
    end = 0.0
    for units, runs in trial_work(shape, n):
        start = heapq.heappop(free)
        done = start + units * c.per_unit + runs * (c.startup + c.teardown)
        heapq.heappush(free, done)
        end = max(end, done)
    return end


def trials_for(shape: Shape, c: Costs, seconds: float, concurrency: int) -> int:
    """The most trials whose work fits ``seconds`` of wall time (at least one)."""
    lo, hi = 1, 1
    while hi < MAX_TRIALS and wall_seconds(shape, c, hi, concurrency) <= seconds:
        lo, hi = hi, hi * 2
    hi = min(hi, MAX_TRIALS)
    if wall_seconds(shape, c, hi, concurrency) <= seconds:
        return hi
    # wall_seconds grows with n (all but a little, where a rung's quota steps): the largest n in
    # [lo, hi) that fits, by bisection.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if wall_seconds(shape, c, mid, concurrency) <= seconds:
            lo = mid
        else:
            hi = mid
    return lo


def min_trials(shape: Shape) -> int:
    """The fewest trials that fill the first bracket's rungs up to the top (hpopt's minimum for a
    bracket): eta to the number of rungs."""
    if not shape.rungs:
        return 1
    return max(1, math.ceil(shape.reduction_factor ** len(shape.levels) - 1e-9))


def subset_ratio(shape: Shape, time_ratio: float, full_resource: float, concurrency: int) -> float:
    """The share of the dataset a trial trains on, picked before anything is measured: 1 when
    the budget (time_ratio full trainings on each of ``concurrency`` slots, in resource units)
    holds the smallest full bracket (:func:`min_trials`) at full size; else the share that makes
    it fit, rounded up to a hundredth, never below :data:`MIN_SUBSET_RATIO`. Start-up costs are
    not known yet and not counted."""
    units, _ = work(shape, min_trials(shape))
    available = time_ratio * full_resource * max(1, concurrency)
    if units <= 0 or available >= units:
        return 1.0
    ratio = math.ceil(available / units * 100 - 1e-9) / 100
    return max(MIN_SUBSET_RATIO, min(1.0, ratio))


@dataclass(frozen=True)
class Plan:
    """The estimate and what it derives. ``costs`` None: nothing measured yet (no limit set)."""

    time_ratio: float
    full_resource: float
    subset_ratio: float
    concurrency: int
    costs: Costs | None = None
    full_training: float | None = None  # seconds
    budget: float | None = None  # seconds of wall time: time_ratio x full_training
    max_trials: int | None = None  # derived (None: the user's, or not yet known)
    expected_seconds: float | None = None  # what the derived trials take, by the model

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_ratio": self.time_ratio,
            "full_resource": self.full_resource,
            "subset_ratio": self.subset_ratio,
            "concurrency": self.concurrency,
            "costs": None if self.costs is None else self.costs.to_dict(),
            "full_training": self.full_training,
            "budget": self.budget,
            "max_trials": self.max_trials,
            "expected_seconds": self.expected_seconds,
        }


def plan(
    shape: Shape,
    samples: Samples,
    *,
    time_ratio: float,
    full_resource: float,
    subset: float,
    concurrency: int,
    fixed_trials: int | None = None,
    started: int = 0,
) -> Plan:
    """The study's budget from what was measured so far.

    ``fixed_trials``: the user's max_trials (then none is derived). ``started``: trials already
    made; a derived max_trials is never below it (the least a running study can have)."""
    base = Plan(time_ratio, full_resource, subset, max(1, concurrency))
    c = costs(samples)
    if c is None:
        return base
    full = full_training(c, full_resource, subset)
    budget = time_ratio * full
    if fixed_trials is not None:
        n = fixed_trials
        derived: int | None = None
    else:
        n = max(trials_for(shape, c, budget, concurrency), started, 1)
        derived = n
    return Plan(
        time_ratio,
        full_resource,
        subset,
        max(1, concurrency),
        costs=c,
        full_training=full,
        budget=budget,
        max_trials=derived,
        expected_seconds=wall_seconds(shape, c, n, concurrency),
    )


def moved(old: Plan | None, new: Plan) -> bool:
    """Whether ``new`` is worth saying over ``old``: the first estimate, another max_trials, or a
    budget more than :data:`REVISE_SHARE` away."""
    if new.budget is None:
        return False
    if old is None or old.budget is None:
        return True
    if old.max_trials != new.max_trials:
        return True
    return abs(new.budget - old.budget) > REVISE_SHARE * old.budget
