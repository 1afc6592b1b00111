"""The study state machine, driven directly with hand-made events."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpod.core.plans import Observation, Suggestion
from hpod.core.searchers import RandomSearcher
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import FAILURES_BEFORE_GIVING_UP, Study, make_scheduler
from hpod.errors import BadState, NotFound

SPEC = """
name = "q"
command = ["python", "trial.py", "{{x}}"]
[objective]
metric = "loss"
mode = "{mode}"
resource = "step"
[space]
x = {{ param_type = "choice", range = [1, 2, 3] }}
[scheduler]
type = "fifo"
max_resource = 3
[searcher]
type = "grid"
partial_grid = true
[limits]
max_trials = {max_trials}
"""


def make(mode: str = "min", max_trials: int = 10) -> Study:
    text = SPEC.format(mode=mode, max_trials=max_trials)
    return Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))


def run_to_end(study: Study, trial_id: int, values: list[float]) -> list[Decision]:
    out = []
    for step, v in enumerate(values, start=1):
        out.append(study.on_report(trial_id, {"step": step, "loss": v}, 0.0).decision)
    return out


def test_grid_launches_each_point_once_then_finishes() -> None:
    study = make()
    launches = [study.next_launch(0.0) for _ in range(3)]
    assert [lv.config["x"] for lv in launches if lv] == [1, 2, 3]
    assert all(lv is not None and lv.fresh and lv.resume_from == 0 for lv in launches)
    assert study.next_launch(0.0) is None
    assert not study.finished
    for tid, value in enumerate([3.0, 1.0, 2.0]):
        assert run_to_end(study, tid, [value + 1, value + 0.5, value]) == [
            Decision.CONTINUE,
            Decision.CONTINUE,
            Decision.STOP,
        ]
        assert study.on_exit(tid, 0, 0.0) is TrialState.COMPLETED
    assert study.finished
    best = study.best()
    assert best is not None
    # Ranked by the mean of its last reports (hpod.core.answer), the last one beside it.
    assert (best.trial_id, best.config, best.objective, best.resource) == (1, {"x": 2}, 1.5, 3)
    assert (best.last, best.window) == (1.0, 3)


def test_max_mode_and_global_modes_rank_differently() -> None:
    # trial 0: mean 0.7, max 0.8, min 0.5; trial 1: mean 0.683, max 0.9, min 0.55
    for mode, expected in [("max", 0), ("max_global", 1), ("min", 1), ("min_global", 0)]:
        study = make(mode)
        study.next_launch(0.0)
        study.next_launch(0.0)
        run_to_end(study, 0, [0.5, 0.8, 0.8])
        run_to_end(study, 1, [0.9, 0.55, 0.6])
        best = study.best()
        assert best is not None
        assert best.trial_id == expected, mode


def test_nan_ranks_worst() -> None:
    study = make("max")
    study.next_launch(0.0)
    study.next_launch(0.0)
    run_to_end(study, 0, [math.nan, math.nan, math.nan])
    run_to_end(study, 1, [0.1, 0.1, 0.1])
    best = study.best()
    assert best is not None
    assert best.trial_id == 1


def test_failure_is_recorded_and_the_study_goes_on() -> None:
    study = make()
    study.next_launch(0.0)
    assert study.on_exit(0, 3, 0.0, "exited with status 3") is TrialState.FAILED
    assert study.record(0).error == "exited with status 3"
    nxt = study.next_launch(0.0)
    assert nxt is not None
    assert nxt.trial_id == 1


def test_a_broken_command_fails_the_study_after_a_few_tries() -> None:
    spec = SPEC.format(mode="min", max_trials=100).replace('type = "grid"', 'type = "random"')
    spec = spec.replace(
        'x = { param_type = "choice", range = [1, 2, 3] }',
        'x = { param_type = "uniform", range = [0, 1] }',
    )
    study = Study.new(StudySpec.from_toml(spec, base_dir=Path("/tmp")))
    for i in range(FAILURES_BEFORE_GIVING_UP):
        launch = study.next_launch(0.0)
        assert launch is not None
        study.on_exit(i, 1, 0.0)
    assert study.state is StudyState.FAILED
    assert "failed" in (study.end_reason or "")
    assert study.next_launch(0.0) is None
    assert study.finished


def test_interrupted_trial_resumes_from_its_last_counted_level() -> None:
    study = make()
    study.next_launch(0.0)
    study.on_report(0, {"step": 1, "loss": 5.0}, 0.0)
    study.on_report(0, {"step": 2, "loss": 4.0}, 0.0)
    study.on_interrupted(0)
    assert study.record(0).state is TrialState.INTERRUPTED
    restored = Study.restore(study.spec, study.records())
    launch = restored.next_launch(0.0)
    assert launch is not None
    assert (launch.trial_id, launch.resume_from, launch.max_resource, launch.fresh) == (
        0,
        2,
        3,
        False,
    )
    # A trial that restarted from scratch re-reports levels already counted: not counted twice.
    again = restored.on_report(0, {"step": 1, "loss": 99.0}, 0.0)
    assert (again.decision, again.counted) == (Decision.CONTINUE, False)
    assert restored.record(0).curve == ((1.0, 5.0), (2.0, 4.0))
    done = restored.on_report(0, {"step": 3, "loss": 3.0}, 0.0)
    assert (done.decision, done.counted) == (Decision.STOP, True)


def test_a_trial_the_store_calls_running_comes_back_interrupted() -> None:
    study = make()
    study.next_launch(0.0)
    restored = Study.restore(study.spec, study.records())
    assert restored.record(0).state is TrialState.INTERRUPTED


def test_reports_past_stop_are_answered_and_not_ranked() -> None:
    study = make()
    study.next_launch(0.0)
    run_to_end(study, 0, [3.0, 2.0, 1.0])
    late = study.on_report(0, {"step": 4, "loss": -100.0}, 0.0)
    assert (late.decision, late.counted) == (Decision.STOP, False)
    answer = study.answer_of(0)
    assert answer is not None
    assert (study.value_of(0), answer.last, answer.window) == (2.0, 1.0, 3)


def test_reports_need_a_running_trial_and_a_numeric_resource() -> None:
    study = make()
    with pytest.raises(NotFound):
        study.on_report(0, {"step": 1, "loss": 1.0}, 0.0)
    study.next_launch(0.0)
    with pytest.raises(Exception, match="finite number"):
        study.on_report(0, {"step": "one", "loss": 1.0}, 0.0)
    study.on_exit(0, 0, 0.0)
    with pytest.raises(BadState):
        study.on_report(0, {"step": 2, "loss": 1.0}, 0.0)


def test_shell_stop_marks_stopped_not_failed() -> None:
    study = make()
    study.next_launch(0.0)
    study.end(StudyState.STOPPED, "stopped by uid 1000")
    study.mark_stopping(0)
    assert study.on_exit(0, -15, 0.0) is TrialState.STOPPED
    assert study.next_launch(0.0) is None
    assert study.finished


def test_a_study_whose_every_trial_failed_ends_failed() -> None:
    study = make(max_trials=2)
    for tid in range(2):
        study.next_launch(0.0)
        study.on_exit(tid, 1, 0.0)
    assert study.next_launch(0.0) is None
    assert study.finished
    study.conclude()
    assert study.state is StudyState.FAILED
    assert "all 2 trials failed" in (study.end_reason or "")


def test_a_study_with_one_success_ends_completed() -> None:
    study = make(max_trials=2)
    study.next_launch(0.0)
    study.on_exit(0, 1, 0.0)
    study.next_launch(0.0)
    run_to_end(study, 1, [1.0, 1.0, 1.0])
    study.on_exit(1, 0, 0.0)
    study.conclude()
    assert study.state is StudyState.COMPLETED


class _Recording:
    """A searcher that notes the history it is handed."""

    def __init__(self, needs_history: bool) -> None:
        self.needs_history = needs_history
        self.seen: list[int] = []

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        self.seen.append(len(history))
        return Suggestion({"x": 1 + number % 3})


@pytest.mark.parametrize(("needs", "expect_history"), [(True, True), (False, False)])
def test_the_history_is_built_only_for_searchers_that_read_it(
    needs: bool, expect_history: bool
) -> None:
    # Building it walks every report of the study on the event loop (40 ms at 16,000 reports,
    # bench/report_latency.py --during-fit), so random and grid, which ignore it, get none.
    spec = make().spec
    searcher = _Recording(needs)
    study = Study(spec, searcher, make_scheduler(spec))
    first = study.next_launch(0.0)
    assert first is not None
    run_to_end(study, first.trial_id, [3.0, 2.0, 1.0])
    study.on_exit(first.trial_id, 0, 0.0)
    assert study.next_launch(0.0) is not None
    assert searcher.seen == ([0, 3] if expect_history else [0, 0])


def test_random_and_grid_searchers_do_not_ask_for_the_history() -> None:
    grid = make()
    assert grid.spec.searcher.type.value == "grid"
    assert grid._searcher.needs_history is False
    assert RandomSearcher(grid.spec.space).needs_history is False


def test_best_follows_every_report_and_retraction_though_it_is_kept() -> None:
    # best() is kept between reports (the status answers ask for it on every call): a report
    # that beats it, and the retraction of that report, each move the answer at once.
    study = make()
    study.next_launch(0.0)
    study.next_launch(0.0)
    study.on_report(0, {"step": 1, "loss": 2.0}, 0.0)
    first = study.best()
    assert first is not None
    assert first.trial_id == 0
    assert study.best() is first
    outcome = study.on_report(1, {"step": 1, "loss": 1.0}, 0.0)
    moved = study.best()
    assert moved is not None
    assert moved.trial_id == 1
    study.retract_report(1, outcome)
    back = study.best()
    assert back is not None
    assert back.trial_id == 0
    failed = study.on_exit(1, 1, 0.0)
    assert [r.trial_id for r in study.records_in(failed)] == [1]


def test_rung_occupancy_follows_reports_and_moves_though_it_is_kept() -> None:
    text = SPEC.format(mode="min", max_trials=10).replace(
        'type = "fifo"', 'type = "asha"\nmin_resource = 1\nreduction_factor = 3'
    )
    study = Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))
    launch = study.next_launch(0.0)
    assert launch is not None
    before = study.rung_occupancy()
    assert before[0]["reached"] == 0
    study.on_report(launch.trial_id, {"step": 1, "loss": 1.0}, 0.0)
    after = study.rung_occupancy()
    assert after[0]["reached"] == 1
    assert after is not study.rung_occupancy()  # a copy each call: an answer may change it
