"""The time budget: its model (hpod.core.budget) and its [limits] keys."""

from __future__ import annotations

import pytest

from hpod.core import budget as bud
from hpod.core.spec import RungType, SchedulerType, StudySpec, budget_shape
from hpod.errors import SpecError

pytestmark = pytest.mark.timeout(30)

BASE = """
name = "b"
command = ["python", "t.py"]
[objective]
metric = "acc"
mode = "max"
[space]
lr = { param_type = "loguniform", range = [1e-3, 0.3] }
"""


def spec(limits: str, extra: str = "") -> StudySpec:
    return StudySpec.from_toml(BASE + extra + "\n[limits]\n" + limits, base_dir="/tmp")


SHAPE = bud.Shape(levels=(1.0, 3.0, 9.0), max_resource=20.0, reduction_factor=3.0)


# -- the spec keys --------------------------------------------------------------------------------


def test_time_ratio_derives_what_the_spec_left_out():
    s = spec("time_ratio = 2\nfull_resource = 20\nmax_concurrent = 2")
    assert s.limits.time_ratio == 2.0
    assert s.limits.full_resource == 20
    assert s.scheduler.type is SchedulerType.ASHA
    assert s.scheduler.max_resource == 20
    assert s.scheduler.rung_type is RungType.STOPPING
    assert "scheduler.type" in s.derived
    assert "scheduler.max_resource" in s.derived
    # 2 x 20 epochs on 2 slots hold the 27 trials of a full bracket: the whole dataset.
    assert "subset_ratio" not in s.space.names
    assert StudySpec.from_mapping(s.to_dict(), base_dir="/tmp") == s


def test_the_spec_s_own_keys_are_kept():
    s = spec(
        "time_ratio = 4\nmax_concurrent = 2",
        '[scheduler]\ntype = "asha"\nmax_resource = 9\nrung_type = "promotion"\n',
    )
    assert s.limits.full_resource == 9  # the scheduler's max_resource stands in
    assert s.scheduler.rung_type is RungType.PROMOTION
    assert "scheduler.rung_type" not in s.derived
    assert "scheduler.max_resource" not in s.derived


def test_a_small_budget_picks_a_subset_ratio():
    s = spec("time_ratio = 1\nfull_resource = 20")
    assert s.space["subset_ratio"].choices == (0.28,)
    assert "space.subset_ratio" in s.derived
    assert s.space.names[-1] == "subset_ratio"
    # One the spec searches (or fixes) is the spec's.
    mine = StudySpec.from_toml(
        BASE
        + 'subset_ratio = { param_type = "choice", range = [0.5] }\n'
        + "[limits]\ntime_ratio = 1\nfull_resource = 20\n",
        base_dir="/tmp",
    )
    assert mine.space["subset_ratio"].choices == (0.5,)
    assert "space.subset_ratio" not in mine.derived


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ("time_ratio = 2", "limits.full_resource: missing"),
        ("time_ratio = 0\nfull_resource = 20", "limits.time_ratio"),
        ("time_ratio = 2\nfull_resource = 0", "limits.full_resource"),
        ("full_resource = 20", "set limits.time_ratio too"),
        ('time_ratio = 2\nfull_resource = 20\noptimization_time = "1h"', "not both"),
    ],
)
def test_bad_budget_keys_are_named(limits, problem):
    with pytest.raises(SpecError) as err:
        spec(limits)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_no_time_ratio_changes_nothing():
    s = spec("max_trials = 3")
    assert s.scheduler.type is SchedulerType.FIFO
    assert s.derived == ()


# -- the model ------------------------------------------------------------------------------------


def test_nothing_measured_gives_no_limit():
    p = bud.plan(SHAPE, bud.Samples(), time_ratio=2, full_resource=20, subset=1.0, concurrency=2)
    assert p.costs is None
    assert p.budget is None
    assert p.max_trials is None


def test_costs_split_start_up_from_the_time_per_unit():
    # Two runs: 3 s to their first epoch (2.5 s start-up + 0.5 s), then 0.5 s per epoch,
    # and 0.2 s from the last report to the exit.
    s = bud.Samples()
    for _ in range(2):
        s = s.first(3.0, 1).step(0.5 * 9, 9).end(0.2)
    c = bud.costs(s)
    assert c is not None
    assert c.per_unit == pytest.approx(0.5)
    assert c.startup == pytest.approx(2.5)
    assert c.teardown == pytest.approx(0.2)
    assert bud.full_training(c, 20) == pytest.approx(2.5 + 10 + 0.2)
    assert bud.full_training(c, 20, 0.5) == pytest.approx(2.5 + 20 + 0.2)


def test_one_report_counts_everything_per_unit():
    c = bud.costs(bud.Samples().first(4.0, 2))
    assert c == bud.Costs(startup=0.0, per_unit=2.0, teardown=0.0)


def test_samples_round_trip_and_ignore_nonsense():
    s = bud.Samples().first(3.0, 1).step(1.0, 2).end(0.5)
    assert bud.Samples.from_dict(s.to_dict()) == s
    assert bud.Samples.from_dict({"firsts": "x"}) == bud.Samples()
    assert bud.Samples.from_dict(None) == bud.Samples()
    assert s.first(-1, 1) == s
    assert s.step(1, 0) == s
    assert s.end(-2) == s


def test_work_counts_rungs_as_the_scheduler_fills_them():
    # Stopping type, 27 trials: 27 to 1, 9 on to 3, 3 on to 9, 1 on to 20; one run each.
    assert bud.work(SHAPE, 27) == (27 * 1 + 9 * 2 + 3 * 6 + 1 * 11, 27)
    promo = bud.Shape((1.0, 3.0, 9.0), 20.0, 3.0, stopping=False)
    assert bud.work(promo, 27) == (27 * 1 + 9 * 2 + 3 * 6 + 1 * 11, 27 + 9 + 3 + 1)
    fifo = bud.Shape((), 20.0, 3.0, rungs=False)
    assert bud.work(fifo, 4) == (80.0, 4)
    assert bud.work(SHAPE, 0) == (0.0, 0)


def test_the_trials_fill_the_budget_and_no_more():
    c = bud.Costs(startup=2.0, per_unit=0.5, teardown=0.0)
    for ratio in (1, 2, 4, 8):
        budget = ratio * bud.full_training(c, 20)
        n = bud.trials_for(SHAPE, c, budget, 2)
        assert bud.wall_seconds(SHAPE, c, n, 2) <= budget
        assert bud.wall_seconds(SHAPE, c, n + 1, 2) > budget
    # More time, more trials.
    counts = [bud.trials_for(SHAPE, c, r * 12.0, 2) for r in (1, 2, 4, 8)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]


def test_plan_derives_the_budget_and_the_trials():
    s = bud.Samples().first(2.5, 1).step(4.5, 9).end(0.0)
    p = bud.plan(SHAPE, s, time_ratio=2, full_resource=20, subset=1.0, concurrency=2)
    assert p.full_training == pytest.approx(2.0 + 20 * 0.5)
    assert p.budget == pytest.approx(2 * p.full_training)
    assert p.max_trials is not None
    assert p.max_trials >= 1
    assert p.expected_seconds is not None
    assert p.expected_seconds <= p.budget
    # The user's max_trials stands: only the time is derived.
    fixed = bud.plan(
        SHAPE, s, time_ratio=2, full_resource=20, subset=1.0, concurrency=2, fixed_trials=3
    )
    assert fixed.max_trials is None
    assert fixed.budget == p.budget
    # Never fewer than the trials already started.
    late = bud.plan(SHAPE, s, time_ratio=2, full_resource=20, subset=1.0, concurrency=2, started=99)
    assert late.max_trials == 99
    assert p.to_dict()["costs"]["per_unit"] == pytest.approx(0.5)


def test_moved_says_the_first_estimate_and_real_changes_only():
    s = bud.Samples().first(2.5, 1).step(4.5, 9)
    p = bud.plan(SHAPE, s, time_ratio=2, full_resource=20, subset=1.0, concurrency=2)
    assert bud.moved(None, p)
    assert not bud.moved(p, p)
    nothing = bud.plan(
        SHAPE, bud.Samples(), time_ratio=2, full_resource=20, subset=1.0, concurrency=2
    )
    assert not bud.moved(p, nothing)
    slower = bud.plan(
        SHAPE, s.step(20.0, 1), time_ratio=2, full_resource=20, subset=1.0, concurrency=2
    )
    assert bud.moved(p, slower)


def test_subset_ratio_and_min_trials():
    assert bud.min_trials(SHAPE) == 27
    assert bud.subset_ratio(SHAPE, 2, 20, 2) == 1.0
    assert bud.subset_ratio(SHAPE, 1, 20, 1) == pytest.approx(0.28)
    assert bud.subset_ratio(SHAPE, 0.01, 20, 1) == bud.MIN_SUBSET_RATIO


def test_budget_shape_of_a_spec():
    s = spec("time_ratio = 2\nfull_resource = 20\nmax_concurrent = 2")
    assert budget_shape(s.scheduler) == SHAPE


def test_trials_run_in_order_on_the_slot_free_first():
    # 4 trials: the first goes on to the top (20 units), the other three stop at rung 1.
    assert bud.trial_work(SHAPE, 4) == [(20.0, 1), (1.0, 1), (1.0, 1), (1.0, 1)]
    promo = bud.Shape((1.0, 3.0, 9.0), 20.0, 3.0, stopping=False)
    assert bud.trial_work(promo, 3)[0] == (20.0, 4)  # a run per rung
    c = bud.Costs(startup=20.0, per_unit=0.5, teardown=5.0)
    # Slot A: trial 0 (35 s), then trial 3 (25.5 s); slot B: trials 1 and 2 (25.5 s each).
    assert bud.wall_seconds(SHAPE, c, 4, 2) == pytest.approx(35 + 25.5)
    assert bud.wall_seconds(SHAPE, c, 1, 4) == pytest.approx(35)
    assert bud.trials_for(SHAPE, c, 2 * bud.full_training(c, 20), 2) == 4
