"""The trials service with real parts: a store in a tmp folder, a pool of CPU slots, real trial
subprocesses; a ``RunHooks`` recorder stands in for the studies service.

A stop is the run's cancel-scope deadline: these tests ask for stops the ways the daemon does
(a PAUSE answer, a limit, trial_time, the shutdown, a task group cancelled from outside) and
read how each run ended from the engine and the store.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod.core.spec import StudySpec
from hpod.core.states import StudyState, TrialState
from hpod.core.study import Study
from hpod.daemon import trials as trials_module
from hpod.daemon.config import DaemonConfig
from hpod.daemon.gpus import DevicePool
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.store import Store, StudyRow, TrialRow
from hpod.daemon.trials import Trials, trial_dir
from tests.daemon.fakes import spec_toml

pytestmark = pytest.mark.anyio

GRACE = 0.5

# Says it is ready (atomically: write, then rename) and sleeps until it is stopped.
SLEEPER = """
import os, signal, time
if os.environ.get("TRAP"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready = os.path.join(os.environ["HPOD_TRIAL_DIR"], "ready")
open(ready + ".tmp", "w").close()
os.replace(ready + ".tmp", ready)
while True:
    time.sleep(60)
"""


def spec_text(*, limits: str = "max_trials = 1", env: str = "", grace: float = GRACE) -> str:
    return spec_toml(
        "t",
        command=json.dumps([sys.executable, "-c", textwrap.dedent(SLEEPER)]),
        top=f'stop_grace_period = "{grace}s"\nenv = {{ {env} }}',
        scheduler='type = "asha"\nmax_resource = 9',
        limits=limits,
    )


class Hooks:
    """A RunHooks that records each end, with how the engine and the store saw it then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ended: list[tuple[dict[int, TrialState], dict[int, TrialRow]]] = []
        self.settled = 0
        self.nothing: list[str] = []
        self._changed = anyio.Event()

    async def run_ended(self, study: StudyRuntime) -> None:
        states = {rec.trial_id: rec.state for rec in study.engine.records()}
        rows = {row.trial_id: row for row in self.store.load_trials(study.id)}
        self.ended.append((states, rows))
        self._changed.set()
        self._changed = anyio.Event()

    async def nothing_to_run(self, study: StudyRuntime, reason: str) -> None:
        self.nothing.append(reason)

    async def settle(self, study: StudyRuntime) -> None:
        self.settled += 1

    async def ends(self, count: int, timeout: float = 20.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.ended) < count:
                await self._changed.wait()


@dataclasses.dataclass
class Rig:
    trials: Trials
    hooks: Hooks
    study: StudyRuntime
    store: Store


async def make_study(store: Store, root: Path, spec: StudySpec) -> StudyRuntime:
    study = StudyRuntime(
        id="t-1",
        seq=1,
        owner=0,
        spec=spec,
        engine=Study.new(spec),
        folder=root / "studies" / "t-1",
        created=time.time(),
    )
    await store.insert_study(
        StudyRow(
            id=study.id,
            seq=1,
            name=spec.name,
            owner_uid=0,
            spec_toml="",
            base_dir=str(root),
            state=StudyState.RUNNING,
            created_at=study.created,
        )
    )
    return study


@asynccontextmanager
async def serving(
    store: Store,
    root: Path,
    spec: StudySpec,
    *,
    folder: Path | None = None,
    config: DaemonConfig | None = None,
) -> AsyncIterator[Rig]:
    """A dispatcher running in a task group, as the daemon runs it; stopped (cancelled) after."""
    study = await make_study(store, root, spec)
    if folder is not None:
        study.folder = folder
    trials = Trials(
        config or DaemonConfig.defaults(),
        DevicePool(1),
        store,
        {study.id: study},
        trial_socket=str(root / "s"),
    )
    hooks = Hooks(store)
    trials.hooks = hooks
    async with anyio.create_task_group() as tg:
        trials.tg = tg
        tg.start_soon(trials.dispatch)
        yield Rig(trials, hooks, study, store)
        trials.close()
        tg.cancel_scope.cancel()


def spec_of(root: Path, **kwargs: Any) -> StudySpec:
    return StudySpec.from_toml(spec_text(**kwargs), base_dir=root)


async def ready_run(rig: Rig, trial_id: int = 0, timeout: float = 10.0) -> TrialRun:
    """The run of ``trial_id`` once its process says it is ready."""
    ready = trial_dir(rig.study, trial_id) / "ready"
    with anyio.fail_after(timeout):
        while not ready.exists():
            await anyio.sleep(0.01)
    return rig.study.runs[trial_id]


def pause(rig: Rig, run: TrialRun) -> None:
    """Report the rung's level, as the trial.report method does: ASHA answers PAUSE."""
    outcome = rig.study.engine.on_report(run.trial_id, {"epoch": 1, "loss": 0.5}, time.time())
    assert outcome.decision.value == "PAUSE"
    rig.trials.after_report(rig.study, run, outcome)


async def test_a_run_that_ignores_pause_is_stopped_after_the_grace_period(
    store: Store, root: Path
) -> None:
    async with serving(store, root, spec_of(root)) as rig:
        run = await ready_run(rig)
        asked = time.monotonic()
        pause(rig, run)
        await rig.hooks.ends(1)
        took = time.monotonic() - asked
    assert GRACE <= took < GRACE + 5
    states, rows = rig.hooks.ended[0]
    assert states[0] is TrialState.PAUSED  # it answered PAUSE: paused, not failed
    assert rows[0].state is TrialState.PAUSED
    assert rows[0].exit_code == -signal.SIGTERM
    assert run.stop_reason is StopReason.DECISION


async def test_a_run_that_traps_sigterm_is_killed_after_a_second_grace_period(
    store: Store, root: Path
) -> None:
    async with serving(store, root, spec_of(root, env='TRAP = "1"')) as rig:
        run = await ready_run(rig)
        asked = time.monotonic()
        pause(rig, run)
        await rig.hooks.ends(1)
        took = time.monotonic() - asked
    assert 2 * GRACE <= took < 2 * GRACE + 5
    states, rows = rig.hooks.ended[0]
    assert rows[0].exit_code == -signal.SIGKILL
    assert states[0] is TrialState.PAUSED


async def test_a_limit_stop_sends_sigterm_at_once(store: Store, root: Path) -> None:
    # A grace period far longer than the test: only an immediate SIGTERM ends it in time.
    async with serving(store, root, spec_of(root, grace=60)) as rig:
        run = await ready_run(rig)
        asked = time.monotonic()
        rig.trials.stop_run(rig.study, run, StopReason.LIMIT)
        await rig.hooks.ends(1)
        took = time.monotonic() - asked
    assert took < 10
    states, rows = rig.hooks.ended[0]
    assert rows[0].exit_code == -signal.SIGTERM
    assert states[0] is TrialState.STOPPED
    assert rows[0].error is None  # a stop the daemon asked for is no failure


async def test_trial_time_stops_a_run(store: Store, root: Path) -> None:
    spec = spec_of(root, limits='max_trials = 1\ntrial_time = "0.5s"', grace=60)
    async with serving(store, root, spec) as rig:
        run = await ready_run(rig)
        await rig.hooks.ends(1)
    assert run.stop_reason is StopReason.TRIAL_TIME
    states, rows = rig.hooks.ended[0]
    assert states[0] is TrialState.STOPPED
    assert rows[0].exit_code == -signal.SIGTERM
    assert rows[0].run_seconds >= 0.5


async def test_a_shutdown_stop_records_the_trial_interrupted_not_failed(
    store: Store, root: Path
) -> None:
    async with serving(store, root, spec_of(root)) as rig:
        run = await ready_run(rig)
        rig.trials.close()
        rig.trials.stop_all(rig.study, StopReason.SHUTDOWN)
        await rig.hooks.ends(1)
    assert run.interrupted
    states, rows = rig.hooks.ended[0]
    assert states[0] is TrialState.INTERRUPTED
    assert rows[0].state is TrialState.INTERRUPTED
    assert rows[0].error is None


async def test_the_daemons_stop_grace_bounds_a_shutdown_stop(store: Store, root: Path) -> None:
    # The study asks a minute between SIGTERM and SIGKILL; the daemon's own stop_grace is shorter.
    config = DaemonConfig.defaults().with_overrides(stop_grace=GRACE)
    spec = spec_of(root, env='TRAP = "1"', grace=60)
    async with serving(store, root, spec, config=config) as rig:
        run = await ready_run(rig)
        asked = time.monotonic()
        rig.trials.stop_all(rig.study, StopReason.SHUTDOWN)
        await rig.hooks.ends(1)
        took = time.monotonic() - asked
    assert GRACE <= took < GRACE + 5
    states, rows = rig.hooks.ended[0]
    assert rows[0].exit_code == -signal.SIGKILL
    assert states[0] is TrialState.INTERRUPTED
    assert run.interrupted


async def test_a_command_that_cannot_be_rendered_fails_that_trial_and_the_dispatcher_goes_on(
    store: Store, root: Path
) -> None:
    # A spec stored before the placeholder check existed: `{x:zz}` is no format for a float.
    spec = dataclasses.replace(spec_of(root, limits="max_trials = 2"), command=("echo", "{x:zz}"))
    async with serving(store, root, spec) as rig:
        await rig.hooks.ends(2)
    states, rows = rig.hooks.ended[-1]
    assert states == {0: TrialState.FAILED, 1: TrialState.FAILED}
    for row in rows.values():
        assert row.state is TrialState.FAILED
        assert row.error is not None
        assert row.error.startswith("could not start: cannot format placeholder {x}")
        assert row.exit_code is None


async def test_a_trial_folder_that_cannot_be_made_fails_that_trial_and_the_dispatcher_goes_on(
    store: Store, root: Path
) -> None:
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    spec = spec_of(root, limits="max_trials = 2")
    async with serving(store, root, spec, folder=blocker / "study") as rig:
        await rig.hooks.ends(2)
    states, rows = rig.hooks.ended[-1]
    assert states == {0: TrialState.FAILED, 1: TrialState.FAILED}
    for row in rows.values():
        assert row.error is not None
        assert row.error.startswith("could not start: ")
        assert "Not a directory" in row.error


async def test_a_run_cancelled_from_outside_is_recorded_interrupted(
    store: Store, root: Path
) -> None:
    async with serving(store, root, spec_of(root)) as rig:
        run = await ready_run(rig)
    # Leaving the block cancelled the task group under the running trial.
    assert run.interrupted
    states, rows = rig.hooks.ended[0]
    assert states[0] is TrialState.INTERRUPTED
    assert rows[0].state is TrialState.INTERRUPTED
    assert rows[0].error is None


async def test_a_run_cancelled_while_its_process_starts_is_recorded_interrupted(
    store: Store, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starting = anyio.Event()

    async def slow_start(launch: object, **kwargs: object) -> None:
        starting.set()
        await anyio.sleep_forever()

    monkeypatch.setattr(trials_module.TrialProcess, "start", slow_start)
    async with serving(store, root, spec_of(root)) as rig:
        with anyio.fail_after(10):
            await starting.wait()
    states, rows = rig.hooks.ended[0]
    assert states[0] is TrialState.INTERRUPTED, rows[0].error
    assert rows[0].state is TrialState.INTERRUPTED
    assert rows[0].error is None
