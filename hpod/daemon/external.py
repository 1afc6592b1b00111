"""Trials the daemon hands out instead of starting: ``ask`` and ``tell`` (issue 14, item 6).

A study with ``[executor] type = "external"`` is never launched by the dispatcher. ``ask`` takes
what the engine would launch next (the study's max_concurrent, its time limits and the disk's
hold apply as to a launch; no slot of the pool is taken: the caller runs the trial on its own
machine) and hands it out. It is a run like any other: its ``trials`` row, its ``live_runs`` row,
its token; only it has no process. Its task waits on the run's cancel scope, as a local run's
waits for its process, so every stop (a PAUSE or STOP answer's grace period, a limit, a user's
stop, trial_time) is the same deadline; inside it, the lease: a handed-out trial that sends
nothing (no report, no tell) for ``lease`` seconds is taken back, recorded interrupted, and the
next ``ask`` hands it out again, resumed from its last counted level.

The trial reports with ``hpod.trial`` from the environment ``ask`` answered (the same answers,
CONTINUE, PAUSE, STOP), or its caller tells (``tell``): metrics are a report, ``final`` ends the
run as an exit 0 ends a local one. A daemon that stops (SIGTERM) or dies leaves handed-out runs
as they are: their reports wait for the next daemon (``HPOD_RECONNECT_TIMEOUT``), which adopts
them again from ``live_runs`` with a fresh lease. docs/python-api.md says it for users.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import structlog

from hpod.core.states import StudyState
from hpod.core.study import Launch
from hpod.daemon.answers import Answer
from hpod.daemon.disk import Disk
from hpod.daemon.runner import TrialLaunch, trial_environment
from hpod.daemon.runtime import RunState, StopReason, StudyRuntime, TrialRun
from hpod.daemon.slots import Slot
from hpod.daemon.statetree import UnsafePath, open_dir, owner_ids
from hpod.daemon.store import LiveRunRow, ReportRow
from hpod.errors import BadState

log = structlog.get_logger("hpod.daemon")

# The slot of every handed-out run: none of the pool's (which never sees it: nothing is acquired,
# claimed or released for it). A run on it counts as one device for compute_time.
EXTERNAL_SLOT = Slot(index=-(1 << 62))

# How a handed-out run's wait ended: told final, its lease ran out, ended by a stop once its
# grace period was over, or left as it is to the next daemon (a shutdown).
Outcome = Literal["final", "lease", "ended", "left"]


def final_metrics(study: StudyRuntime, run: TrialRun, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A final tell's metrics: without the resource key they stand at the level the run was
    handed out for (its ``max_resource``): the caller ran the whole budget it was given."""
    out = dict(metrics)
    out.setdefault(study.spec.objective.resource, run.launch.max_resource)
    return out


class RunHost(Protocol):
    """What of the trials service (hpod.daemon.trials.Trials, which holds this one) a handed-out
    run uses: a run begun and recorded as any launch is. A protocol, not an import: the trials
    service imports this module."""

    closed: bool
    disk: Disk
    _adopted: list[tuple[StudyRuntime, TrialRun]]

    def time_allows(self, study: StudyRuntime, now: float) -> bool: ...

    async def _begin(
        self, study: StudyRuntime, launch: Launch, slot: Slot, *, external: bool = False
    ) -> TrialRun: ...

    def _trial_launch(self, study: StudyRuntime, run: TrialRun) -> TrialLaunch: ...

    async def _after_exit(
        self, study: StudyRuntime, run: TrialRun, returncode: int | None, error: str | None
    ) -> None: ...


class HeldAnswer(Answer):
    """A report's answer kept for ``tell`` instead of sent on the trial's socket: the report
    path (``Methods._trial_report``) prepares and settles it as ever (the writer thread settles
    it once the report is committed), and ``tell`` awaits :meth:`result`, so that a final tell
    answers only once the run's end is recorded too."""

    __slots__ = ("_future", "_result")

    def __init__(self) -> None:  # no socket: nothing of Answer's sending is used
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[Any] = self._loop.create_future()
        self._result: Any = None

    def prepare(self, result: Any) -> None:
        self._result = result

    def settle(self, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            self._loop.call_soon_threadsafe(self._resolve, error)

    def _resolve(self, error: BaseException | None) -> None:
        if self._future.done():
            return
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(self._result)

    async def result(self) -> Any:
        return await self._future


class ExternalRuns:
    """Hands out the runs of external studies, waits on them, takes them back."""

    def __init__(self, trials: RunHost) -> None:
        self.trials = trials
        # Set once a handed-out run's end is recorded (by id of its TrialRun): a final tell
        # answers after it, so the caller reads the trial's new state at once.
        self._recorded: dict[int, anyio.Event] = {}

    # -- ask -------------------------------------------------------------------------------------

    def may_hand_out(self, study: StudyRuntime, now: float) -> bool:
        """Whether ``study`` may have one more trial out now (as ``wants_slot``, less the pool)."""
        trials = self.trials
        if trials.closed or trials.disk.held is not None:
            return False
        if study.engine.state is not StudyState.RUNNING:
            return False
        cap = study.spec.limits.max_concurrent
        if cap is not None and len(study.runs) >= cap:
            return False
        return trials.time_allows(study, now)

    async def ask(self, study: StudyRuntime) -> dict[str, Any] | None:
        """The next trial of ``study`` to run, handed out; None when none may run now."""
        if not study.spec.executor.external:
            raise BadState(
                f"study {study.id} runs its own trials (executor local); ask is for a study "
                'with [executor] type = "external"'
            )
        if not self.may_hand_out(study, time.monotonic()):
            return None
        started = time.perf_counter()
        launch = study.engine.next_launch(time.time())
        study.fit_stats.decide_seconds.append(time.perf_counter() - started)
        if launch is None:
            return None
        run = await self.trials._begin(study, launch, EXTERNAL_SLOT, external=True)
        env = self.environment(study, run)
        await anyio.to_thread.run_sync(self._make_folders, study, env)
        return {
            "study": study.id,
            "trial": run.trial_id,
            "config": dict(launch.config),
            "token": run.token,
            "env": env,
            "resume_from": launch.resume_from,
            "max_resource": launch.max_resource,
            "lease": study.spec.executor.lease,
        }

    def environment(self, study: StudyRuntime, run: TrialRun) -> dict[str, str]:
        """The ``HPOD_*`` variables a local run of this trial would get, made the same way."""
        launch = dataclasses.replace(self.trials._trial_launch(study, run), user=None)
        return {k: v for k, v in trial_environment(launch, {}).items() if k.startswith("HPOD_")}

    @staticmethod
    def _make_folders(study: StudyRuntime, env: Mapping[str, str]) -> None:
        """The trial folder and its checkpoint folder, the owner's, as a launch makes them: a
        trial may save there, and a resumed one finds its checkpoint there."""
        ids = owner_ids(study.owner)
        top = study.folder.parent
        for key in ("HPOD_CHECKPOINT_DIR", "HPOD_TRIAL_DIR"):
            try:
                os.close(open_dir(top, Path(env[key]), ids, create=True))
            except (OSError, UnsafePath) as exc:
                # The caller may keep its checkpoints elsewhere: no reason to refuse the trial.
                detail = exc.message if isinstance(exc, UnsafePath) else str(exc)
                log.warning("external_folder_not_made", study=study.id, folder=key, error=detail)

    # -- tell ------------------------------------------------------------------------------------

    async def finish(self, run: TrialRun) -> None:
        """``tell(final=true)``: the run ends now, as a local one whose process exited 0;
        returns once its end is recorded."""
        assert run.told_final is not None, "a handed-out run has its final event"
        run.told_final.set()
        recorded = self._recorded.get(id(run))
        if recorded is not None:
            await recorded.wait()

    @staticmethod
    def extend(study: StudyRuntime, run: TrialRun, mono: float) -> None:
        """A report (or tell) from a handed-out run: its lease runs from now."""
        run.lease_until = mono + study.spec.executor.lease

    # -- after a restart -------------------------------------------------------------------------

    def adopt(
        self,
        study: StudyRuntime,
        row: LiveRunRow,
        last: ReportRow | None,
        clocks_at: float | None,
    ) -> TrialRun:
        """Take a handed-out run an earlier daemon left (a shutdown or a crash) back: its token,
        what it was last told, a fresh lease (it had no daemon to report to meanwhile)."""
        mono = time.monotonic()
        run = TrialRun.adopted_from(
            row,
            study.engine.record(row.trial_id),
            EXTERNAL_SLOT,
            last,
            clocks_at,
            external=True,
            lease_until=mono + study.spec.executor.lease,
            told_final=anyio.Event(),
        )
        # What it was told still holds; a shutdown's stop (the only one stored) does not: a
        # handed-out run outlives its daemon.
        study.restate_stop(run, mono)
        study.runs[row.trial_id] = run
        self.trials._adopted.append((study, run))
        log.info(
            "trial_adopted",
            study=study.id,
            trial=row.trial_id,
            run=row.run,
            fate="external",
            why="handed out by ask; its caller runs it",
            stop=None if run.stop_reason is None else run.stop_reason.name,
        )
        return run

    # -- the run's task --------------------------------------------------------------------------

    async def run(self, study: StudyRuntime, run: TrialRun) -> None:
        """A handed-out run's task: wait for its end (told, lease, stop), then record it as a
        local run's exit is recorded; a shutdown leaves it, unrecorded, to the next daemon."""
        outcome: Outcome = "left"  # cancelled from outside: the daemon's trouble, not the trial's
        recorded = self._recorded[id(run)] = anyio.Event()
        try:
            if run.state is RunState.STARTING:
                run.move(RunState.RUNNING)
            limit = study.spec.limits.trial_time
            if limit is not None:
                used = study.run_seconds.get(run.trial_id, 0.0)
                run.cap_time(run.started + max(0.0, limit - used))
            outcome = await self._wait(study, run)
        finally:
            if outcome == "lease":
                run.lease_lost = True
                log.info(
                    "trial_lease_expired",
                    study=study.id,
                    trial=run.trial_id,
                    lease=study.spec.executor.lease,
                )
            if run.state is not RunState.EXITED:
                run.move(RunState.EXITED)
            run.exited.set()
            try:
                if outcome != "left":
                    with anyio.CancelScope(shield=True):
                        # A run its caller said ran out of memory (trial.oom, hpopt's
                        # reportOOM) ends as a local one whose process died of it.
                        oom = run.oom and outcome != "lease"
                        await self.trials._after_exit(
                            study,
                            run,
                            None if outcome == "lease" else 1 if oom else 0,
                            "its caller reported it out of memory" if oom else None,
                        )
            finally:
                self._recorded.pop(id(run), None)
                recorded.set()

    async def _wait(self, study: StudyRuntime, run: TrialRun) -> Outcome:
        told = run.told_final
        assert told is not None, "a handed-out run has its final event"
        with run.scope:
            while True:
                # Each report pushes the lease back without touching a timer (it only stores
                # a number): woken at the old end, the wait goes on to the new one.
                with anyio.move_on_at(run.lease_until):
                    await told.wait()
                    return "final"
                if time.monotonic() >= run.lease_until:
                    return "lease"
        # The scope fired: a stop was asked for (or trial_time ran out).
        if run.stop_reason is StopReason.SHUTDOWN:
            return "left"
        if not study.stop_if_out_of_time(run) and run.stop_reason is StopReason.DECISION:
            # Answered PAUSE or STOP, and its grace period is over without a final tell.
            return "ended"
        # A limit, a user's stop, trial_time: its reports are answered STOP from now, and it
        # has the grace period to tell final (a shutdown meanwhile cuts it to the daemon's).
        with run.grace, anyio.move_on_after(study.spec.stop_grace):
            await told.wait()
        return "ended"
