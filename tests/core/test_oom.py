"""The [oom] policy in the engine: an out-of-memory exit retried with the batch key halved."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.core.spec import StudySpec
from hpod.core.states import TrialState
from hpod.core.study import OomRetry, Study

pytestmark = pytest.mark.timeout(30)

SPEC = """
name = "oom"
command = ["python", "t.py"]
[objective]
metric = "acc"
mode = "max"
[space]
bs = {{ param_type = "quniform", range = [1, 4096, 1] }}
lr = {{ param_type = "uniform", range = [0.1, 0.2] }}
[searcher]
points_to_evaluate = [{{ bs = {bs}, lr = 0.15 }}]
[limits]
max_trials = 1
{oom}
"""


def _study(
    oom: str = '[oom]\nbatch_size_key = "bs"\nmax_retries = 3\nmin_value = 16', bs: int = 128
) -> Study:
    return Study.new(StudySpec.from_toml(SPEC.format(bs=bs, oom=oom), base_dir=Path("/tmp")))


def test_an_oom_exit_is_retried_with_the_batch_halved_until_it_fits() -> None:
    study = _study()
    launch = study.next_launch(0.0)
    assert launch is not None
    assert launch.config["bs"] == 128
    state = study.on_exit(0, 1, 1.0, "exited with status 1 (out of memory)", oom=True)
    assert state is TrialState.PENDING
    again = study.next_launch(2.0)
    assert again is not None
    assert again.trial_id == 0
    assert again.config["bs"] == 64
    assert again.fresh
    assert again.resume_from == 0.0
    study.on_report(0, {"epoch": 1, "acc": 0.9}, 3.0)
    assert study.on_exit(0, 0, 4.0) is TrialState.COMPLETED
    rec = study.record(0)
    assert rec.retries == (OomRetry(1, "bs", 128, 64, 1.0, "exited with status 1 (out of memory)"),)
    assert study.best() is not None
    assert study.best().config["bs"] == 64


def test_retries_are_bounded_by_max_retries_and_the_floor() -> None:
    study = _study()
    for expected in (128, 64, 32, 16):
        launch = study.next_launch(0.0)
        assert launch is not None
        assert launch.config["bs"] == expected
        state = study.on_exit(0, -9, 1.0, "exited with status -9", oom=True)
    # 128 -> 64 -> 32 -> 16 (3 retries); at 16, the floor, and out of retries: failed.
    assert state is TrialState.FAILED
    rec = study.record(0)
    assert len(rec.retries) == 3
    assert rec.error is not None
    assert "out of memory" in rec.error


def test_an_oom_retry_is_not_a_failure_for_the_studys_rule() -> None:
    study = _study(bs=1024, oom='[oom]\nbatch_size_key = "bs"\nmax_retries = 9')
    for _ in range(8):
        assert study.next_launch(0.0) is not None
        assert study.on_exit(0, 1, 1.0, "oom", oom=True) is TrialState.PENDING
    assert study.state.value == "running"


def test_without_a_batch_key_an_oom_is_a_plain_failure() -> None:
    study = _study(oom="")
    assert study.next_launch(0.0) is not None
    assert study.on_exit(0, 1, 1.0, "exited with status 1", oom=True) is TrialState.FAILED
    error = study.record(0).error
    assert error is not None
    assert "batch_size_key is not set" in error


def test_a_restored_retry_still_starts_from_scratch() -> None:
    study = _study()
    assert study.next_launch(0.0) is not None
    study.on_report(0, {"epoch": 1, "acc": 0.5}, 0.5)
    study.on_exit(0, 1, 1.0, "oom", oom=True)
    again = Study.restore(study.spec, study.records())
    launch = again.next_launch(2.0)
    assert launch is not None
    assert launch.config["bs"] == 64
    assert launch.resume_from == 0.0


def test_the_batch_key_must_be_an_integer_parameter_of_the_space() -> None:
    from hpod.errors import SpecError

    with pytest.raises(SpecError) as err:
        _study(oom='[oom]\nbatch_size_key = "lr"')
    assert "oom.batch_size_key" in str(err.value)
    with pytest.raises(SpecError) as err:
        _study(oom='[oom]\nbatch_size_key = "nope"')
    assert "not a parameter" in str(err.value)


def test_a_trial_that_said_it_ran_out_of_memory_and_exited_0_is_retried() -> None:
    study = _study()
    assert study.next_launch(0.0) is not None
    assert study.on_exit(0, 0, 1.0, oom=True) is TrialState.PENDING
    (retry,) = study.record(0).retries
    assert "reported out of memory" in retry.error


def test_a_choice_batch_steps_down_its_choices() -> None:
    text = SPEC.format(bs=128, oom='[oom]\nbatch_size_key = "bs"\nmax_retries = 5').replace(
        '"quniform", range = [1, 4096, 1]', '"choice", range = [16, 96, 128]'
    )
    study = Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))
    seen = []
    for _ in range(4):
        launch = study.next_launch(0.0)
        if launch is None:
            break
        seen.append(launch.config["bs"])
        state = study.on_exit(0, 1, 1.0, "oom", oom=True)
    # 128: the largest choice at or under half (64) is 16; 16: none smaller.
    assert seen == [128, 16]
    assert state is TrialState.FAILED
    error = study.record(0).error
    assert error is not None
    assert "nothing smaller" in error


def test_a_choice_without_one_at_half_takes_the_next_smaller() -> None:
    text = SPEC.format(bs=128, oom='[oom]\nbatch_size_key = "bs"').replace(
        '"quniform", range = [1, 4096, 1]', '"choice", range = [96, 128]'
    )
    study = Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))
    assert study.next_launch(0.0) is not None
    assert study.on_exit(0, 1, 1.0, "oom", oom=True) is TrialState.PENDING
    launch = study.next_launch(1.0)
    assert launch is not None
    assert launch.config["bs"] == 96


def test_a_searchers_history_shows_the_halved_batch_after_a_retry() -> None:
    study = _study()
    assert study.next_launch(0.0) is not None
    before = [o.config["bs"] for o in study._observations()]
    kept = study._observations().parts[0].config  # what a searcher may have kept of it
    study.on_exit(0, 1, 1.0, "exited with status 1 (out of memory)", oom=True)
    after = [o.config["bs"] for o in study._observations()]
    assert (before, after) == ([128], [64])
    assert kept["bs"] == 128  # the configuration that ran is not changed under its reader
