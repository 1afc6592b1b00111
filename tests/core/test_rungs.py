"""The rung schedulers driven with hand-made report sequences: ASHA (promotion and stopping),
Hyperband, median stopping, in min and max mode, and a restored study deciding the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.core.preview import preview
from hpod.core.rungs import (
    bracket_weights,
    continue_quota,
    default_levels,
    pick_bracket,
    promotion_quota,
)
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, TrialState
from hpod.core.study import Launch, Study
from hpod.errors import SpecError

SPEC = """
name = "r"
command = ["python", "trial.py"]
[objective]
metric = "loss"
mode = "{mode}"
resource = "step"
[space]
x = {{ param_type = "choice", range = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] }}
[scheduler]
{scheduler}
[searcher]
type = "grid"
partial_grid = true
[limits]
max_trials = {max_trials}
"""

ASHA = 'type = "asha"\nmin_resource = 1\nmax_resource = 9\nreduction_factor = 3'


def spec(scheduler: str = ASHA, mode: str = "min", max_trials: int = 12) -> StudySpec:
    text = SPEC.format(mode=mode, scheduler=scheduler, max_trials=max_trials)
    return StudySpec.from_toml(text, base_dir=Path("/tmp"))


def launch(study: Study) -> Launch:
    got = study.next_launch(0.0)
    assert got is not None
    return got


def run(study: Study, tid: int, values: dict[int, float]) -> list[Decision]:
    """Report ``values`` by step; stop at the first non-CONTINUE and exit like a trial would."""
    out = []
    for step, v in values.items():
        d = study.on_report(tid, {"step": step, "loss": v}, 0.0).decision
        out.append(d)
        if d is not Decision.CONTINUE:
            break
    else:
        return out
    study.on_exit(tid, 0, 0.0)
    return out


def sign(mode: str) -> float:
    return 1.0 if mode.startswith("min") else -1.0


# -- rung arithmetic --------------------------------------------------------------------------


def test_levels_and_quotas() -> None:
    assert default_levels(1, 81, 3) == (1, 3, 9, 27)
    assert default_levels(1, 9, 3) == (1, 3)
    assert default_levels(2, 100, 4) == (2, 8, 32)
    # A rung of n promotes floor(n / eta); once final, at least one.
    assert [promotion_quota(n, 3) for n in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [promotion_quota(n, 3, final=True) for n in range(5)] == [0, 1, 1, 1, 1]
    assert [promotion_quota(n, 2.5) for n in (4, 5, 10)] == [1, 2, 4]
    # Stopping: the top 1/eta of those seen go on, floor(n / eta), and at least the best one
    # (the rule of Li et al. 2020 and of Optuna's SuccessiveHalvingPruner; it was ceil(n / eta)).
    assert [continue_quota(n, 3) for n in range(0, 8)] == [0, 1, 1, 1, 1, 1, 2, 2]


def test_rung_levels_from_spec_list() -> None:
    s = spec('type = "asha"\nmin_resource = 1\nmax_resource = 10\nrung_levels = [2, 5, 10]')
    study = Study.new(s)
    assert launch(study).max_resource == 2


# -- ASHA, promotion type -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["min", "max"])
def test_asha_promotion_pauses_promotes_and_resumes(mode: str) -> None:
    k = sign(mode)
    study = Study.new(spec(mode=mode))
    first = [launch(study) for _ in range(3)]
    assert [(lv.trial_id, lv.max_resource, lv.fresh) for lv in first] == [
        (0, 1, True),
        (1, 1, True),
        (2, 1, True),
    ]
    assert run(study, 0, {1: k * 0.5}) == [Decision.PAUSE]
    assert study.record(0).state is TrialState.PAUSED
    # One trial in the rung: floor(1/3) = 0 promotions, so a new configuration starts.
    assert launch(study).trial_id == 3
    assert run(study, 1, {1: k * 0.2}) == [Decision.PAUSE]
    assert run(study, 2, {1: k * 0.9}) == [Decision.PAUSE]
    # Three in the rung: the best one (trial 1) is promoted to the next rung, from its checkpoint.
    promo = launch(study)
    assert (promo.trial_id, promo.resume_from, promo.max_resource, promo.fresh) == (1, 1, 3, False)
    # A trial that started over re-reports step 1: not counted twice.
    again = study.on_report(1, {"step": 1, "loss": 99.0}, 0.0)
    assert (again.decision, again.counted) == (Decision.CONTINUE, False)
    assert run(study, 1, {2: k * 0.15, 3: k * 0.1}) == [Decision.CONTINUE, Decision.PAUSE]
    assert study.record(1).curve == ((1, k * 0.2), (2, k * 0.15), (3, k * 0.1))
    # Rung 3 holds one trial, rung 1's best is promoted already: a new configuration.
    assert launch(study).trial_id == 4
    assert run(study, 3, {1: k * 0.3}) == [Decision.PAUSE]
    assert run(study, 4, {1: k * 0.4}) == [Decision.PAUSE]
    assert launch(study).trial_id == 5
    assert run(study, 5, {1: k * 0.1}) == [Decision.PAUSE]
    # Six in rung 1: floor(6/3) = 2 promotions; trial 5 (0.1) is the best not yet promoted.
    promo = launch(study)
    assert (promo.trial_id, promo.max_resource) == (5, 3)
    occupancy = study.rung_occupancy()
    assert [
        (r["level"], r["reached"], r["paused"], r["running"], r["promoted"]) for r in occupancy
    ] == [
        (1, 6, 4, 0, 2),
        (3, 1, 1, 1, 0),
        (9, 0, 0, 0, 0),
    ]


def test_asha_promotes_from_the_highest_rung_first_and_finishes_at_the_top() -> None:
    study = Study.new(spec(max_trials=3))
    for _ in range(3):
        launch(study)
    for tid, v in [(0, 0.5), (1, 0.2), (2, 0.9)]:
        assert run(study, tid, {1: v}) == [Decision.PAUSE]
    # max_trials reached: the rungs are final, each promotes at least its best one.
    promo = launch(study)
    assert (promo.trial_id, promo.max_resource) == (1, 3)
    assert run(study, 1, {2: 0.2, 3: 0.2}) == [Decision.CONTINUE, Decision.PAUSE]
    promo = launch(study)
    assert (promo.trial_id, promo.resume_from, promo.max_resource) == (1, 3, 9)
    decisions = run(study, 1, {s: 0.1 for s in range(4, 10)})
    assert decisions == [Decision.CONTINUE] * 5 + [Decision.STOP]
    assert study.record(1).state is TrialState.COMPLETED
    assert study.next_launch(0.0) is None
    assert study.finished
    best = study.best()
    assert best is not None
    assert best.trial_id == 1
    assert best.resource == 9


def test_a_report_past_the_rung_pauses_and_never_crashes() -> None:
    study = Study.new(spec(max_trials=3))
    for _ in range(3):
        launch(study)
    # Trial 0 skips its rung (1) and reports at 2: paused there, resumed from 2.
    out = study.on_report(0, {"step": 2, "loss": 0.1}, 0.0)
    assert out.decision is Decision.PAUSE
    late = study.on_report(0, {"step": 3, "loss": 0.1}, 0.0)
    assert (late.decision, late.counted) == (Decision.PAUSE, False)
    study.on_exit(0, 0, 0.0)
    run(study, 1, {1: 0.5})
    run(study, 2, {1: 0.6})
    promo = launch(study)
    assert (promo.trial_id, promo.resume_from, promo.max_resource) == (0, 2, 3)


def test_nan_ranks_worst_at_a_rung() -> None:
    study = Study.new(spec(mode="max"))
    for _ in range(3):
        launch(study)
    run(study, 0, {1: float("nan")})
    run(study, 1, {1: -5.0})
    run(study, 2, {1: -9.0})
    assert launch(study).trial_id == 1


def test_global_mode_ranks_by_the_best_value_up_to_the_rung() -> None:
    levels = 'type = "asha"\nmin_resource = 2\nmax_resource = 18\nreduction_factor = 3'
    for mode, winner in [("min", 1), ("min_global", 0)]:
        study = Study.new(spec(levels, mode=mode))
        for _ in range(3):
            launch(study)
        run(study, 0, {1: 0.1, 2: 0.6})  # best 0.1, last 0.6
        run(study, 1, {1: 0.5, 2: 0.5})
        run(study, 2, {1: 0.9, 2: 0.9})
        assert launch(study).trial_id == winner, mode


# -- ASHA, stopping type ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["min", "max"])
def test_asha_stopping_continues_the_top_and_stops_the_rest(mode: str) -> None:
    k = sign(mode)
    study = Study.new(spec(ASHA + '\nrung_type = "stopping"', mode=mode))
    launches = [launch(study) for _ in range(5)]
    assert all(lv.max_resource == 9 for lv in launches)
    step = lambda tid, s, v: study.on_report(tid, {"step": s, "loss": k * v}, 0.0).decision  # noqa: E731
    assert step(0, 1, 0.5) is Decision.CONTINUE  # first at the rung: it goes on
    assert step(1, 1, 0.2) is Decision.CONTINUE  # best of 2: max(1, floor(2/3)) = 1
    assert step(2, 1, 0.9) is Decision.STOP  # third of 3
    assert step(3, 1, 0.3) is Decision.STOP  # second of 4: floor(4/3) = 1
    assert step(4, 1, 0.1) is Decision.CONTINUE  # best of 5
    assert step(0, 2, 0.5) is Decision.CONTINUE  # between rungs
    assert step(0, 3, 0.5) is Decision.CONTINUE  # first at rung 3
    assert step(1, 3, 0.6) is Decision.STOP  # worse than trial 0 at rung 3 (max(1, 0) = 1)
    study.on_exit(2, 0, 0.0)
    assert study.record(2).state is TrialState.STOPPED
    # A report that jumps over a rung is still judged at it.
    assert step(4, 4, 0.99) is Decision.STOP


# -- Hyperband ------------------------------------------------------------------------------------


def test_hyperband_brackets_start_at_higher_rungs_in_proportion() -> None:
    weights = bracket_weights(2, 3, 3)
    assert weights == pytest.approx([9.0, 4.5, 3.0])
    counts = [0, 0, 0]
    order = []
    for _ in range(11):
        b = pick_bracket(counts, weights)
        counts[b] += 1
        order.append(b)
    assert counts == [6, 3, 2]
    study = Study.new(spec('type = "hyperband"\nmin_resource = 1\nmax_resource = 9'))
    got = [launch(study) for _ in range(6)]
    first_rung = {0: 1, 1: 3, 2: 9}
    assert [study.record(lv.trial_id).bracket for lv in got] == order[:6]
    assert [lv.max_resource for lv in got] == [first_rung[b] for b in order[:6]]


def test_hyperband_promotes_within_a_bracket() -> None:
    study = Study.new(spec('type = "hyperband"\nmin_resource = 1\nmax_resource = 9', max_trials=12))
    launches = [launch(study) for _ in range(11)]
    by_bracket: dict[int, list[int]] = {}
    for lv in launches:
        by_bracket.setdefault(study.record(lv.trial_id).bracket, []).append(lv.trial_id)
    # Bracket 1 (rung 3): three trials pause there, its best is promoted to 9.
    b1 = by_bracket[1]
    for tid, v in zip(b1, [0.4, 0.1, 0.7], strict=True):
        assert run(study, tid, {1: v, 2: v, 3: v})[-1] is Decision.PAUSE
    promo = launch(study)
    assert (promo.trial_id, promo.resume_from, promo.max_resource) == (b1[1], 3, 9)
    # Bracket 2 starts at max_resource: its trials are plain full runs.
    tid = by_bracket[2][0]
    assert run(study, tid, {s: 0.5 for s in range(1, 10)})[-1] is Decision.STOP


def test_hyperband_brackets_bounded_by_rungs() -> None:
    with pytest.raises(SpecError, match="brackets: 4 is more than the 3 brackets"):
        spec('type = "hyperband"\nmin_resource = 1\nmax_resource = 9\nbrackets = 4')


# -- median stopping --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["min", "max"])
def test_median_stopping(mode: str) -> None:
    k = sign(mode)
    study = Study.new(
        spec('type = "median"\nmax_resource = 4\ngrace_period = 2\nmin_trials = 2', mode=mode)
    )
    for _ in range(4):
        launch(study)
    assert run(study, 0, {s: k * v for s, v in {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.5}.items()})[-1] is (
        Decision.STOP
    )
    assert run(study, 1, {s: k * v for s, v in {1: 1.2, 2: 1.0, 3: 0.8, 4: 0.7}.items()})[-1] is (
        Decision.STOP
    )
    assert study.record(1).state is TrialState.COMPLETED  # ran to max_resource
    step = lambda tid, s, v: study.on_report(tid, {"step": s, "loss": k * v}, 0.0).decision  # noqa: E731
    # Step 1 is inside the grace period, whatever the value.
    assert step(2, 1, 5.0) is Decision.CONTINUE
    # At step 2 the others' running averages are 0.9 and 1.1 (median 1.0); best so far 5.0 loses.
    assert step(2, 2, 5.0) is Decision.STOP
    # Trial 3: best so far 0.95 beats the median 1.0.
    assert step(3, 1, 0.95) is Decision.CONTINUE
    assert step(3, 2, 2.0) is Decision.CONTINUE
    study.on_exit(2, 0, 0.0)
    assert study.record(2).state is TrialState.STOPPED


def test_median_waits_for_min_trials() -> None:
    study = Study.new(spec('type = "median"\nmax_resource = 4\ngrace_period = 1\nmin_trials = 2'))
    launch(study)
    launch(study)
    run(study, 0, {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1})
    assert study.on_report(1, {"step": 1, "loss": 9.0}, 0.0).decision is Decision.CONTINUE


def test_dyhpo_runs_on_the_same_rungs() -> None:
    from hpod.core.dyhpo import DyHPOScheduler

    text = SPEC.format(
        mode="min", scheduler='type = "dyhpo"\nmax_resource = 9', max_trials=3
    ).replace('type = "grid"', 'type = "dyhpo"')
    study = Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))
    sched = study._scheduler
    assert isinstance(sched, DyHPOScheduler)
    assert sched.rungs == (1.0, 3.0, 9.0)


# -- restore -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler",
    [ASHA, 'type = "hyperband"\nmin_resource = 1\nmax_resource = 9'],
)
def test_a_restored_study_decides_the_same(scheduler: str) -> None:
    values = [0.5, 0.2, 0.9, 0.3, 0.4, 0.1, 0.8, 0.6, 0.7, 0.35, 0.25, 0.15]

    def drive(study: Study, n: int) -> list[tuple[int, float, float]]:
        trace = []
        for _ in range(n):
            lv = study.next_launch(0.0)
            if lv is None:
                break
            trace.append((lv.trial_id, lv.resume_from, lv.max_resource))
            v = values[lv.trial_id]
            steps = {s: v / s for s in range(int(lv.resume_from) + 1, int(lv.max_resource) + 1)}
            run(study, lv.trial_id, steps)
        return trace

    a = Study.new(spec(scheduler))
    drive(a, 8)
    b = Study.restore(a.spec, a.records())
    assert drive(a, 30) == drive(b, 30)
    assert a.records() == b.records()


# -- preview ------------------------------------------------------------------------------------


def test_preview_asha() -> None:
    s = spec(
        'type = "asha"\nmin_resource = 1\nmax_resource = 81\nreduction_factor = 3', max_trials=81
    )
    p = preview(s)
    assert p["rung_levels"] == [1, 3, 9, 27]
    (b,) = p["brackets"]
    assert [(r["level"], r["trials"]) for r in b["rungs"]] == [
        (1, 81),
        (3, 27),
        (9, 9),
        (27, 3),
        (81, 1),
    ]
    # 81*1 + 27*2 + 9*6 + 3*18 + 1*54: each unit trained once.
    assert p["budget"] == 81 + 54 + 54 + 54 + 54
    assert p["fifo_budget"] == 81 * 81


def test_preview_hyperband_splits_trials() -> None:
    p = preview(spec('type = "hyperband"\nmin_resource = 1\nmax_resource = 9', max_trials=11))
    assert [b["trials"] for b in p["brackets"]] == [6, 3, 2]
    assert [r["level"] for r in p["brackets"][1]["rungs"]] == [3, 9]
