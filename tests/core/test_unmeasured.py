"""A trial that never reports the objective (a misspelt metric, no report call at all) fails with
a message that names what it did report, and a study that measured nothing ends failed, not
completed with no best."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpod.core.spec import StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import FAILURES_BEFORE_GIVING_UP, Study
from tests.core.test_restore import ASHA, FIFO, STOPPING

# A random search: the grid of test_restore's spec would need max_trials of 12.
SPEC = """
name = "u"
command = ["python", "trial.py"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = {{ param_type = "uniform", range = [0, 1] }}
[scheduler]
{scheduler}
[limits]
max_trials = {max_trials}
"""


def make(scheduler: str = FIFO, max_trials: int = 20) -> Study:
    text = SPEC.format(scheduler=scheduler, max_trials=max_trials)
    return Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))


def start(study: Study) -> int:
    lv = study.next_launch(0.0)
    assert lv is not None
    return lv.trial_id


MISSPELT = "exited without reporting 'loss'; it reported: epoch, los, step"
NOTHING = "exited without reporting anything"


def test_a_trial_that_reports_another_metric_fails_naming_what_it_reported() -> None:
    study = make()
    tid = start(study)
    for step in (1, 2, 3):
        out = study.on_report(tid, {"step": step, "epoch": step, "los": 0.5}, 0.0)
        assert (out.decision, out.counted) == (
            Decision.STOP if step == 3 else Decision.CONTINUE,
            True,
        )
    assert study.on_exit(tid, 0, 0.0) is TrialState.FAILED
    error = study.record(tid).error or ""
    assert error.startswith(MISSPELT)
    assert "objective.metric" in error
    assert study.record(tid).reported_keys == ("epoch", "los", "step")


def test_a_trial_that_never_reports_fails() -> None:
    study = make()
    tid = start(study)
    assert study.on_exit(tid, 0, 0.0) is TrialState.FAILED
    error = study.record(tid).error or ""
    assert error.startswith(NOTHING)
    assert "hpod.trial.report" in error


def test_a_trial_paused_at_its_rung_without_the_objective_fails() -> None:
    # ASHA pauses a trial at its launch's rung whatever the report carries: paused with nothing
    # counted it would never be promoted, and the study would end with no best.
    study = make(ASHA)
    tid = start(study)
    assert study.on_report(tid, {"step": 1, "los": 0.5}, 0.0).decision is Decision.PAUSE
    assert study.on_exit(tid, 0, 0.0) is TrialState.FAILED
    assert (study.record(tid).error or "").startswith("exited without reporting 'loss'")


def test_trials_ended_by_the_scheduler_after_measuring_are_not_failures() -> None:
    study = make(ASHA)
    tid = start(study)
    assert study.on_report(tid, {"step": 1, "loss": 0.5}, 0.0).decision is Decision.PAUSE
    assert study.on_exit(tid, 0, 0.0) is TrialState.PAUSED
    fifo = make()
    tid = start(fifo)
    assert fifo.on_report(tid, {"step": 3, "loss": 0.5}, 0.0).decision is Decision.STOP
    assert fifo.on_exit(tid, 0, 0.0) is TrialState.COMPLETED
    assert fifo.record(tid).error is None


@pytest.mark.parametrize("returncode", [0, -15])
def test_a_trial_the_shell_stops_before_its_first_report_is_stopped_not_failed(
    returncode: int,
) -> None:
    study = make()
    tid = start(study)
    study.mark_stopping(tid)  # a limit (trial_time, the study's) or the user
    assert study.on_exit(tid, returncode, 0.0) is TrialState.STOPPED
    assert study.record(tid).error is None


def test_a_command_that_never_reports_fails_the_study_after_a_few_tries() -> None:
    study = make()
    for _ in range(FAILURES_BEFORE_GIVING_UP):
        tid = start(study)
        study.on_report(tid, {"step": 1, "los": 0.5}, 0.0)
        study.on_exit(tid, 0, 0.0)
    assert study.state is StudyState.FAILED
    assert MISSPELT.replace("epoch, ", "") in (study.end_reason or "")
    assert study.next_launch(0.0) is None


def test_a_study_that_measured_nothing_ends_failed() -> None:
    # One trial stopped by the shell before it reported, one that exited without the objective:
    # not every trial failed, but nothing was measured, so there is no best to hand over.
    study = make(max_trials=2)
    first = start(study)
    study.mark_stopping(first)
    study.on_exit(first, -15, 0.0)
    second = start(study)
    study.on_report(second, {"step": 1, "los": 0.5}, 0.0)
    study.on_exit(second, 0, 0.0)
    assert study.finished
    study.conclude("max_trials limit of 2 reached")
    assert study.state is StudyState.FAILED
    reason = study.end_reason or ""
    assert "no trial reported 'loss'" in reason
    assert study.best() is None


def test_a_study_with_one_measured_trial_completes() -> None:
    study = make(max_trials=2)
    first = start(study)
    study.on_exit(first, 0, 0.0)
    second = start(study)
    study.on_report(second, {"step": 1, "loss": 0.5}, 0.0)
    study.on_exit(second, 0, 0.0)
    study.conclude()
    assert study.state is StudyState.COMPLETED


def test_the_keys_a_trial_reported_survive_a_restart() -> None:
    study = make()
    tid = start(study)
    study.on_report(tid, {"step": 1, "epoch": 1, "los": 0.5}, 0.0)
    study.on_interrupted(tid)
    (rec,) = study.records()
    assert rec.reported_keys == ("epoch", "los", "step")
    # As the daemon rebuilds it from the reports table: no curve (no report carried the
    # objective), the keys every report of the trial carried.
    restored = Study.restore(study.spec, [dataclasses.replace(rec, state=TrialState.RUNNING)])
    lv = restored.next_launch(0.0)
    assert lv is not None
    # The resumed run reports nothing more and exits 0: it failed, and says what it reported.
    assert restored.on_exit(lv.trial_id, 0, 0.0) is TrialState.FAILED
    assert (restored.record(tid).error or "").startswith(MISSPELT)


def test_a_resumed_trial_that_measured_in_an_earlier_run_is_not_a_failure() -> None:
    study = make()
    tid = start(study)
    study.on_report(tid, {"step": 1, "loss": 0.5}, 0.0)
    study.on_interrupted(tid)
    restored = Study.restore(study.spec, study.records())
    lv = restored.next_launch(0.0)
    assert lv is not None
    assert restored.on_exit(lv.trial_id, 0, 0.0) is TrialState.COMPLETED


def test_a_report_without_the_objective_is_not_judged_at_a_rung() -> None:
    # The stopping rule ranks a trial among those that reached the rung: one whose report there
    # carried no objective is not among them (it raised StopIteration at the daemon).
    study = make(STOPPING)
    tid = start(study)
    decisions = [study.on_report(tid, {"step": s, "los": 0.5}, 0.0).decision for s in range(1, 10)]
    assert decisions == [Decision.CONTINUE] * 8 + [Decision.STOP]
    assert study.on_exit(tid, 0, 0.0) is TrialState.FAILED
    # A metric reported only every other step: a rung crossed between two is judged at the next
    # report that carries it (here: third of three at rung 1, worse than both, so stopped).
    others = [start(study) for _ in range(3)]
    study.on_report(others[0], {"step": 1, "loss": 0.1}, 0.0)
    study.on_report(others[1], {"step": 1, "loss": 0.2}, 0.0)
    assert study.on_report(others[2], {"step": 1, "acc": 0.3}, 0.0).decision is Decision.CONTINUE
    assert study.on_report(others[2], {"step": 2, "loss": 0.9}, 0.0).decision is Decision.STOP
