from __future__ import annotations

import math

from hpod.core import limits as lim
from hpod.core.objective import Objective, ObjectiveMode
from hpod.core.spec import LimitsSpec, SchedulerSpec, SchedulerType
from hpod.core.states import TrialState


def test_which_limit_is_hit() -> None:
    limits = LimitsSpec(optimization_time=10.0, compute_time=30.0, max_trials=4)
    assert lim.limit_hit(limits, lim.Clocks(9.9, 29.0, 4)) is None
    hit = lim.limit_hit(limits, lim.Clocks(10.0, 0.0, 0))
    assert hit is not None
    assert hit.reason == "optimization_time limit of 10s reached"
    hit = lim.limit_hit(limits, lim.Clocks(1.0, 30.0, 0))
    assert hit is not None
    assert hit.limit == "compute_time"
    assert lim.max_trials_reason(limits, lim.Clocks(trials=4)) == "max_trials limit of 4 reached"
    assert lim.max_trials_reason(LimitsSpec(), lim.Clocks(trials=4)) is None


def test_shares_used() -> None:
    u = lim.usage(LimitsSpec(optimization_time=10.0, max_trials=8), lim.Clocks(2.5, 7.0, 2))
    assert u == {
        "optimization_time": {"limit": 10.0, "used": 2.5, "share": 0.25},
        "max_trials": {"limit": 8.0, "used": 2.0, "share": 0.25},
    }


def test_seconds_to_the_deadline_follow_the_devices_running() -> None:
    limits = LimitsSpec(compute_time=100.0)
    assert lim.seconds_to_limit(limits, lim.Clocks(compute=60.0), 0) == math.inf
    assert lim.seconds_to_limit(limits, lim.Clocks(compute=60.0), 4) == 10.0
    both = LimitsSpec(optimization_time=5.0, compute_time=100.0)
    assert lim.seconds_to_limit(both, lim.Clocks(elapsed=1.0, compute=60.0), 4) == 4.0
    assert lim.time_left_for(limits, lim.Clocks(compute=60.0), 3, 1) == 10.0


def test_the_next_rung_must_fit_before_the_deadline() -> None:
    pace = lim.Pace().add(2.0, 1.0).add(4.0, 2.0)  # 2 s per unit
    assert pace.per_unit == 2.0
    assert lim.could_finish(pace, 3.0, 6.0)
    assert not lim.could_finish(pace, 3.0, 5.9)
    assert lim.could_finish(lim.Pace(), 100.0, 0.1)  # nothing measured yet: try
    assert not lim.could_finish(lim.Pace(), 1.0, 0.0)
    assert lim.Pace().add(1.0, 0.0) == lim.Pace()


def test_first_rung_span() -> None:
    assert lim.first_rung_span(SchedulerSpec(max_resource=9)) == 9.0
    assert lim.first_rung_span(SchedulerSpec(max_resource=27, min_resource=3)) == 27.0
    asha = SchedulerSpec(type=SchedulerType.ASHA, max_resource=27, min_resource=3)
    assert lim.first_rung_span(asha) == 3.0


def test_checkpoints_outside_the_top_k_go_never_paused_nor_best() -> None:
    obj = Objective("loss", ObjectiveMode.MIN, "epoch")
    done, paused, failed = TrialState.COMPLETED, TrialState.PAUSED, TrialState.FAILED
    rows = [
        (0, done, 0.5),
        (1, done, 0.1),  # best
        (2, paused, 0.9),  # may resume: kept
        (3, done, 0.3),
        (4, failed, None),
        (5, TrialState.RUNNING, 0.05),
    ]
    assert sorted(lim.checkpoints_to_delete(obj, rows, 2)) == [0, 3, 4]
    # k = 0 keeps only the best, here the running trial 5
    assert sorted(lim.checkpoints_to_delete(obj, rows, 0)) == [0, 1, 3, 4]
    assert 1 not in lim.checkpoints_to_delete(obj, rows[:2], 0)  # the best stays even at k=0
