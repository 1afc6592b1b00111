"""The trials service: free slots go to studies, each run is a task that owns its process.

A run's task starts the process, waits for it inside the run's cancel scope, and reaps it; the
scope's deadline is the run's stop (a PAUSE answer's grace period, a limit, a user's stop, the
shutdown, trial_time). So stopping a run is moving that deadline, and the SIGTERM / grace / SIGKILL
recipe runs in exactly one place, after the scope is cancelled (trio's ``run_process`` shape).

This module never imports the studies service: it tells it about ends through ``RunHooks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import structlog

from hpod.core import limits as lim
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import Launch, ReportOutcome
from hpod.daemon import oomkill
from hpod.daemon.adoption import LeftRun
from hpod.daemon.budget import fixed_keys
from hpod.daemon.config import DaemonConfig
from hpod.daemon.containment import Containment, run_name
from hpod.daemon.disk import POLL_SECONDS, Disk
from hpod.daemon.events import EventLog
from hpod.daemon.external import ExternalRuns
from hpod.daemon.gpus import DevicePool
from hpod.daemon.logcap import cut_logs
from hpod.daemon.procid import ProcessIdentity
from hpod.daemon.runner import (
    LOG_STREAMS,
    TrialExit,
    TrialLaunch,
    TrialProcess,
    TrialStartError,
    WarmForkFailed,
    log_tail,
    looks_like_oom,
    trial_environment,
)
from hpod.daemon.runtime import RunState, StopReason, StudyRuntime, TrialRun
from hpod.daemon.slots import Slot
from hpod.daemon.slurm import SlurmRuns, may_submit, slot_for
from hpod.daemon.statetree import Ids, UnsafePath, owner_ids
from hpod.daemon.store import (
    LiveRunRow,
    Op,
    ReportRow,
    Store,
    TrialRow,
    delete_live_run_op,
    disk_full,
    insert_live_run_op,
    insert_trial_op,
    update_live_run_op,
    update_study_op,
    update_trial_op,
)
from hpod.daemon.warm import WarmPlan, WarmStarts, plan_for, server_environment
from hpod.errors import HpodError

log = structlog.get_logger("hpod.daemon")


class RunHooks(Protocol):
    """What the studies service hears from the trials service."""

    async def run_ended(self, study: StudyRuntime) -> None:
        """A run was reaped and recorded: clocks, checkpoints and the study's end follow."""

    async def nothing_to_run(self, study: StudyRuntime, reason: str) -> None:
        """Nothing runs and no run may start before the study's time limit: end it now."""

    async def settle(self, study: StudyRuntime) -> None:
        """After a round of dispatching: the study may have nothing left to do."""


def trial_dir(study: StudyRuntime, trial_id: int) -> Path:
    root = _checkpoint_root(study)
    if root is not None:
        # A Slurm study's trial folders on the storage every node shares (docs/slurm.md).
        return root / study.id / str(trial_id)
    return study.folder / "trials" / str(trial_id)


def _checkpoint_root(study: StudyRuntime) -> Path | None:
    slurm = study.spec.executor.slurm
    return None if slurm is None or slurm.checkpoint_root is None else Path(slurm.checkpoint_root)


def trial_top(study: StudyRuntime) -> Path:
    """The folder a trial folder is walked from: the daemon's studies/, or checkpoint_root."""
    root = _checkpoint_root(study)
    return root if root is not None else study.folder.parent


def trial_log(study: StudyRuntime, trial_id: int, stream: str = "stderr", lines: int = 20) -> str:
    """The tail of a trial's log, read as ``hpod.daemon.statetree`` says: walked from the
    daemon's ``studies/`` folder without following a link, and only the owner's regular file;
    UnsafePath for anything else (never read)."""
    return log_tail(
        trial_dir(study, trial_id),
        stream,
        lines,
        within=trial_top(study),
        ids=owner_ids(study.owner),
    )


def trial_log_or_refusal(
    study: StudyRuntime, trial_id: int, stream: str = "stderr", lines: int = 20
) -> str:
    """:func:`trial_log`, or the reason it was refused, in brackets, for a view."""
    try:
        return trial_log(study, trial_id, stream, lines)
    except UnsafePath as exc:
        return f"[{stream}.log not shown: {exc.message}]"


class Trials:
    def __init__(
        self,
        config: DaemonConfig,
        pool: DevicePool,
        store: Store,
        studies: dict[str, StudyRuntime],
        *,
        trial_socket: str,
        containment: Containment | None = None,
    ) -> None:
        self.config = config
        # A cgroup per run where the daemon can make one (hpod.daemon.containment); without
        # one, the shim's own subreaper clean-up.
        self.containment = containment or Containment.subreaper("no containment was configured")
        self.pool = pool
        self.store = store
        self.studies = studies
        self.trial_socket = trial_socket
        # HPOD_SOCKET for a trial on another machine (a Slurm job): the daemon's TCP endpoint
        # (hpod.daemon.tcp) once it listens, "tcp://host:port" or "tls://host:port"; None: none.
        self.trial_address: str | None = None
        self.hooks: RunHooks | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.closed = False  # the daemon is shutting down: nothing new starts
        self._wake = anyio.Event()
        self._rotation = 0
        # The state dir's free space: while it is short nothing starts, and the records of
        # launches and exits that the store cannot take are kept until it can.
        self.disk = Disk(store, store.path.parent, config.min_free_disk)
        self.disk.listen(lambda held: None if held else self.wake())
        # The event stream and the decision records (hpod.daemon.events), written with the
        # launches, exits and reports they tell of.
        self.events = EventLog(store)
        self._closing = anyio.Event()  # ends the disk's watcher at once, not a poll later
        self._log_targets: dict[tuple[str, int], tuple[Path, Path, Ids | None]] = {}
        # Where each run's shim writes the trial's exit status: the daemon's own folder (0700),
        # read after the run ends, and by the next daemon for a run that ended while none ran.
        self.status_dir = store.path.parent / "runs"
        self.status_dir.mkdir(mode=0o700, exist_ok=True)
        # Runs adopted at start-up (hpod.daemon.adoption), whose tasks start once runs may.
        self._adopted: list[tuple[StudyRuntime, TrialRun]] = []
        # The runs of external studies, handed out by `ask` instead of started here.
        self.external = ExternalRuns(self)
        # The fork servers of the studies that start their trials warm (hpod.daemon.warm).
        self.warm = WarmStarts()
        # The runs of Slurm studies, each a job (hpod.daemon.slurm), and what their trials
        # check a TLS endpoint against (trial_tls_cert).
        self.slurm = SlurmRuns(self)
        self.tls_ca = None if config.trial_tls_cert is None else str(config.trial_tls_cert)

    def _hooks(self) -> RunHooks:
        assert self.hooks is not None, "the studies service attaches itself at start-up"
        return self.hooks

    def spawn(self, fn: object, *args: object) -> None:
        assert self.tg is not None, "runs are started only while the daemon serves"
        self.tg.start_soon(fn, *args)  # type: ignore[arg-type]

    # -- dispatching -----------------------------------------------------------------------------

    async def dispatch(self) -> None:
        while not self.closed:
            await self.fill_slots()
            await self._wake.wait()
            self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    def wants_slot(self, study: StudyRuntime, now: float) -> bool:
        """Whether ``study`` may start a run now: under its cap, room in the pool, time left."""
        if study.engine.state is not StudyState.RUNNING or self.disk.held is not None:
            return False
        if study.spec.executor.external:
            return False  # its trials are handed out by `ask`, never started here
        if study.spec.executor.slurm is not None:
            # Jobs take no slot of the pool: max_concurrent bounds them, queued and running.
            return may_submit(study) and self.time_allows(study, now)
        cap = study.spec.limits.max_concurrent
        if cap is not None and len(study.runs) >= cap:
            return False
        res = study.spec.resources
        if not self.pool.fits(
            res.gpus_per_trial, res.trials_per_gpu, cpu_fallback=res.cpu_fallback
        ):
            return False
        return self.time_allows(study, now)

    @staticmethod
    def time_allows(study: StudyRuntime, now: float) -> bool:
        """No run starts that could not finish its rung before a limit, at the measured pace."""
        spec = study.spec
        if (
            spec.limits.optimization_time is None
            and spec.limits.compute_time is None
            and spec.limits.deadline is None
        ):
            return True
        left = lim.time_left_for(
            spec.limits,
            study.clocks(now),
            study.devices_running(),
            spec.resources.gpus_per_trial,
        )
        return lim.could_finish(study.pace, lim.first_rung_span(spec.scheduler), left)

    async def fill_slots(self) -> None:
        """Hand free slots to studies with work waiting, each up to its max_concurrent.

        The next slot goes to the study with the fewest runs for its priority, so studies
        submitted together share the pool in proportion to their priorities.
        """
        passed: set[str] = set()
        while not self.closed:
            mono = time.monotonic()
            active = [
                s for s in self.studies.values() if s.id not in passed and self.wants_slot(s, mono)
            ]
            if not active:
                break
            study = min(
                active,
                key=lambda s: ((len(s.runs) + 1) / max(s.spec.priority, 1e-3), s.launch_order),
            )
            started = time.perf_counter()
            launch = study.engine.next_launch(time.time())
            study.fit_stats.decide_seconds.append(time.perf_counter() - started)
            if launch is None:
                passed.add(study.id)
                continue
            res = study.spec.resources
            slurm = study.spec.executor.slurm
            slot = (
                slot_for(slurm)
                if slurm is not None
                else self.pool.acquire(
                    study.id,
                    launch.trial_id,
                    res.gpus_per_trial,
                    res.trials_per_gpu,
                    cpu_fallback=res.cpu_fallback,
                )
            )
            assert slot is not None, "fits() said there was room"
            self._rotation += 1
            study.launch_order = self._rotation
            await self._begin(study, launch, slot)
        if self.closed:
            return
        mono = time.monotonic()
        for study in list(self.studies.values()):
            if (
                study.engine.state is StudyState.RUNNING
                and not study.runs
                and not study.engine.finished
                and not self.time_allows(study, mono)
            ):
                # Nothing runs and nothing may start: waiting for the deadline would only idle.
                await self._hooks().nothing_to_run(study, self._time_reason(study, mono))
            await self._hooks().settle(study)

    @staticmethod
    def _time_reason(study: StudyRuntime, now: float) -> str:
        hit = lim.limit_hit(study.spec.limits, study.clocks(now))
        if hit is not None:
            return hit.reason
        per_unit = study.pace.per_unit or 0.0
        span = lim.first_rung_span(study.spec.scheduler)
        limits = study.spec.limits
        name = (
            "optimization_time"
            if limits.optimization_time
            else "compute_time"
            if limits.compute_time
            else "deadline"
        )
        return (
            f"{name} limit nearly reached: too little time left for another rung "
            f"({span:g} {study.spec.objective.resource} at {per_unit:.3g}s each)"
        )

    async def _begin(
        self, study: StudyRuntime, launch: Launch, slot: Slot, *, external: bool = False
    ) -> TrialRun:
        token = secrets.token_hex(16)
        mono = time.monotonic()
        run = TrialRun(launch.trial_id, token, launch, slot, mono, external=external)
        if external:
            run.lease_until, run.told_final = mono + study.spec.executor.lease, anyio.Event()
        run.mark_time, run.mark_resource = run.started, launch.resume_from
        if study.spec.executor.slurm is not None:
            SlurmRuns.begun(run)
        study.runs[launch.trial_id] = run
        study.wake()  # the compute clock now runs faster: the deadline moves
        rec = study.engine.record(launch.trial_id)
        now = time.time()
        # Written with the trial's row, before the process exists: a daemon killed from here
        # on finds the run in live_runs, and adopts its process or knows it never started.
        live = insert_live_run_op(
            LiveRunRow(
                study_id=study.id,
                trial_id=rec.trial_id,
                run=rec.runs,
                token_hash=run.token_hash.hex(),
                devices=slot.devices,
                launched_at=now,
            )
        )
        # The decisions that made it and its trial_started / trial_resumed, in its commit.
        told = self.events.launch_ops(study, launch, rec.runs, now)
        ops: list[Op]
        if launch.fresh and rec.runs == 1 and rec.trial_id not in study.unrun:
            ops = [
                insert_trial_op(
                    TrialRow(
                        study_id=study.id,
                        trial_id=rec.trial_id,
                        config=rec.config,
                        state=rec.state,
                        token=run.token_hash.hex(),
                        bracket=rec.bracket,
                        resume_from=rec.resume_from,
                        max_resource=rec.max_resource,
                        runs=rec.runs,
                        created_at=now,
                        started_at=now,
                        ended_at=None,
                        exit_code=None,
                        run_seconds=0.0,
                        compute_seconds=0.0,
                        error=None,
                    )
                ),
                live,
                *told,
            ]
        else:
            study.unrun.discard(rec.trial_id)
            ops = [
                update_trial_op(
                    study.id,
                    rec.trial_id,
                    state=rec.state.value,
                    token=run.token_hash.hex(),
                    resume_from=rec.resume_from,
                    max_resource=rec.max_resource,
                    runs=rec.runs,
                    started_at=now,
                    ended_at=None,
                ),
                live,
                *told,
            ]
        if external:
            await self.disk.write(*ops)
            ops = []
        log.info(
            "trial_launch",
            study=study.id,
            trial=launch.trial_id,
            resume_from=launch.resume_from,
            max_resource=launch.max_resource,
            config=launch.config,
            external=external,
        )
        # The launch's commit is the run task's first step, before its process exists: the next
        # slot's decision does not wait for it, and the launches of a burst share commits.
        self.spawn(self._run, study, run, ops)
        return run

    # -- runs an earlier daemon left -------------------------------------------------------------

    async def adopt(
        self,
        study: StudyRuntime,
        left: LeftRun,
        last: ReportRow | None,
        clocks_at: float | None,
    ) -> TrialRun:
        """Take over a run an earlier daemon left alive (or that ended while none ran): its
        slot and GPUs, its token, what it was last told; its task starts with the others'."""
        row = left.row
        res = study.spec.resources
        slot = self.pool.claim(study.id, row.trial_id, row.devices, res.trials_per_gpu)
        run = TrialRun.adopted_from(
            row,
            study.engine.record(row.trial_id),
            slot,
            last,
            clocks_at,
            ended=left.exit.ended_at if left.exit is not None else None,
        )
        if left.exit is not None:
            run.away, run.away_identity = left.exit.returncode, left.identity
        else:
            assert left.identity is not None
            run.proc = await TrialProcess.adopt(self._trial_launch(study, run), left.identity)
            if run.proc is None:
                # Gone between the survey and now: its status, if it wrote one, says how.
                late = TrialExit.read(Path(left.identity.status_path))
                run.away = late.returncode if late is not None else None
                run.away_identity = left.identity
        self._told_before(study, run, row)
        study.runs[row.trial_id] = run
        self._adopted.append((study, run))
        log.info(
            "trial_adopted",
            study=study.id,
            trial=row.trial_id,
            run=row.run,
            fate=left.fate,
            why=left.why,
            returncode=run.away,
            stop=None if run.stop_reason is None else run.stop_reason.name,
        )
        return run

    def _told_before(self, study: StudyRuntime, run: TrialRun, row: LiveRunRow) -> None:
        """What the earlier daemon had told the run still holds: a stop it asked for (the
        shutdown's: the trial is resumed after it exits), a PAUSE or STOP answer it gave, a
        study that has ended."""
        mono, wall = time.monotonic(), time.time()
        if run.proc is None and run.away is None:
            # Neither alive nor a status: it is recorded interrupted and resumed.
            run.request_stop(StopReason.SHUTDOWN, mono)
            return
        if row.stop_reason is not None:
            reason = StopReason(row.stop_reason)
            due = mono + max(0.0, (row.stop_at or wall) - wall)
            if reason.forces_stop:
                study.engine.mark_stopping(run.trial_id)
            run.request_stop(reason, due)
        study.restate_stop(run, mono)

    async def forget_left(self, runs: list[LeftRun]) -> None:
        """The runs left that were not adopted (gone, or of a study that could not be
        restored): no longer live. A process that is not provably the run's is never
        signalled; a run's own cgroup, which only its processes can be in, is emptied."""
        if not runs:
            return
        for left in runs:
            log.info(
                "trial_not_adopted",
                study=left.row.study_id,
                trial=left.row.trial_id,
                run=left.row.run,
                why=left.why,
            )
            cgroup = left.identity.cgroup if left.identity is not None else None
            if cgroup is not None:
                await anyio.to_thread.run_sync(self.containment.kill_and_remove, Path(cgroup))
        await self.disk.write(*(delete_live_run_op(r.row.study_id, r.row.trial_id) for r in runs))

    async def _store_identity(
        self, study: StudyRuntime, run: TrialRun, identity: ProcessIdentity
    ) -> None:
        await self.disk.write(
            update_live_run_op(study.id, run.trial_id, identity=identity.to_json())
        )

    def start_adopted(self) -> None:
        """Once runs may start: the tasks of the adopted runs."""
        for study, run in self._adopted:
            self.spawn(self._run, study, run)
        self._adopted.clear()

    # -- one run ---------------------------------------------------------------------------------

    def _trial_launch(self, study: StudyRuntime, run: TrialRun) -> TrialLaunch:
        folder = trial_dir(study, run.trial_id)
        top = trial_top(study)
        as_user = study.owner if os.geteuid() == 0 and study.owner != 0 else None
        return TrialLaunch(
            study_id=study.id,
            trial_id=run.trial_id,
            command=study.spec.command,
            config=run.launch.config,
            workdir=study.spec.workdir,
            trial_dir=folder,
            checkpoint_dir=folder / "checkpoint",
            socket_path=self.trial_socket,
            token=run.token,
            resume_from=run.launch.resume_from,
            max_resource=run.launch.max_resource,
            reconnect_timeout=study.spec.reconnect_timeout,
            devices=run.slot.devices,
            extra_env=study.spec.env,
            user=as_user,
            within=top,
            run=study.engine.trials[run.trial_id].runs,
            status_dir=self.status_dir,
        )

    async def _run(self, study: StudyRuntime, run: TrialRun, ops: list[Op] | None = None) -> None:
        """The run's task: store its launch (``ops``), start, wait inside the run's scope, stop
        when it fires, reap."""
        if run.external:
            await self.external.run(study, run)  # no process: its caller runs it
            return
        if run.slurm:
            if ops:
                # Its launch is stored before its job is submitted (and its handle with it).
                with anyio.CancelScope(shield=True):
                    await self.disk.write(*ops)
            await self.slurm.run(study, run)  # a Slurm job (hpod.daemon.slurm)
            return
        returncode: int | None = None
        error: str | None = None
        cgroup: Path | None = None  # the run's cgroup, once made
        try:
            try:
                if ops:
                    # Shielded: a run recorded as it ends must have been recorded as launched.
                    with anyio.CancelScope(shield=True):
                        await self.disk.write(*ops)
                if run.adopted:
                    pass  # started by an earlier daemon (hpod.daemon.adoption)
                elif self.disk.held is not None:
                    # The disk filled since the slot was handed out (the launch's own record
                    # could not be stored): nothing starts into a full disk. The finally below
                    # records the run interrupted, and the trial runs once there is room.
                    log.info("trial_launch_held", study=study.id, trial=run.trial_id)
                else:
                    # The submitter's environment as its submit carried it (a PATH that finds
                    # its venv's python), else (an old client's study) the daemon's own.
                    launch = self._trial_launch(study, run)
                    if self.containment.uses_cgroups:
                        # Made before the shim starts, which enters it before the trial does.
                        cgroup = self.containment.make(run_name(study.id, run.trial_id, launch.run))
                        launch = dataclasses.replace(launch, cgroup=cgroup)
                    run.proc = await self._start(study, run, launch)
                    # What proves the process is this run's, for the daemon after a crash.
                    await self.disk.write(
                        update_live_run_op(
                            study.id, run.trial_id, identity=run.proc.identity.to_json()
                        )
                    )
            except TrialStartError as exc:
                error = exc.message
            except Exception as exc:
                if disk_full(exc):
                    # No room for its folder or logs: the disk's trouble, not the trial's. With
                    # no error, the finally below records the run interrupted.
                    self.disk.noticed_full()
                    log.warning("trial_start_disk_full", study=study.id, trial=run.trial_id)
                else:
                    # Whatever else goes wrong launching one trial (a spec stored before a check
                    # existed, a folder it cannot make) fails that trial, never the daemon.
                    detail = (
                        exc.message
                        if isinstance(exc, HpodError)
                        else f"{type(exc).__name__}: {exc}"
                    )
                    error = f"could not start: {detail}"
                    log.warning(
                        "trial_start_error", study=study.id, trial=run.trial_id, error=error
                    )
            if run.away is not None:
                # It ended while no daemon watched; its shim wrote how.
                returncode = run.away
            elif run.proc is not None:
                if run.state is RunState.STARTING:
                    run.move(RunState.RUNNING)
                limit = study.spec.limits.trial_time
                if limit is not None:
                    used = study.run_seconds.get(run.trial_id, 0.0)
                    run.cap_time(run.started + max(0.0, limit - used))
                returncode = await self._wait(study, run, run.proc)
                if run.adopted and run.proc.status_missing and not run.forces_stop:
                    # Its shim left no status: killed, or it never had a trial to start (the
                    # earlier daemon died first). Resumed, never failed for it.
                    log.info("trial_adopted_without_status", study=study.id, trial=run.trial_id)
                    returncode = None
            if returncode is not None:
                if returncode != 0 and not run.forces_stop and self.disk.short():
                    # It died while the state dir was full: most likely of the full disk (a
                    # checkpoint or log write that failed). Interrupted, not failed: it runs
                    # again, from its checkpoint, once there is room.
                    log.warning(
                        "trial_exit_disk_full",
                        study=study.id,
                        trial=run.trial_id,
                        returncode=returncode,
                        held=self.disk.held,
                    )
                    run.request_stop(StopReason.SHUTDOWN, time.monotonic())
                elif returncode != 0 and not run.forces_stop:
                    tail = trial_log_or_refusal(study, run.trial_id, "stderr", 20)
                    error = f"exited with status {returncode}"
                    if run.oom or looks_like_oom(tail):
                        run.oom = True
                        error += " (out of memory)"
                    elif await self._oom_killed(run, returncode, cgroup):
                        run.oom = True
                        error += " (killed by the kernel's OOM killer)"
        finally:
            if returncode is None and error is None:
                # Cancelled from outside (the daemon's own trouble), while starting or running:
                # the trial did nothing wrong. Record it as interrupted so that it runs again,
                # not as failed, and stop its process if it has one.
                run.request_stop(StopReason.SHUTDOWN, time.monotonic())
            if run.proc is not None and returncode is None:
                with anyio.CancelScope(shield=True):
                    returncode = await run.proc.stop(
                        min(study.spec.stop_grace, self.config.stop_grace)
                    )
            run.move(RunState.EXITED)
            run.exited.set()
            with anyio.CancelScope(shield=True):
                await self._after_exit(study, run, returncode, error)
                await self._end_containment(study, run, cgroup)

    async def _oom_killed(self, run: TrialRun, returncode: int, made: Path | None) -> bool:
        """Whether the kernel's OOM killer ended the run (hpod.daemon.oomkill): its cgroup's
        memory.events count a kill, or (no count to read) the kernel's log names its trial
        process killed since the run started. Only for a SIGKILL hpod did not send."""
        if returncode != -signal.SIGKILL:
            return False
        ident, path = _run_cgroup(run, made)
        if path is not None:
            kills = await anyio.to_thread.run_sync(oomkill.cgroup_oom_kills, path)
            if kills is not None:
                return kills > 0
        if ident is None:
            return False
        # The kernel's log names the killed process with the monotonic clock's time; a run
        # adopted after a restart started before this daemon: its whole life is looked at.
        since = 0.0 if run.adopted else run.started
        return await anyio.to_thread.run_sync(oomkill.kernel_killed, ident.trial_pid, since)

    async def _start(self, study: StudyRuntime, run: TrialRun, launch: TrialLaunch) -> TrialProcess:
        """Start the run's process: forked from the study's fork server for a warm start (cold,
        as without it, when the server cannot be had or cannot fork)."""
        warm = None
        if study.spec.executor.warm_start:
            warm = await self.warm.server(lambda: self._warm_plan(study, launch), study.id)
        try:
            return await TrialProcess.start(
                launch,
                base_env=study.client_env,
                on_shim=lambda ident: self._store_identity(study, run, ident),
                warm=warm,
            )
        except WarmForkFailed as exc:
            self.warm.give_up(study.id, exc.message)
            return await TrialProcess.start(
                launch,
                base_env=study.client_env,
                on_shim=lambda ident: self._store_identity(study, run, ident),
            )

    def _warm_plan(self, study: StudyRuntime, launch: TrialLaunch) -> WarmPlan:
        env = trial_environment(
            launch, os.environ if study.client_env is None else study.client_env
        )
        return plan_for(
            study.id,
            study.spec.command,
            study.spec.workdir,
            study.spec.executor.warm_imports,
            server_environment(env),
            launch.user,
        )

    async def _end_containment(self, study: StudyRuntime, run: TrialRun, made: Path | None) -> None:
        """After the shim has exited: kill what is left in the run's cgroup (whatever escaped
        the shim) and remove it, and the run's status file, now that its exit is recorded."""
        proc = run.proc
        if proc is not None and proc.returncode is None:
            return  # still running (left to a daemon that takes over): not ours to end
        ident, path = _run_cgroup(run, made)
        if path is not None:
            removed = await anyio.to_thread.run_sync(self.containment.kill_and_remove, path)
            if not removed:
                log.warning(
                    "trial_cgroup_not_removed", study=study.id, trial=run.trial_id, cgroup=str(path)
                )
        if proc is not None:
            proc.forget_status()
        elif ident is not None:
            with contextlib.suppress(OSError):
                os.unlink(ident.status_path)

    async def _wait(self, study: StudyRuntime, run: TrialRun, proc: TrialProcess) -> int:
        with run.scope:
            return await proc.wait()
        # The scope fired: a stop was asked for (or trial_time ran out). The one stop recipe.
        if not study.stop_if_out_of_time(run) and run.stop_reason is StopReason.DECISION:
            log.warning("trial_ignored_decision", study=study.id, trial=run.trial_id)
        grace = study.spec.stop_grace
        if run.stop_reason is StopReason.SHUTDOWN:
            # The daemon's own stop_grace bounds a shutdown, whatever a study asks for: the
            # service manager's TimeoutStopSec is set against it.
            grace = min(grace, self.config.stop_grace)
        with anyio.CancelScope(shield=True):
            with run.grace:
                await proc.stop(grace)
            # Cut short by a shutdown (stop_run) or not, the stop has reaped the process.
            returncode = proc.returncode
        assert returncode is not None
        return returncode

    async def _after_exit(
        self, study: StudyRuntime, run: TrialRun, returncode: int | None, error: str | None
    ) -> None:
        engine = study.engine
        now = time.time()
        elapsed = time.monotonic() - run.started
        ended_itself = run.stop_reason in (None, StopReason.DECISION) and returncode == 0
        if study.budget is not None and run.counted > 0 and ended_itself and not run.external:
            # What the run spent after its last counted report: saving, a final evaluation.
            study.budget.end(time.monotonic() - run.mark_time)
            self.revise_budget(study, force=True)
        if run.interrupted:
            engine.on_interrupted(run.trial_id, ran=not run.never_ran)
        elif returncode is None:
            engine.on_start_failed(run.trial_id, error or "could not start")
        else:
            engine.on_exit(run.trial_id, returncode, now, error, oom=run.oom)
        rec = engine.record(run.trial_id)
        if rec.runs == 0:
            study.unrun.add(rec.trial_id)
        retried = rec.state is TrialState.PENDING and bool(rec.retries)
        study.runs.pop(run.trial_id, None)
        if not study.runs and engine.state is not StudyState.RUNNING:
            # Nothing runs and nothing will until it is resumed: its fork server goes.
            server = self.warm.forget(study.id)
            if server is not None:
                self.spawn(server.reap)
        if not run.remote:  # a handed-out run or a Slurm job took no slot of the pool
            self.pool.release(run.slot)
        tid = run.trial_id
        study.run_seconds[tid] = study.run_seconds.get(tid, 0.0) + elapsed
        study.compute_seconds[tid] = study.compute_seconds.get(tid, 0.0) + elapsed * run.devices
        study.compute_base += (time.monotonic() - run.compute_from) * run.devices
        study.wake()
        # Kept in memory while the disk is full, and stored once there is room. The run is no
        # longer live in the same commit: a restart never adopts or resumes it twice.
        await self.disk.write(
            update_trial_op(
                study.id,
                tid,
                state=rec.state.value,
                ended_at=now,
                exit_code=returncode,
                run_seconds=study.run_seconds[tid],
                compute_seconds=study.compute_seconds[tid],
                error=rec.error,
                runs=rec.runs,  # one fewer where the run never ran
                # An out-of-memory retry changes the configuration (the batch key halved).
                **(
                    {"config": rec.config, "retries": [r.to_dict() for r in rec.retries]}
                    if retried
                    else {}
                ),
            ),
            delete_live_run_op(study.id, tid),
            *self.events.exit_ops(study, rec, returncode, now),
        )
        if retried:
            last = rec.retries[-1]
            log.info(
                "trial_oom_retry",
                study=study.id,
                trial=tid,
                key=last.key,
                before=last.before,
                after=last.after,
                retry=len(rec.retries),
            )
            if run.slot.devices:
                share = 1.0 / study.spec.resources.trials_per_gpu
                had = self.pool.note_oom(study.id, tid, run.slot.devices, share)
                log.info("trial_oom_gpu_note", study=study.id, trial=tid, had_mib=had)
        log.info(
            "trial_exit",
            study=study.id,
            trial=run.trial_id,
            state=rec.state.value,
            returncode=returncode,
            seconds=round(elapsed, 3),
            error=rec.error,
        )
        await self._hooks().run_ended(study)
        if not self.closed:
            self.wake()

    # -- the time budget (hpod.daemon.budget) --------------------------------------------------

    def _measure(self, study: StudyRuntime, run: TrialRun, mono: float, resource: float) -> None:
        """A counted report's interval: the run's first (start-up and its first units) or a
        step between two reports (time per unit). An adopted run's first interval is not known
        from its launch, nor a handed-out one's start-up."""
        budget = study.budget
        assert budget is not None
        if run.counted == 0:
            if not run.adopted and not run.external:
                budget.first(mono - run.started, resource - run.launch.resume_from)
        else:
            budget.step(mono - run.mark_time, resource - run.mark_resource)
        self.revise_budget(study)

    def revise_budget(self, study: StudyRuntime, *, force: bool = False) -> None:
        """The estimate again; one that moved is applied (the study's optimization_time and
        max_trials), stored with its ``budget_revised`` event, and acted on at once."""
        budget = study.budget
        if budget is None or study.engine.state is not StudyState.RUNNING:
            return
        fixed = fixed_keys(study.changes)
        if not budget.revise(len(study.engine.trials), fixed, now=time.monotonic(), force=force):
            return
        study.spec = budget.apply(study.spec, fixed)
        study.engine.spec = study.spec  # the engine reads max_trials off its spec
        data = budget.event()
        log.info("budget_revised", study=study.id, **data)
        ops = (
            update_study_op(study.id, budget=budget.to_json()),
            self.events.op(study.id, None, "budget_revised", data, time.time()),
        )
        if self.tg is not None:
            self.spawn(self._store_budget, ops)
        study.wake()  # the watcher reads the new limit
        self.wake()  # more (or fewer) trials may start

    async def _store_budget(self, ops: tuple[Op, ...]) -> None:
        await self.disk.write(*ops)

    # -- the disk --------------------------------------------------------------------------------

    async def watch_disk(self) -> None:
        """While the daemon serves, every POLL_SECONDS: store the writes kept for lack of room
        and hold or lift by the free space (hpod.daemon.disk), and cut each running trial's logs
        that passed their log_limit to their tail (hpod.daemon.logcap)."""
        self.disk.attach()
        while not self.closed:
            with anyio.move_on_after(POLL_SECONDS):
                await self._closing.wait()
            if self.closed:
                return
            await self.disk.poll()
            await self._cut_logs()

    async def _cut_logs(self) -> None:
        # Each running trial's folder and owner are made once, not at every poll: at 1,000
        # trials the Path joins alone held the loop 12-15 ms every poll (bench/loopprobe).
        targets = self._log_targets
        running: list[tuple[StudyRuntime, int]] = []
        logs: list[tuple[Path, Path, Ids | None, int]] = []
        kept: dict[tuple[str, int], tuple[Path, Path, Ids | None]] = {}
        for study in self.studies.values():
            limit = study.spec.report.log_limit
            for tid, run in study.runs.items():
                if run.proc is None:
                    continue
                key = (study.id, tid)
                target = targets.get(key)
                if target is None:
                    target = (study.folder.parent, trial_dir(study, tid), owner_ids(study.owner))
                kept[key] = target
                running.append((study, tid))
                logs.append((*target, limit))
        self._log_targets = kept
        if not running:
            return
        # One worker thread's call for every running trial: one each was 500 hand-offs a
        # second with 1,000 trials running.
        cuts = await anyio.to_thread.run_sync(cut_logs, logs, LOG_STREAMS)
        for (study, tid), (_, _, _, limit), cut in zip(running, logs, cuts, strict=True):
            if cut:
                log.info("trial_log_cut", study=study.id, trial=tid, cut=cut, log_limit=limit)

    # -- stopping --------------------------------------------------------------------------------

    def stop_run(self, study: StudyRuntime, run: TrialRun, reason: StopReason) -> None:
        """End ``run`` now (SIGTERM, the grace period, SIGKILL): its task does the rest."""
        if reason.forces_stop:
            study.engine.mark_stopping(run.trial_id)
        run.request_stop(reason, time.monotonic())
        if reason is StopReason.SHUTDOWN:
            # A run already in its grace period (a user's stop, a limit) keeps only the daemon's
            # stop_grace of it: systemd's TimeoutStopSec is set against that.
            until = time.monotonic() + self.config.stop_grace
            run.grace.deadline = min(run.grace.deadline, until)

    def stop_all(self, study: StudyRuntime, reason: StopReason) -> None:
        for run in list(study.runs.values()):
            self.stop_run(study, run, reason)

    async def stop_and_wait(self, study: StudyRuntime, reason: StopReason) -> None:
        """Stop every run of ``study`` and return once each is reaped and recorded."""
        runs = list(study.runs.values())
        self.stop_all(study, reason)
        for run in runs:
            await run.exited.wait()

    def close(self) -> None:
        """Start nothing more (the daemon is shutting down)."""
        self.closed = True
        self._closing.set()
        self.warm.close_all()
        self.wake()

    # -- reports ---------------------------------------------------------------------------------

    def after_report(self, study: StudyRuntime, run: TrialRun, outcome: ReportOutcome) -> None:
        """The pace the limits plan with, and the grace period of a PAUSE or STOP answer."""
        if run.external:
            self.external.extend(study, run, time.monotonic())
        if outcome.counted and outcome.resource > run.mark_resource:
            mono = time.monotonic()
            study.pace = study.pace.add(mono - run.mark_time, outcome.resource - run.mark_resource)
            if study.budget is not None:
                self._measure(study, run, mono, outcome.resource)
            run.mark_time, run.mark_resource = mono, outcome.resource
            run.counted += 1
        if outcome.decision is not Decision.CONTINUE and run.stop_reason is None:
            # The trial has the grace period to save its checkpoint and exit by itself.
            run.request_stop(StopReason.DECISION, time.monotonic() + study.spec.stop_grace)


def _run_cgroup(run: TrialRun, made: Path | None) -> tuple[ProcessIdentity | None, Path | None]:
    """A run's process identity and its cgroup: the one made for it now, else the one its
    identity names (an adopted run's)."""
    proc = run.proc
    ident = proc.identity if proc is not None else run.away_identity
    named = ident.cgroup if ident is not None else None
    return ident, made if made is not None else Path(named) if named is not None else None
