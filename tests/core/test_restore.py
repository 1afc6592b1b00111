"""A study rebuilt from the store after its daemon was killed ends each running trial's run as the
last answer that run acknowledged says: a PAUSE pauses it (and the scheduler promotes it as it
would a live one), a STOP ends it, a STOP forced by a shutdown or no answer interrupts it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpod.core.spec import StudySpec
from hpod.core.states import Decision, TrialState
from hpod.core.study import Launch, Study, TrialRecord

SPEC = """
name = "r"
command = ["python", "trial.py"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = {{ param_type = "choice", range = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] }}
[scheduler]
{scheduler}
[searcher]
type = "grid"
[limits]
max_trials = {max_trials}
"""

ASHA = 'type = "asha"\nmin_resource = 1\nmax_resource = 9\nreduction_factor = 3'
HYPERBAND = 'type = "hyperband"\nmin_resource = 1\nmax_resource = 9\nreduction_factor = 3'
STOPPING = ASHA + '\nrung_type = "stopping"'
FIFO = 'type = "fifo"\nmax_resource = 3'


def spec(scheduler: str, max_trials: int = 12) -> StudySpec:
    text = SPEC.format(scheduler=scheduler, max_trials=max_trials)
    return StudySpec.from_toml(text, base_dir=Path("/tmp"))


def value(tid: int, step: float) -> float:
    return ((tid * 7) % 12) / 12 + 1 / step


def stored(rec: TrialRecord, answer: Decision | None, *, interrupting: bool = False) -> TrialRecord:
    """The record the store holds of a trial whose daemon was killed after ``answer`` was
    acknowledged and before the exit was written: still running, its curve from its counted
    reports, the last answer of its latest run from the reports table."""
    return dataclasses.replace(
        rec, state=TrialState.RUNNING, last_decision=answer, interrupting=interrupting
    )


def report_to_the_end(study: Study, lv: Launch) -> Decision:
    """Report every step of the launch until an answer other than CONTINUE; no exit."""
    decision = Decision.CONTINUE
    step = int(lv.resume_from)
    while decision is Decision.CONTINUE:
        step += 1
        decision = study.on_report(
            lv.trial_id, {"step": step, "loss": value(lv.trial_id, step)}, 0.0
        ).decision
    return decision


def drive(study: Study, n: int) -> list[tuple[int, float, float, bool]]:
    """Launch and run ``n`` times (each run to its answer, then its exit)."""
    trace = []
    for _ in range(n):
        lv = study.next_launch(0.0)
        if lv is None:
            break
        trace.append((lv.trial_id, lv.resume_from, lv.max_resource, lv.fresh))
        report_to_the_end(study, lv)
        study.on_exit(lv.trial_id, 0, 0.0)
    return trace


@pytest.mark.parametrize(
    ("scheduler", "before"),
    [
        (ASHA, 2),  # the third trial at rung 1, the best there
        (ASHA, 3),  # trial 0, promoted to rung 3 and paused there
        (HYPERBAND, 2),  # bracket 0, rung 1
        (HYPERBAND, 10),  # bracket 1, whose first rung is 3
    ],
)
def test_a_trial_answered_pause_whose_exit_was_lost_is_promoted_like_a_live_one(
    scheduler: str, before: int
) -> None:
    live = Study.new(spec(scheduler))
    drive(live, before)
    # The next run is answered PAUSE at its rung; the daemon is killed before its exit is written.
    lv = live.next_launch(0.0)
    assert lv is not None
    assert report_to_the_end(live, lv) is Decision.PAUSE
    # The records as the store holds them then: the trial still running, its curve up to the
    # rung, PAUSE the last answer of its latest run.
    records = live.records()
    restored = Study.restore(live.spec, records)
    live.on_exit(lv.trial_id, 0, 0.0)
    assert restored.record(lv.trial_id).state is TrialState.PAUSED
    assert records[lv.trial_id] == stored(records[lv.trial_id], Decision.PAUSE)
    # Not relaunched to the rung it already reached (HPOD_RESUME_FROM == HPOD_MAX_RESOURCE):
    # promoted, or passed over, by the same rules as the live study's paused trial.
    trace = drive(restored, 30)
    assert trace == drive(live, 30)
    assert any(t == lv.trial_id and resume == lv.max_resource for t, resume, _, _ in trace)
    assert restored.records() == live.records()


@pytest.mark.parametrize(
    ("scheduler", "values", "ends"),
    [
        # Ran to max_resource: completed, as its exit would have made it.
        (FIFO, {1: 0.5, 2: 0.4, 3: 0.3}, TrialState.COMPLETED),
        # Stopped at its first rung by the stopping rule (third of three there): stopped.
        (STOPPING, {1: 0.9}, TrialState.STOPPED),
    ],
)
def test_a_trial_answered_stop_whose_exit_was_lost_ends_as_its_exit_would(
    scheduler: str, values: dict[int, float], ends: TrialState
) -> None:
    live = Study.new(spec(scheduler))
    for _ in range(3):
        live.next_launch(0.0)
    if scheduler == STOPPING:
        live.on_report(0, {"step": 1, "loss": 0.1}, 0.0)
        live.on_report(1, {"step": 1, "loss": 0.2}, 0.0)
    decisions = [live.on_report(2, {"step": s, "loss": v}, 0.0).decision for s, v in values.items()]
    assert decisions[-1] is Decision.STOP
    records = [stored(r, Decision.STOP) if r.trial_id == 2 else r for r in live.records()]
    restored = Study.restore(live.spec, records)
    assert live.on_exit(2, 0, 0.0) is ends
    assert restored.record(2).state is ends
    assert restored.record(2) == live.record(2)


def test_a_stop_forced_by_a_shutdown_interrupts_the_run() -> None:
    live = Study.new(spec(FIFO))
    live.next_launch(0.0)
    live.on_report(0, {"step": 1, "loss": 0.5}, 0.0)
    out = live.on_report(0, {"step": 2, "loss": 0.4}, 0.0, force=Decision.STOP)
    assert (out.decision, out.forced) == (Decision.STOP, True)
    (rec,) = live.records()
    restored = Study.restore(live.spec, [stored(rec, Decision.STOP, interrupting=True)])
    assert restored.record(0).state is TrialState.INTERRUPTED
    again = restored.next_launch(0.0)
    assert again is not None
    assert (again.trial_id, again.resume_from, again.max_resource) == (0, 2, 3)


@pytest.mark.parametrize("how", ["shutdown", "restore"])
def test_a_pause_forced_by_a_shutdown_interrupts_the_run(how: str) -> None:
    """A shutdown answers PAUSE ("save and exit, you will be resumed", issue 13): the trial is
    resumed from that report's level, whether the shutdown recorded the exit or a kill -9 during
    it left the trial running in the store with that interrupting PAUSE its last answer."""
    live = Study.new(spec(FIFO))
    live.next_launch(0.0)
    live.on_report(0, {"step": 1, "loss": 0.5}, 0.0)
    out = live.on_report(0, {"step": 2, "loss": 0.4}, 0.0, force=Decision.PAUSE)
    assert (out.decision, out.forced, out.counted) == (Decision.PAUSE, True, True)
    if how == "shutdown":
        # The shell records a shutdown's exit as interrupted, whatever its exit status.
        live.on_interrupted(0)
        restored = Study.restore(live.spec, live.records())
    else:
        (rec,) = live.records()
        restored = Study.restore(live.spec, [stored(rec, Decision.PAUSE, interrupting=True)])
    assert restored.record(0).state is TrialState.INTERRUPTED
    again = restored.next_launch(0.0)
    assert again is not None
    assert (again.trial_id, again.resume_from, again.max_resource, again.fresh) == (0, 2, 3, False)


def test_a_pause_the_scheduler_gave_still_ends_the_run_at_a_restore() -> None:
    """Not interrupting: the scheduler's own PAUSE (or a limit's STOP) ends the run as before."""
    live = Study.new(spec(ASHA))
    live.next_launch(0.0)
    assert live.on_report(0, {"step": 1, "loss": 0.5}, 0.0).decision is Decision.PAUSE
    (rec,) = live.records()
    restored = Study.restore(live.spec, [stored(rec, Decision.PAUSE)])
    assert restored.record(0).state is TrialState.PAUSED


@pytest.mark.parametrize(
    ("scheduler", "reports", "resume", "upto"), [(ASHA, 0, 0, 1), (FIFO, 1, 1, 3)]
)
def test_a_run_with_no_ending_answer_is_interrupted_and_resumes_where_it_was(
    scheduler: str, reports: int, resume: float, upto: float
) -> None:
    live = Study.new(spec(scheduler))
    live.next_launch(0.0)
    for step in range(1, reports + 1):
        assert live.on_report(0, {"step": step, "loss": 0.5}, 0.0).decision is Decision.CONTINUE
    (rec,) = live.records()
    assert rec.last_decision is None  # no ending answer yet
    answer = Decision.CONTINUE if reports else None  # the store's last answer, if any
    restored = Study.restore(live.spec, [stored(rec, answer)])
    assert restored.record(0).state is TrialState.INTERRUPTED
    lv = restored.next_launch(0.0)
    assert lv is not None
    assert (lv.trial_id, lv.resume_from, lv.max_resource) == (0, resume, upto)


@pytest.mark.parametrize("how", ["shutdown", "restore"])
def test_an_interrupted_run_that_reached_its_rung_is_paused_not_relaunched_to_it(how: str) -> None:
    # Three trials at rung 1, the third forced to STOP by a shutdown at its rung report: the rung
    # is reached (the report was counted), so the run has nothing left to do. Relaunched "to
    # resume" it would run from 1 to 1, report nothing and come back completed at rung 1.
    live = Study.new(spec(ASHA))
    for _ in range(3):
        live.next_launch(0.0)
    live.on_report(0, {"step": 1, "loss": 0.5}, 0.0)
    live.on_report(1, {"step": 1, "loss": 0.6}, 0.0)
    live.on_exit(0, 0, 0.0)
    live.on_exit(1, 0, 0.0)
    live.on_report(2, {"step": 1, "loss": 0.1}, 0.0, force=Decision.STOP)
    if how == "shutdown":
        live.on_interrupted(2)
        restored = Study.restore(live.spec, live.records())
    else:
        records = [
            stored(r, Decision.STOP, interrupting=True) if r.trial_id == 2 else r
            for r in live.records()
        ]
        restored = Study.restore(live.spec, records)
    assert restored.record(2).state is TrialState.PAUSED
    promo = restored.next_launch(0.0)
    assert promo is not None
    # The best of the three at rung 1 is promoted to rung 3, from its checkpoint at 1.
    assert (promo.trial_id, promo.resume_from, promo.max_resource, promo.fresh) == (2, 1, 3, False)


def test_a_launch_that_never_ran_gives_its_run_back() -> None:
    """The daemon died between storing a launch and handing it to its executor (a Slurm job
    never submitted): the trial is interrupted with its run count as before the launch, and
    its next launch is what that one would have been, under the same run number."""
    live = Study.new(spec(ASHA))
    first = live.next_launch(0.0)
    assert first is not None
    assert first.fresh
    live.on_interrupted(first.trial_id, ran=False)
    rec = live.record(first.trial_id)
    assert (rec.state, rec.runs) == (TrialState.INTERRUPTED, 0)
    restored = Study.restore(live.spec, live.records())
    again = restored.next_launch(0.0)
    assert again is not None
    assert (again.trial_id, again.resume_from, again.max_resource, again.fresh) == (0, 0, 1, True)
    assert restored.record(0).runs == 1
    # A promotion that never ran: the trial resumes from its rung, its runs those that ran.
    decision = report_to_the_end(restored, again)
    assert decision is Decision.PAUSE
    restored.on_exit(0, 0, 1.0, None)
    for _tid in range(1, 12):
        lv = restored.next_launch(0.0)
        assert lv is not None
        report_to_the_end(restored, lv)
        restored.on_exit(lv.trial_id, 0, 1.0, None)
        promoted = restored.next_launch(0.0)
        if promoted is not None and not promoted.fresh:
            break
    assert promoted is not None
    assert not promoted.fresh
    runs = restored.record(promoted.trial_id).runs
    restored.on_interrupted(promoted.trial_id, ran=False)
    assert restored.record(promoted.trial_id).runs == runs - 1
    back = restored.next_launch(0.0)
    assert back is not None
    assert (back.trial_id, back.resume_from, back.max_resource) == (
        promoted.trial_id,
        promoted.resume_from,
        promoted.max_resource,
    )
    assert restored.record(promoted.trial_id).runs == runs
