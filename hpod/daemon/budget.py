"""The time budget of a running study (docs/time-budget.md): what its runs measured, the latest
estimate, and the limits it sets. The model is :mod:`hpod.core.budget`; this holds its inputs
between reports, keeps them across restarts (``studies.budget``, JSON) and lays what it derives
over the study's spec. The trials service feeds it (``hpod.daemon.trials``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from hpod.core import budget as bud
from hpod.core.durations import format_duration
from hpod.core.spec import SUBSET_KEY, StudySpec, budget_shape

# The keys a time budget sets on the study's limits, unless the spec or a `set` gave them.
BUDGET_KEYS = ("optimization_time", "max_trials")
# Reports come faster than an estimate needs making (and sizing a large study costs a few ms):
# once a budget is set, a report re-estimates it at most this often; an exit always does.
REVISE_EVERY = 1.0


@dataclass
class BudgetState:
    """One study's budget: the samples so far, the latest plan, and the last one applied."""

    shape: bud.Shape
    time_ratio: float
    full_resource: float
    subset: float
    concurrency: int
    user_trials: int | None  # the spec's own max_trials (then only the time is derived)
    samples: bud.Samples = dataclasses.field(default_factory=bud.Samples)
    plan: bud.Plan | None = None  # the latest estimate (every counted report makes one)
    said: bud.Plan | None = None  # the latest applied, stored and told (budget_revised)
    revisions: int = 0
    estimated_at: float = -math.inf  # monotonic time of the latest estimate

    @classmethod
    def of(cls, spec: StudySpec, concurrency: int, stored: str | None = None) -> BudgetState | None:
        """A study's budget, from its stored JSON when it has one; None without time_ratio."""
        limits = spec.limits
        if limits.time_ratio is None or limits.full_resource is None:
            return None
        param = spec.space[SUBSET_KEY] if SUBSET_KEY in spec.space.names else None
        # A fixed subset ratio (one choice) is what a full training's time is scaled by; a
        # searched one varies by trial, and the whole dataset is the safe assumption.
        subset = 1.0
        if param is not None and len(param.choices) == 1:
            value = param.choices[0]
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
                subset = float(value)
        state = cls(
            shape=budget_shape(spec.scheduler),
            time_ratio=limits.time_ratio,
            full_resource=float(limits.full_resource),
            subset=subset,
            concurrency=max(1, concurrency),
            user_trials=limits.max_trials,
        )
        if stored:
            try:
                raw = json.loads(stored)
            except ValueError:
                raw = {}
            if isinstance(raw, dict):
                state.samples = bud.Samples.from_dict(raw.get("samples"))
                revisions = raw.get("revisions", 0)
                state.revisions = revisions if isinstance(revisions, int) else 0
        return state

    # -- what the runs measured ----------------------------------------------------------------

    def first(self, seconds: float, units: float) -> None:
        self.samples = self.samples.first(seconds, units)

    def step(self, seconds: float, units: float) -> None:
        self.samples = self.samples.step(seconds, units)

    def end(self, seconds: float) -> None:
        self.samples = self.samples.end(seconds)

    # -- the estimate --------------------------------------------------------------------------

    def revise(
        self, started: int, fixed: Collection[str] = (), *, now: float, force: bool = False
    ) -> bool:
        """A new estimate from the samples; True when it moved enough to be applied and said
        (:func:`hpod.core.budget.moved`). ``fixed``: the limits a `set` gave since. Within
        :data:`REVISE_EVERY` of the last one (monotonic ``now``), not made unless ``force``."""
        if not force and self.said is not None and now - self.estimated_at < REVISE_EVERY:
            return False
        self.estimated_at = now
        self.plan = self._estimate(started, fixed)
        if not bud.moved(self.said, self.plan):
            return False
        self.said = self.plan
        self.revisions += 1
        return True

    def resume(self, started: int, fixed: Collection[str] = ()) -> None:
        """After a restart: the estimate from the stored samples, applied as it was (not a new
        revision)."""
        self.plan = self._estimate(started, fixed)
        if self.plan.budget is not None:
            self.said = self.plan

    def _estimate(self, started: int, fixed: Collection[str]) -> bud.Plan:
        user_trials = self.user_trials if "max_trials" not in fixed else -1
        return bud.plan(
            self.shape,
            self.samples,
            time_ratio=self.time_ratio,
            full_resource=self.full_resource,
            subset=self.subset,
            concurrency=self.concurrency,
            fixed_trials=None if user_trials is None else max(user_trials, 1),
            started=started,
        )

    def apply(self, spec: StudySpec, fixed: Collection[str] = ()) -> StudySpec:
        """``spec`` with the applied plan's limits, leaving alone what the spec or a `set`
        fixed."""
        plan = self.said
        if plan is None or plan.budget is None:
            return spec
        values: dict[str, Any] = {}
        if "optimization_time" not in fixed:
            values["optimization_time"] = limit_of(plan)
        if plan.max_trials is not None and "max_trials" not in fixed:
            values["max_trials"] = plan.max_trials
        if not values:
            return spec
        return dataclasses.replace(spec, limits=dataclasses.replace(spec.limits, **values))

    def to_json(self) -> str:
        return json.dumps(
            {
                "samples": self.samples.to_dict(),
                "plan": None if self.said is None else self.said.to_dict(),
                "revisions": self.revisions,
            },
            sort_keys=True,
        )

    def event(self) -> dict[str, Any]:
        """The data of a ``budget_revised`` event: the applied estimate."""
        plan = self.said
        assert plan is not None
        return {
            "revision": self.revisions,
            "full_training": _round(plan.full_training),
            "budget": _round(plan.budget),
            "max_trials": plan.max_trials,
            "costs": None if plan.costs is None else _costs(plan.costs),
        }

    def view(self, elapsed: float) -> dict[str, Any]:
        """What ``show`` says of it: the latest estimate, what it rests on, how often it moved."""
        plan = self.plan or self.said
        out: dict[str, Any] = {
            "time_ratio": self.time_ratio,
            "full_resource": _num(self.full_resource),
            "subset_ratio": self.subset,
            "concurrency": self.concurrency,
            "revisions": self.revisions,
            "measured": {
                "runs": self.samples.firsts,
                "units": _round(self.samples.first_units + self.samples.step_units),
                "ends": self.samples.ends,
            },
            "elapsed": _round(elapsed),
        }
        if plan is None or plan.budget is None:
            out.update(
                estimate=None,
                full_training=None,
                budget=None,
                max_trials=None,
                note=(
                    "nothing measured yet: the first trials run without a time limit or a trial "
                    "count; their reports measure start-up, time per "
                    "unit and end time, and then the budget is set"
                ),
            )
            return out
        out.update(
            estimate=None if plan.costs is None else _costs(plan.costs),
            full_training=_round(plan.full_training),
            budget=_round(plan.budget),
            max_trials=plan.max_trials if plan.max_trials is not None else self.user_trials,
            expected_seconds=_round(plan.expected_seconds),
            applied=None
            if self.said is None
            else {
                "budget": _round(self.said.budget),
                "optimization_time": _round(limit_of(self.said)),
                "max_trials": self.said.max_trials,
            },
            note=(
                f"{self.time_ratio:g} x one full training of {plan.full_training or 0.0:.3g}s "
                f"= {format_duration(plan.budget)}"
            ),
        )
        return out


def limit_of(plan: bud.Plan) -> float:
    """The optimization_time that ends a study at its budget: the budget less half an end time.
    The study ends once the runs stopped at the limit have exited: one that was training takes
    its end time to save and exit, one still starting up (SIGTERM before its handler is set)
    goes at once; half an end time is the middle of the two."""
    assert plan.budget is not None
    end = plan.costs.teardown if plan.costs is not None else 0.0
    return max(plan.budget - end / 2, plan.budget / 2)


def fixed_keys(changes: Collection[dict[str, Any]]) -> set[str]:
    """The budget's keys a `set` gave (hpod.core.changes entries): the user's from then on."""
    return {str(c.get("key")) for c in changes if c.get("key") in BUDGET_KEYS}


def _costs(c: bud.Costs) -> dict[str, float | None]:
    return {
        "startup": _round(c.startup),
        "per_unit": _round(c.per_unit),
        "teardown": _round(c.teardown),
    }


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 4)


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
