"""``Study.retract_report`` puts back exactly what ``on_report`` changed: a report the shell could
not store leaves the study as it was before it, whatever kind of report it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpod.core.dyhpo import DyHPOScheduler
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, TrialState
from hpod.core.study import Best, ReportOutcome, Study, TrialRecord
from hpod.errors import BadState
from tests.core.test_restore import ASHA, FIFO, SPEC, STOPPING, spec


def held(study: Study) -> tuple[list[TrialRecord], Best | None]:
    return study.records(), study.best()


def launched(scheduler: str, n: int = 2) -> Study:
    study = Study.new(spec(scheduler))
    for _ in range(n):
        assert study.next_launch(0.0) is not None
    return study


def report(study: Study, tid: int, **metrics: Any) -> ReportOutcome:
    return study.on_report(tid, metrics, 0.0)


# Each case: the study's scheduler, the reports before, and the one taken back (all trial 0).
CASES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "a new point and a new metric": (FIFO, [{"step": 1, "loss": 0.5}], {"step": 2, "loss": 0.1}),
    "a point out of order": (
        FIFO,
        [{"step": 1, "loss": 0.5}, {"step": 3, "loss": 0.3}],
        {"step": 2, "loss": 0.1, "lr": 0.01},
    ),
    "a point over one already there": (
        FIFO,
        [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}],
        {"step": 2, "loss": 0.1},
    ),
    "no objective": (FIFO, [{"step": 1, "loss": 0.5}], {"step": 2, "acc": 0.9}),
    "the end of the run (STOP)": (FIFO, [{"step": 1, "loss": 0.5}], {"step": 3, "loss": 0.2}),
    "a rung (PAUSE)": (ASHA, [], {"step": 1, "loss": 0.2}),
    "past a PAUSE, not counted": (ASHA, [{"step": 1, "loss": 0.2}], {"step": 2, "loss": 0.1}),
    "NaN": (FIFO, [{"step": 1, "loss": 0.5}], {"step": 2, "loss": float("nan")}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_retracted_report_leaves_the_study_as_before_it(case: str) -> None:
    scheduler, earlier, taken_back = CASES[case]
    study = launched(scheduler)
    report(study, 1, step=1, loss=0.3)  # a peer, for the ranking
    for metrics in earlier:
        report(study, 0, **metrics)
    before = held(study)

    first = report(study, 0, **taken_back)
    study.retract_report(0, first)

    assert held(study) == before
    # And the study goes on as if it had never been sent: sent again, it is answered the same.
    again = report(study, 0, **taken_back)
    assert (again.decision, again.resource, again.counted) == (
        first.decision,
        first.resource,
        first.counted,
    )


def test_a_forced_stop_is_taken_back_without_touching_the_ending() -> None:
    study = launched(FIFO)
    report(study, 0, step=1, loss=0.5)
    before = held(study)
    out = study.on_report(0, {"step": 2, "loss": 0.1}, 0.0, force=Decision.STOP)
    assert out.forced
    study.retract_report(0, out)
    assert held(study) == before


def test_a_trial_that_exited_meanwhile_keeps_its_recorded_state() -> None:
    study = launched(STOPPING)
    out = report(study, 0, step=1, loss=0.2)
    study.on_exit(0, 0, 0.0)  # its state was recorded from the answer, in the store too
    state = study.record(0).state
    study.retract_report(0, out)
    assert study.record(0).state is state
    assert study.record(0).curve == ()


def test_only_an_outcome_of_on_report_can_be_retracted() -> None:
    study = launched(FIFO)
    with pytest.raises(BadState, match="only an outcome of on_report"):
        study.retract_report(0, ReportOutcome(Decision.CONTINUE, 1.0, counted=True))


def dyhpo_study() -> tuple[Study, DyHPOScheduler]:
    text = SPEC.format(scheduler='type = "dyhpo"\nmax_resource = 9', max_trials=4).replace(
        'type = "grid"', 'type = "dyhpo"'
    )
    study = Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))
    sched = study._scheduler
    assert isinstance(sched, DyHPOScheduler)
    return study, sched


def test_dyhpo_forgets_the_training_rows_of_a_retracted_point() -> None:
    study, sched = dyhpo_study()
    for _ in range(2):
        assert study.next_launch(0.0) is not None

    def rows() -> list[tuple[float, float]]:
        return [(r.level, r.loss) for r in sched._training_rows(study)]

    report(study, 0, step=1, loss=0.5)
    before = rows()
    out = report(study, 1, step=1, loss=0.1)  # its rung: PAUSE, and a row of its own
    assert len(rows()) == len(before) + 1
    study.retract_report(1, out)
    assert rows() == before
    assert study.record(1).state is TrialState.RUNNING


def test_a_model_searchers_history_follows_every_change_of_a_curve() -> None:
    """The history a model-based searcher sees is kept per trial between decisions: after
    reports in and out of order, a retraction and new trials it is what a walk of the trials
    would make now."""
    import math

    study = launched(ASHA, 3)

    def walked() -> list[tuple[int, float, float]]:
        out = []
        for rec in study.records():
            if not rec.curve:
                out.append((rec.config["x"], 0.0, math.nan))
            out.extend((rec.config["x"], r, v) for r, v in rec.curve)
        return out

    def seen() -> list[tuple[int, float, float]]:
        return [(o.config["x"], o.resource, o.value) for o in study._observations()]

    assert repr(seen()) == repr(walked())
    report(study, 0, step=1, loss=0.5)
    assert repr(seen()) == repr(walked())
    report(study, 1, step=3, loss=0.4)
    report(study, 1, step=2, loss=0.45)  # out of order
    assert repr(seen()) == repr(walked())
    out = report(study, 0, step=2, loss=0.1)
    assert repr(seen()) == repr(walked())
    study.retract_report(0, out)
    assert repr(seen()) == repr(walked())
    study.on_exit(2, 0, 0.0)
    assert study.next_launch(0.0) is not None
    assert repr(seen()) == repr(walked())
