"""hpod.daemon.budget: a study's time budget between reports, its JSON, and what it sets."""

from __future__ import annotations

import json

import pytest

from hpod.core.spec import StudySpec
from hpod.daemon.budget import BudgetState, fixed_keys

pytestmark = pytest.mark.timeout(30)

SPEC = """
name = "b"
command = ["python", "t.py"]
[objective]
metric = "acc"
mode = "max"
[space]
lr = { param_type = "loguniform", range = [1e-3, 0.3] }
[limits]
time_ratio = 2
full_resource = 20
max_concurrent = 2
"""


def spec(extra: str = "") -> StudySpec:
    return StudySpec.from_toml(SPEC + extra, base_dir="/tmp")


def measured(state: BudgetState) -> None:
    for _ in range(2):
        state.first(2.5, 1)
        state.step(0.5 * 9, 9)
        state.end(0.5)


def test_no_budget_without_time_ratio():
    plain = StudySpec.from_toml(
        SPEC.replace("time_ratio = 2\nfull_resource = 20\n", ""), base_dir="."
    )
    assert BudgetState.of(plain, 2) is None


def test_it_sets_the_time_and_the_trials_once_measured():
    s = spec()
    state = BudgetState.of(s, 2)
    assert state is not None
    assert not state.revise(0, now=0.0)  # nothing measured: nothing to say
    assert state.apply(s) == s
    assert state.view(0.0)["budget"] is None
    measured(state)
    assert state.revise(2, now=1.0)
    applied = state.apply(s)
    # The budget less half an end time: a run the limit stops needs up to one to exit.
    assert applied.limits.optimization_time == pytest.approx(2 * (2.0 + 20 * 0.5 + 0.5) - 0.25)
    assert applied.limits.max_trials is not None
    assert state.event()["revision"] == 1
    # The same samples a moment later: nothing moved, nothing said.
    assert not state.revise(2, now=5.0)
    # Within a second of the last estimate a report does not make one; an exit does.
    state.step(60.0, 1)
    assert not state.revise(2, now=5.5)
    assert state.revise(2, now=5.5, force=True)
    assert state.revisions == 2


def test_what_the_spec_or_a_set_fixed_stays():
    s = spec("max_trials = 7\n")
    state = BudgetState.of(s, 2)
    assert state is not None
    measured(state)
    state.revise(0, now=0.0)
    applied = state.apply(s)
    assert applied.limits.max_trials == 7
    assert applied.limits.optimization_time is not None
    changes = [{"key": "optimization_time", "value": 99.0}, {"key": "priority", "value": 2}]
    assert fixed_keys(changes) == {"optimization_time"}
    kept = state.apply(s, fixed_keys(changes))
    assert kept.limits.optimization_time is None


def test_the_json_brings_the_samples_back():
    s = spec()
    state = BudgetState.of(s, 2)
    assert state is not None
    measured(state)
    state.revise(0, now=0.0)
    again = BudgetState.of(s, 2, state.to_json())
    assert again is not None
    assert again.samples == state.samples
    assert again.revisions == 1
    again.resume(2)
    assert again.apply(s).limits.optimization_time == pytest.approx(
        state.apply(s).limits.optimization_time
    )
    assert json.loads(state.to_json())["plan"]["budget"] == pytest.approx(25.0)
    # A stored value it cannot read starts over rather than failing the restore.
    assert BudgetState.of(s, 2, "not json").samples.firsts == 0
