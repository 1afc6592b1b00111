"""The rung and median schedulers' indexes decide exactly as the walk over every trial it replaced.

Two studies of the same spec are driven by the same random history (launches at free slots,
reports in and out of order with NaNs and ties, forced answers, failed starts, exits, shutdowns,
retracted reports, restores from the records): one with the indexed scheduler, one whose
scheduler is hidden behind a wrapper that keeps no index, so it walks the trials as before. Every
launch and every answer must be the same, and so the records."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpod.core.plans import Plan, Scheduler, StudyView, TrialView
from hpod.core.rungs import bracket_levels, max_brackets, promotion_quota, rung_levels
from hpod.core.spec import SchedulerType, StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import Study, make_scheduler, make_searcher

SPEC = """
name = "idx"
command = ["true"]
[objective]
metric = "loss"
mode = "{mode}"
resource = "step"
[space]
x = {{ param_type = "uniform", range = [0.0, 1.0] }}
[scheduler]
{scheduler}
[limits]
max_trials = {max_trials}
"""

SCHEDULERS = {
    "asha": 'type = "asha"\nmin_resource = 1\nmax_resource = 27\nreduction_factor = 3',
    "asha_stop": (
        'type = "asha"\nrung_type = "stopping"\nmin_resource = 1\nmax_resource = 27\n'
        "reduction_factor = 3"
    ),
    "hyperband": (
        'type = "hyperband"\nbrackets = 3\nmin_resource = 1\nmax_resource = 27\n'
        "reduction_factor = 3"
    ),
    "asha_global": 'type = "asha"\nmin_resource = 1\nmax_resource = 9\nreduction_factor = 2',
    "median": 'type = "median"\nmax_resource = 27\ngrace_period = 2\nmin_trials = 3',
}


class Walk:
    """The scheduler without its index: every decision walks the trials (the old code path)."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        return self.inner.on_report(study, trial, resource)

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        return self.inner.next(study, can_start_new=can_start_new)


def make(kind: str, seed: int) -> tuple[StudySpec, Study, Study]:
    mode = "max" if seed % 3 == 0 else "min"
    if kind == "asha_global":
        mode = "min_global" if seed % 2 else "max_global"
    text = SPEC.format(mode=mode, scheduler=SCHEDULERS[kind], max_trials=40 + seed % 30)
    spec = StudySpec.from_toml(text, base_dir=Path("/tmp"))
    indexed = Study.new(spec)
    walking = Study(spec, make_searcher(spec), Walk(make_scheduler(spec)))
    return spec, indexed, walking


def value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.05:
        return math.nan
    if r < 0.15:
        return 0.5  # ties
    return round(rng.random(), 2)


def drive(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    spec, a, b = make(kind, seed)
    now = 0.0
    steps = 0
    for _ in range(600):
        now += 1.0
        running = a.running
        assert running == b.running
        r = rng.random()
        if r < 0.25 or not running:
            la, lb = a.next_launch(now), b.next_launch(now)
            assert la == lb
            if la is None and not running:
                if a.finished:
                    break
                continue
            if la is not None and rng.random() < 0.03:
                a.on_start_failed(la.trial_id, "boom")
                b.on_start_failed(lb.trial_id, "boom")  # type: ignore[union-attr]
            continue
        tid = rng.choice(running)
        rec = a.record(tid)
        last = max((lv for lv, _ in rec.curve), default=rec.resume_from)
        r = rng.random()
        if r < 0.04:
            code = rng.choice([0, 1])
            a.on_exit(tid, code, now)
            b.on_exit(tid, code, now)
            continue
        if r < 0.06:
            a.on_interrupted(tid)
            b.on_interrupted(tid)
            continue
        if r < 0.10 and last > 1:
            step = float(rng.randint(1, int(last)))  # out of order, or again
        else:
            step = last + rng.choice([1, 1, 1, 2, 5])
        metrics = {"step": step, "loss": value(rng)}
        force = Decision.PAUSE if rng.random() < 0.02 else None
        oa = a.on_report(tid, metrics, now, force=force)
        ob = b.on_report(tid, metrics, now, force=force)
        steps += 1
        assert (oa.decision, oa.resource, oa.counted) == (ob.decision, ob.resource, ob.counted)
        if rng.random() < 0.03:
            a.retract_report(tid, oa)
            b.retract_report(tid, ob)
        elif oa.decision is not Decision.CONTINUE:
            a.on_exit(tid, 0, now)
            b.on_exit(tid, 0, now)
        if rng.random() < 0.02:
            # A restart: the indexed study rebuilt from its records decides the same.
            live = set(a.running)
            b = _restore_walking(spec, a)
            a = Study.restore(spec, a.records(), live=live, state=StudyState.RUNNING)
        assert a.records() == b.records()
        assert a.counts() == b.counts()
        if steps % 7 == 0:
            assert a.rung_occupancy() == occupancy_walked(spec, a.trials)
    assert steps > 20


def occupancy_walked(spec: StudySpec, trials: Sequence[TrialView]) -> list[dict[str, Any]]:
    """hpod.core.preview.occupancy written out rung by rung, each a walk over the trials."""
    s = spec.scheduler
    if s.type not in (SchedulerType.ASHA, SchedulerType.HYPERBAND):
        return []
    levels = rung_levels(s)
    n = min(s.brackets, max_brackets(s)) if s.type is SchedulerType.HYPERBAND else 1
    out: list[dict[str, Any]] = []
    for b in range(n):
        mine = [t for t in trials if t.bracket == b]
        blevels = [*bracket_levels(levels, b), float(s.max_resource)]
        for k, level in enumerate(blevels):
            at = [t for t in mine if t.curve and max(t.curve) >= level]
            below = blevels[k - 1] if k else 0.0
            running = [
                t
                for t in mine
                if t.state is TrialState.RUNNING
                and t.max_resource >= level
                and below <= max(t.curve, default=0.0) < level
            ]
            nxt = blevels[k + 1] if k + 1 < len(blevels) else None
            out.append(
                {
                    "bracket": b,
                    "rung": k,
                    "level": int(level) if level == int(level) else level,
                    "top": nxt is None,
                    "reached": len(at),
                    "running": len(running),
                    "paused": sum(
                        t.state is TrialState.PAUSED and t.max_resource <= level for t in at
                    ),
                    "promoted": sum(nxt is not None and t.max_resource >= nxt for t in at),
                    "quota": None if nxt is None else promotion_quota(len(at), s.reduction_factor),
                }
            )
    return out


def _restore_walking(spec: StudySpec, like: Study) -> Study:
    """A walking study restored from ``like``'s records, as Study.restore would build it."""
    restored = Study.restore(spec, like.records(), live=set(like.running))
    walking = Study(spec, make_searcher(spec), Walk(make_scheduler(spec)))
    for name in ("_trials", "_in", "_curved", "_exhausted", "state", "end_reason"):
        setattr(walking, name, getattr(restored, name))
    return walking


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_index_decides_as_the_walk(kind: str) -> None:
    for seed in range(25):
        drive(kind, seed)
