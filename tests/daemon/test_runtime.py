"""A run's state machine (RunState's checked table) and how a stop is asked for (StopReason)."""

from __future__ import annotations

import itertools
import math
import time

import pytest

from hpod.core.study import Launch
from hpod.daemon.runtime import _RUN_TRANSITIONS, RunState, StopReason, TrialRun
from hpod.daemon.slots import Slot
from hpod.errors import BadState

pytestmark = pytest.mark.anyio

ALLOWED = {
    (RunState.STARTING, RunState.RUNNING),
    (RunState.STARTING, RunState.STOPPING),
    (RunState.STARTING, RunState.EXITED),
    (RunState.RUNNING, RunState.STOPPING),
    (RunState.RUNNING, RunState.EXITED),
    (RunState.STOPPING, RunState.STOPPING),
    (RunState.STOPPING, RunState.EXITED),
}

# The shortest way from STARTING to each state.
PATHS = {
    RunState.STARTING: [],
    RunState.RUNNING: [RunState.RUNNING],
    RunState.STOPPING: [RunState.STOPPING],
    RunState.EXITED: [RunState.EXITED],
}


def make_run() -> TrialRun:
    launch = Launch(trial_id=3, config={"x": 1}, resume_from=0.0, max_resource=9.0, fresh=True)
    return TrialRun(3, "token", launch, Slot(0), time.monotonic())


def run_in(state: RunState) -> TrialRun:
    run = make_run()
    for step in PATHS[state]:
        run.move(step)
    assert run.state is state
    return run


def test_the_table_is_the_one_these_tests_expect() -> None:
    table = {(a, b) for a, targets in _RUN_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED))
async def test_an_allowed_transition_moves_the_run(old: RunState, new: RunState) -> None:
    run = run_in(old)
    run.move(new)
    assert run.state is new


@pytest.mark.parametrize(
    ("old", "new"), sorted(set(itertools.product(RunState, RunState)) - ALLOWED)
)
async def test_any_other_transition_raises_bad_state_and_leaves_the_run_as_it_was(
    old: RunState, new: RunState
) -> None:
    run = run_in(old)
    with pytest.raises(BadState, match=f"run of trial 3 cannot go from {old} to {new}"):
        run.move(new)
    assert run.state is old


async def test_a_new_run_has_no_stop_and_no_deadline() -> None:
    run = make_run()
    assert run.state is RunState.STARTING
    assert run.stop_reason is None
    assert run.scope.deadline == math.inf
    assert not run.forces_stop
    assert not run.interrupted


async def test_request_stop_moves_the_run_to_stopping_with_its_deadline() -> None:
    run = run_in(RunState.RUNNING)
    assert run.request_stop(StopReason.DECISION, 100.0)
    assert run.state is RunState.STOPPING
    assert (run.stop_reason, run.scope.deadline) == (StopReason.DECISION, 100.0)


async def test_request_stop_never_lowers_the_reason() -> None:
    run = run_in(RunState.RUNNING)
    run.request_stop(StopReason.LIMIT, 100.0)
    run.request_stop(StopReason.DECISION, 100.0)
    assert run.stop_reason is StopReason.LIMIT
    run.request_stop(StopReason.TRIAL_TIME, 100.0)
    assert run.stop_reason is StopReason.LIMIT
    run.request_stop(StopReason.SHUTDOWN, 100.0)
    assert run.stop_reason is StopReason.SHUTDOWN
    run.request_stop(StopReason.USER, 100.0)
    assert run.stop_reason is StopReason.SHUTDOWN


async def test_request_stop_only_moves_the_deadline_nearer() -> None:
    run = run_in(RunState.RUNNING)
    run.request_stop(StopReason.DECISION, 100.0)
    run.request_stop(StopReason.LIMIT, 200.0)  # a sterner reason, but a later time
    assert run.scope.deadline == 100.0
    assert run.stop_reason is StopReason.LIMIT
    run.request_stop(StopReason.DECISION, 50.0)  # a milder reason may still bring it nearer
    assert run.scope.deadline == 50.0
    assert run.stop_reason is StopReason.LIMIT


async def test_a_stop_asked_before_the_process_started_holds() -> None:
    run = make_run()
    assert run.request_stop(StopReason.USER, 10.0)
    assert run.state is RunState.STOPPING
    run.move(RunState.EXITED)


async def test_request_stop_of_an_exited_run_is_false_and_changes_nothing() -> None:
    run = run_in(RunState.EXITED)
    assert not run.request_stop(StopReason.SHUTDOWN, 1.0)
    assert run.state is RunState.EXITED
    assert run.stop_reason is None
    assert run.scope.deadline == math.inf


async def test_cap_time_only_moves_the_deadline_nearer() -> None:
    run = run_in(RunState.RUNNING)
    run.request_stop(StopReason.DECISION, 100.0)
    run.cap_time(500.0)
    assert (run.time_cap, run.scope.deadline) == (500.0, 100.0)
    run.cap_time(20.0)
    assert (run.time_cap, run.scope.deadline) == (20.0, 20.0)
    assert run.stop_reason is StopReason.DECISION  # trial_time is not a stop until it fires


@pytest.mark.parametrize(
    ("reason", "forces", "interrupted"),
    [
        (StopReason.DECISION, False, False),
        (StopReason.TRIAL_TIME, True, False),
        (StopReason.LIMIT, True, False),
        (StopReason.USER, True, False),
        (StopReason.SHUTDOWN, True, True),
    ],
)
async def test_which_reasons_force_stop_and_which_interrupt(
    reason: StopReason, forces: bool, interrupted: bool
) -> None:
    assert reason.forces_stop is forces
    run = run_in(RunState.RUNNING)
    run.request_stop(reason, math.inf)
    assert run.forces_stop is forces
    assert run.interrupted is interrupted


def test_the_reasons_are_ordered_mildest_first() -> None:
    assert sorted(StopReason) == [
        StopReason.DECISION,
        StopReason.TRIAL_TIME,
        StopReason.LIMIT,
        StopReason.USER,
        StopReason.SHUTDOWN,
    ]
