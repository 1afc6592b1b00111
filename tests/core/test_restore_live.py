"""A study rebuilt after its daemon died, with some runs still alive (the shell adopted their
processes): those trials stay running in the same run, go on from where they were, and end as
the live study would have ended them; a PAUSE or STOP their run had been answered still holds."""

from __future__ import annotations

from hpod.core.states import Decision, TrialState
from hpod.core.study import Study
from tests.core.test_restore import ASHA, FIFO, drive, report_to_the_end, spec, stored, value


def test_an_adopted_trial_goes_on_in_the_same_run_and_ends_as_the_live_one() -> None:
    live = Study.new(spec(FIFO))
    drive(live, 2)
    lv = live.next_launch(0.0)
    assert lv is not None
    # One report counted and answered CONTINUE, then the daemon dies; the process lives on.
    first = live.on_report(lv.trial_id, {"step": 1, "loss": value(lv.trial_id, 1)}, 0.0)
    assert (first.counted, first.decision) == (True, Decision.CONTINUE)
    records = [
        stored(r, Decision.CONTINUE) if r.trial_id == lv.trial_id else r for r in live.records()
    ]
    adopted = Study.restore(live.spec, records, live={lv.trial_id})
    rec = adopted.record(lv.trial_id)
    assert rec.state is TrialState.RUNNING
    assert rec.runs == live.record(lv.trial_id).runs  # not relaunched: the same run
    assert adopted.running == [lv.trial_id]
    # It reports on, answered as the live study answers, and ends as the live one ends.
    step = 1
    while True:
        step += 1
        metrics = {"step": step, "loss": value(lv.trial_id, step)}
        answer = live.on_report(lv.trial_id, metrics, 0.0).decision
        assert adopted.on_report(lv.trial_id, metrics, 0.0).decision is answer
        if answer is not Decision.CONTINUE:
            break
    assert adopted.on_exit(lv.trial_id, 0, 0.0) is live.on_exit(lv.trial_id, 0, 0.0)
    assert adopted.records() == live.records()


def test_an_adopted_trial_answered_pause_still_pauses_at_its_exit() -> None:
    live = Study.new(spec(ASHA))
    drive(live, 2)
    lv = live.next_launch(0.0)
    assert lv is not None
    assert report_to_the_end(live, lv) is Decision.PAUSE
    records = [
        stored(r, Decision.PAUSE) if r.trial_id == lv.trial_id else r for r in live.records()
    ]
    adopted = Study.restore(live.spec, records, live={lv.trial_id})
    assert adopted.record(lv.trial_id).state is TrialState.RUNNING
    # A report it sends after the PAUSE (it should have stopped) is not ranked, as live.
    late = adopted.on_report(lv.trial_id, {"step": 99, "loss": 0.0}, 0.0)
    assert (late.decision, late.counted) == (Decision.PAUSE, False)
    assert adopted.on_exit(lv.trial_id, 0, 0.0) is TrialState.PAUSED


def test_an_adopted_trial_told_to_stop_by_a_shutdown_is_not_ended_by_that_answer() -> None:
    live = Study.new(spec(FIFO))
    lv = live.next_launch(0.0)
    assert lv is not None
    live.on_report(lv.trial_id, {"step": 1, "loss": 0.5}, 0.0)
    records = [
        stored(r, Decision.PAUSE, interrupting=True) if r.trial_id == lv.trial_id else r
        for r in live.records()
    ]
    adopted = Study.restore(live.spec, records, live={lv.trial_id})
    adopted.on_interrupted(lv.trial_id)  # the shell records the shutdown's stop at its exit
    assert adopted.record(lv.trial_id).state is TrialState.INTERRUPTED
    again = adopted.next_launch(0.0)
    assert again is not None
    assert (again.trial_id, again.resume_from) == (lv.trial_id, 1.0)


def test_a_trial_not_adopted_is_restored_as_before() -> None:
    live = Study.new(spec(FIFO))
    lv = live.next_launch(0.0)
    assert lv is not None
    live.on_report(lv.trial_id, {"step": 1, "loss": 0.5}, 0.0)
    records = [stored(r, Decision.CONTINUE) for r in live.records()]
    assert Study.restore(live.spec, records, live=()).record(0).state is TrialState.INTERRUPTED
