"""The daemon: studies in memory, trials as subprocesses, everything durable in the store.

One anyio task group holds the socket server, the dispatcher and the signal watcher; a second one,
inside it, holds the trial tasks, so that on shutdown every trial is stopped and recorded before
the server goes away. The core decides; this module only carries the decisions out.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from hpod import __version__
from hpod.core import limits as lim
from hpod.core.spec import StudySpec
from hpod.core.states import StudyState, TrialState
from hpod.core.study import Launch, Study, TrialRecord
from hpod.daemon import notify
from hpod.daemon.config import DaemonConfig
from hpod.daemon.gpus import DevicePool, NvmlUnavailable, discover, load_nvml
from hpod.daemon.methods import Methods
from hpod.daemon.reports import build_report, report_summary, write_report
from hpod.daemon.runner import TrialLaunch, TrialProcess, TrialStartError, log_tail, looks_like_oom
from hpod.daemon.runtime import StudyRuntime, TrialRun
from hpod.daemon.server import Server
from hpod.daemon.slots import Slot
from hpod.daemon.store import Store, TrialRow
from hpod.daemon.views import best_view
from hpod.errors import (
    HpodError,
    SpecError,
)
from hpod.fit.fitter import Fitter

log = structlog.get_logger("hpod.daemon")

# How often a study's clocks reach the store between exits: what a SIGKILL can lose of them.
CLOCK_SAVE_SECONDS = 2.0


class Daemon:
    def __init__(self, config: DaemonConfig, *, socket_path: str, state_dir: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.started_at = time.monotonic()
        slots = config.cpu_slots if config.cpu_slots is not None else (os.cpu_count() or 1)
        self.pool = DevicePool(
            slots, config.gpu, cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        self._nvml: Any = None
        self.studies: dict[str, StudyRuntime] = {}
        self._store: Store | None = None
        self._wake = anyio.Event()
        self._shutdown = anyio.Event()
        self.shutting_down = False
        self.trial_tg: anyio.abc.TaskGroup | None = None
        self._rotation = 0
        # Model fits for BO and DyHPO studies, in a worker process: never on this loop.
        self.fitter = Fitter(self.wake, flag_dir=state_dir)

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store is open while the daemon serves"
        return self._store

    # -- lifetime --------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_not_already_served()
        self._store = Store.open(
            self.state_dir, durability="fsync" if self.config.durability == "fsync" else "normal"
        )
        try:
            await self._open_gpus()
            await self._restore()
            methods = Methods(self)
            server = Server(
                methods.table(), answering=methods.answering(), started_at=self.started_at
            )
            Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
            listener = await anyio.create_unix_listener(
                self.socket_path, mode=self.config.socket_mode
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals)
                tg.start_soon(self.fitter.run)
                async with listener:
                    tg.start_soon(listener.serve, server.handle)
                    async with anyio.create_task_group() as trial_tg:
                        self.trial_tg = trial_tg
                        trial_tg.start_soon(self._dispatch)
                        if self.pool.nvml:
                            # In the outer group: cancelled, not awaited, at shutdown.
                            tg.start_soon(self._refresh_gpus)
                        for study in self.studies.values():
                            if not study.done.is_set():
                                trial_tg.start_soon(self.watch_study, study)
                        log.info(
                            "serving",
                            socket=self.socket_path,
                            state_dir=str(self.state_dir),
                            slots=self.pool.size,
                            gpus=[g.uuid for g in self.pool.gpus],
                            studies=len(self.studies),
                            version=__version__,
                        )
                        notify.ready()
                        task_status.started()
                        await self._shutdown.wait()
                        await self._stop_everything()
                    tg.cancel_scope.cancel()
        finally:
            self.store.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            if self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
        log.info("stopped")

    # -- GPUs ------------------------------------------------------------------------------------

    def _ours(self) -> Any:
        """A test for pids hpod started: the daemon, and anything in a trial's session."""
        leaders = {
            r.proc.pid for s in self.studies.values() for r in s.runs.values() if r.proc is not None
        }
        me = os.getpid()

        def ours(pid: int) -> bool:
            if pid == me or pid in leaders:
                return True
            try:
                return os.getsid(pid) in leaders
            except OSError:
                return False

        return ours

    async def _open_gpus(self) -> None:
        try:
            self._nvml = await anyio.to_thread.run_sync(load_nvml)
            gpus = await anyio.to_thread.run_sync(discover, self._nvml, self._ours())
        except (NvmlUnavailable, Exception) as exc:  # a broken driver is no reason not to serve
            self._nvml = None
            log.info("no_gpus", reason=str(exc), cpu_slots=self.pool.size)
            return
        self.pool.nvml = True
        self.pool.update(gpus)
        if not self.pool.has_gpus:
            log.info(
                "no_gpus",
                reason="NVML sees no GPU that hpod may use",
                seen=[g.uuid for g in gpus],
                cpu_slots=self.pool.size,
            )
            return
        log.info("gpus", gpus=[g.to_dict() for g in self.pool.gpus])

    async def _refresh_gpus(self) -> None:
        while not self.shutting_down:
            await anyio.sleep(self.config.gpu.refresh_seconds)
            try:
                gpus = await anyio.to_thread.run_sync(discover, self._nvml, self._ours())
            except Exception as exc:
                log.warning("gpu_refresh_failed", error=str(exc))
                continue
            self.pool.update(gpus)
            self.wake()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                # Record only: the main task does the stopping.
                log.info("signal", signal=signal.Signals(signum).name)
                self._shutdown.set()

    def _check_not_already_served(self) -> None:
        path = self.socket_path
        if not os.path.exists(path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            return  # a stale socket from a daemon that died: safe to replace
        finally:
            probe.close()
        raise HpodError(
            f"another hpod is already serving on {path}; stop it first or choose another --socket"
        )

    async def _stop_everything(self) -> None:
        self.shutting_down = True
        notify.stopping()
        log.info("shutting_down", running=sum(len(s.runs) for s in self.studies.values()))
        self._wake.set()
        async with anyio.create_task_group() as tg:
            for study in self.studies.values():
                # The daemon being down does not count against optimization_time.
                study.stop_clock(time.monotonic())
                study.wake()
                for run in list(study.runs.values()):
                    tg.start_soon(partial(self.stop_run, interrupting=True), study, run)
        # The trial tasks record each trial as interrupted as its process is reaped; the trial
        # task group exits once the last one is done. The studies follow.
        for study in self.studies.values():
            if study.engine.state is StudyState.RUNNING:
                study.engine.interrupt()
                await self.store.update_study(study.id, state=study.engine.state.value)
            if not study.done.is_set():
                await self._save_clocks(study)

    # -- restore ---------------------------------------------------------------------------------

    async def _restore(self) -> None:
        for row in self.store.load_studies():
            try:
                spec = StudySpec.from_toml(row.spec_toml, base_dir=Path(row.base_dir))
            except SpecError as exc:
                log.error("study_unreadable", study=row.id, problems=list(exc.problems))
                continue
            trial_rows = self.store.load_trials(row.id)
            records = self._trial_records(spec, row.id, trial_rows)
            engine = Study.restore(
                spec, records, state=StudyState(row.state), end_reason=row.end_reason
            )
            was = engine.state
            engine.resume()
            if engine.state is not was:
                await self.store.update_study(row.id, state=engine.state.value)
            study = StudyRuntime(
                id=row.id,
                seq=row.seq,
                owner=row.owner_uid,
                spec=spec,
                engine=engine,
                folder=self.state_dir / "studies" / row.id,
                created=row.created_at,
                ended=row.ended_at,
                run_seconds={t.trial_id: t.run_seconds for t in trial_rows},
                compute_seconds={t.trial_id: t.compute_seconds for t in trial_rows},
                elapsed_base=row.elapsed,
                compute_base=row.compute,
            )
            if engine.state.is_final:
                study.done.set()
            elif engine.state is StudyState.RUNNING:
                study.start_clock(time.monotonic())
                study.fit_stats = self.fitter.add(row.id, engine)
            self.studies[row.id] = study
            again = engine.counts()[TrialState.INTERRUPTED.value]
            log.info(
                "study_restored",
                study=row.id,
                state=engine.state.value,
                trials=len(records),
                to_resume=again,
            )

    def _trial_records(
        self, spec: StudySpec, study_id: str, rows: list[TrialRow]
    ) -> list[TrialRecord]:
        curves: dict[int, dict[float, float]] = {}
        for rep in self.store.load_reports(study_id):
            if not rep.counted or rep.resource is None:
                continue
            value = rep.metrics.get(spec.objective.metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(rep.trial_id, {})[rep.resource] = float(value)
            elif value is not None:
                curves.setdefault(rep.trial_id, {})[rep.resource] = math.nan
        out = []
        for t in rows:
            out.append(
                TrialRecord(
                    trial_id=t.trial_id,
                    config=dict(t.config),
                    state=TrialState(t.state),
                    bracket=t.bracket,
                    resume_from=t.resume_from,
                    max_resource=t.max_resource,
                    runs=t.runs,
                    curve=tuple(sorted(curves.get(t.trial_id, {}).items())),
                    error=t.error,
                )
            )
        return out

    # -- dispatching -----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self.shutting_down:
            await self._fill_slots()
            await self._wake.wait()
            self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _wants_slot(self, study: StudyRuntime, now: float) -> bool:
        """Whether ``study`` may start a run now: under its cap, room in the pool, time left."""
        if study.engine.state is not StudyState.RUNNING:
            return False
        cap = study.spec.limits.max_concurrent
        if cap is not None and len(study.runs) >= cap:
            return False
        res = study.spec.resources
        if not self.pool.fits(res.gpus_per_trial, res.trials_per_gpu):
            return False
        return self._time_allows(study, now)

    def _time_allows(self, study: StudyRuntime, now: float) -> bool:
        """No run starts that could not finish its rung before a limit, at the measured pace."""
        spec = study.spec
        if spec.limits.optimization_time is None and spec.limits.compute_time is None:
            return True
        left = lim.time_left_for(
            spec.limits,
            study.clocks(now),
            study.devices_running(),
            spec.resources.gpus_per_trial,
        )
        return lim.could_finish(study.pace, lim.first_rung_span(spec.scheduler), left)

    async def _fill_slots(self) -> None:
        """Hand free slots to studies with work waiting, each up to its max_concurrent.

        The next slot goes to the study with the fewest runs for its priority, so studies
        submitted together share the pool in proportion to their priorities.
        """
        passed: set[str] = set()
        while not self.shutting_down:
            mono = time.monotonic()
            active = [
                s for s in self.studies.values() if s.id not in passed and self._wants_slot(s, mono)
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
            slot = self.pool.acquire(
                study.id, launch.trial_id, res.gpus_per_trial, res.trials_per_gpu
            )
            assert slot is not None, "fits() said there was room"
            self._rotation += 1
            study.launch_order = self._rotation
            await self._begin(study, launch, slot)
        mono = time.monotonic()
        for study in list(self.studies.values()):
            if (
                study.engine.state is StudyState.RUNNING
                and not study.runs
                and not study.engine.finished
                and not self._time_allows(study, mono)
            ):
                # Nothing runs and nothing may start: waiting for the deadline would only idle.
                await self._end_for_limit(study, self._time_reason(study, mono))
            await self.maybe_finish(study)

    def _time_reason(self, study: StudyRuntime, now: float) -> str:
        hit = lim.limit_hit(study.spec.limits, study.clocks(now))
        if hit is not None:
            return hit.reason
        per_unit = study.pace.per_unit or 0.0
        span = lim.first_rung_span(study.spec.scheduler)
        name = "optimization_time" if study.spec.limits.optimization_time else "compute_time"
        return (
            f"{name} limit nearly reached: too little time left for another rung "
            f"({span:g} {study.spec.objective.resource} at {per_unit:.3g}s each)"
        )

    async def _begin(self, study: StudyRuntime, launch: Launch, slot: Slot) -> None:
        token = secrets.token_hex(16)
        run = TrialRun(launch.trial_id, token, launch, slot, time.monotonic())
        run.mark_time, run.mark_resource = run.started, launch.resume_from
        study.runs[launch.trial_id] = run
        study.wake()  # the compute clock now runs faster: the deadline moves
        rec = study.engine.record(launch.trial_id)
        now = time.time()
        if launch.fresh and rec.runs == 1:
            await self.store.insert_trial(
                TrialRow(
                    study_id=study.id,
                    trial_id=rec.trial_id,
                    config=rec.config,
                    state=rec.state,
                    token=token,
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
            )
        else:
            await self.store.update_trial(
                study.id,
                rec.trial_id,
                state=rec.state.value,
                token=token,
                resume_from=rec.resume_from,
                max_resource=rec.max_resource,
                runs=rec.runs,
                started_at=now,
                ended_at=None,
            )
        log.info(
            "trial_launch",
            study=study.id,
            trial=launch.trial_id,
            resume_from=launch.resume_from,
            max_resource=launch.max_resource,
            config=launch.config,
        )
        assert self.trial_tg is not None
        self.trial_tg.start_soon(self._run_trial, study, run)

    def trial_dir(self, study: StudyRuntime, trial_id: int) -> Path:
        return study.folder / "trials" / str(trial_id)

    async def _run_trial(self, study: StudyRuntime, run: TrialRun) -> None:
        launch = run.launch
        trial_dir = self.trial_dir(study, run.trial_id)
        spec = study.spec
        as_user = study.owner if os.geteuid() == 0 and study.owner != 0 else None
        returncode: int | None = None
        error: str | None = None
        try:
            try:
                run.proc = await TrialProcess.start(
                    TrialLaunch(
                        study_id=study.id,
                        trial_id=run.trial_id,
                        command=spec.command,
                        config=launch.config,
                        workdir=spec.workdir,
                        trial_dir=trial_dir,
                        checkpoint_dir=trial_dir / "checkpoint",
                        socket_path=self.config.trial_socket or self.socket_path,
                        token=run.token,
                        resume_from=launch.resume_from,
                        max_resource=launch.max_resource,
                        devices=run.slot.devices,
                        extra_env=spec.env,
                        user=as_user,
                    )
                )
            except TrialStartError as exc:
                error = exc.message
            else:
                if run.stopping:
                    await run.proc.stop(spec.stop_grace)
                returncode = await self._wait_within_trial_time(study, run, run.proc)
                if returncode != 0 and not run.stopping:
                    tail = log_tail(trial_dir, "stderr", 20)
                    error = f"exited with status {returncode}"
                    if looks_like_oom(tail):
                        error += " (out of memory)"
        finally:
            run.exited.set()
            with anyio.CancelScope(shield=True):
                await self._after_exit(study, run, returncode, error)

    async def _wait_within_trial_time(
        self, study: StudyRuntime, run: TrialRun, proc: TrialProcess
    ) -> int:
        """The run's exit status; past trial_time (summed over the trial's runs) it is stopped."""
        limit = study.spec.limits.trial_time
        if limit is None:
            return await proc.wait()
        left = limit - study.run_seconds.get(run.trial_id, 0.0)
        with anyio.move_on_after(max(0.0, left)):
            return await proc.wait()
        log.info(
            "trial_time_limit",
            study=study.id,
            trial=run.trial_id,
            reason=f"trial_time limit of {limit:g}s reached",
        )
        run.stopping = True
        study.engine.mark_stopping(run.trial_id)
        return await proc.stop(study.spec.stop_grace)

    async def _after_exit(
        self, study: StudyRuntime, run: TrialRun, returncode: int | None, error: str | None
    ) -> None:
        engine = study.engine
        now = time.time()
        elapsed = time.monotonic() - run.started
        if returncode is None:
            engine.on_start_failed(run.trial_id, error or "could not start")
        elif run.interrupting:
            engine.on_interrupted(run.trial_id)
        else:
            engine.on_exit(run.trial_id, returncode, now, error)
        rec = engine.record(run.trial_id)
        study.runs.pop(run.trial_id, None)
        self.pool.release(run.slot)
        tid = run.trial_id
        study.run_seconds[tid] = study.run_seconds.get(tid, 0.0) + elapsed
        study.compute_seconds[tid] = study.compute_seconds.get(tid, 0.0) + elapsed * run.devices
        study.compute_base += elapsed * run.devices
        study.wake()
        await self.store.update_trial(
            study.id,
            tid,
            state=rec.state.value,
            ended_at=now,
            exit_code=returncode,
            run_seconds=study.run_seconds[tid],
            compute_seconds=study.compute_seconds[tid],
            error=rec.error,
        )
        log.info(
            "trial_exit",
            study=study.id,
            trial=run.trial_id,
            state=rec.state.value,
            returncode=returncode,
            seconds=round(elapsed, 3),
            error=rec.error,
        )
        await self._save_clocks(study)
        await self._prune_checkpoints(study)
        if not self.shutting_down:
            await self.maybe_finish(study)
            self.wake()

    async def maybe_finish(self, study: StudyRuntime) -> None:
        engine = study.engine
        if study.done.is_set() or study.ended is not None or self.shutting_down:
            return
        if not engine.finished:
            return
        if engine.state is StudyState.RUNNING:
            mono = time.monotonic()
            reason = lim.max_trials_reason(study.spec.limits, study.clocks(mono))
            engine.conclude(reason)
        study.ended = time.time()
        study.stop_clock(time.monotonic())
        await self.store.update_study(
            study.id,
            state=engine.state.value,
            ended_at=study.ended,
            end_reason=engine.end_reason,
            elapsed=study.elapsed_base,
            compute=study.compute_base,
        )
        await self._prune_checkpoints(study)
        await self._write_report(study)
        best = engine.best()
        log.info(
            "study_end",
            study=study.id,
            state=engine.state.value,
            reason=engine.end_reason,
            best=best_view(study.id, best),
        )
        study.done.set()

    async def stop_run(
        self, study: StudyRuntime, run: TrialRun, *, interrupting: bool = False
    ) -> None:
        run.stopping = True
        run.interrupting = run.interrupting or interrupting
        study.engine.mark_stopping(run.trial_id)
        if run.proc is not None:
            await run.proc.stop(study.spec.stop_grace)

    async def enforce_decision(self, study: StudyRuntime, run: TrialRun) -> None:
        """A trial told to PAUSE or STOP has the grace period to exit by itself."""
        with anyio.move_on_after(study.spec.stop_grace):
            await run.exited.wait()
            return
        if run.proc is not None and not run.exited.is_set():
            log.warning("trial_ignored_decision", study=study.id, trial=run.trial_id)
            await run.proc.stop(study.spec.stop_grace)

    # -- limits, clocks, reports -----------------------------------------------------------------

    async def _end_for_limit(self, study: StudyRuntime, reason: str) -> None:
        """A limit ends the study: runs get STOP at their next report and SIGTERM now, then the
        grace period to checkpoint, then SIGKILL (TrialProcess.stop)."""
        engine = study.engine
        if engine.state is not StudyState.RUNNING:
            return
        engine.end(StudyState.COMPLETED, reason)
        log.info("study_limit", study=study.id, reason=reason, running=sorted(study.runs))
        await self.store.update_study(study.id, state=engine.state.value, end_reason=reason)
        assert self.trial_tg is not None
        for run in list(study.runs.values()):
            if not run.stopping:
                self.trial_tg.start_soon(self.stop_run, study, run)
        await self.maybe_finish(study)

    async def _save_clocks(self, study: StudyRuntime) -> None:
        mono = time.monotonic()
        await self.store.update_study(
            study.id, elapsed=study.elapsed(mono), compute=study.compute(mono)
        )

    def build_report(self, study: StudyRuntime) -> dict[str, Any]:
        held = []
        for gpu in self.pool.view()["gpus"]:
            trials = [h["trial"] for h in gpu["holders"] if h["study"] == study.id]
            if trials:
                held.append(
                    {
                        "index": gpu["index"],
                        "uuid": gpu["uuid"],
                        "name": gpu["name"],
                        "trials": trials,
                        "utilization": gpu["utilization"],
                        "memory_used_mib": gpu["memory_used_mib"],
                        "memory_total_mib": gpu["memory_total_mib"],
                    }
                )
        return build_report(
            study.id,
            study.engine,
            clocks=study.clocks(time.monotonic()),
            now=time.time(),
            created=study.created,
            ended=study.ended,
            run_seconds=study.run_seconds,
            compute_seconds=study.compute_seconds,
            gpus=held,
        )

    async def _write_report(self, study: StudyRuntime) -> None:
        report = self.build_report(study)
        try:
            await anyio.to_thread.run_sync(write_report, study.folder, report)
        except OSError as exc:
            log.warning("report_write_failed", study=study.id, error=str(exc))
        log.info("objective_report", **report_summary(report))

    async def _prune_checkpoints(self, study: StudyRuntime) -> None:
        keep = study.spec.report.keep_checkpoints
        if keep is None:
            return
        engine = study.engine
        rows = [
            (t.trial_id, t.state, engine.value_of(t.trial_id) if t.curve else None)
            for t in engine.trials
        ]
        doomed = [
            tid
            for tid in lim.checkpoints_to_delete(engine.objective, rows, keep)
            if tid not in study.pruned
        ]
        for tid in doomed:
            study.pruned.add(tid)
            path = self.trial_dir(study, tid) / "checkpoint"
            await anyio.to_thread.run_sync(partial(shutil.rmtree, path, ignore_errors=True))
        if doomed:
            log.info("checkpoints_deleted", study=study.id, trials=doomed, keep=keep)

    async def watch_study(self, study: StudyRuntime) -> None:
        """The study's timers: its limits' deadline, its report period, saving its clocks.

        It sleeps until the nearest of them, or until poked (a run started or ended, which
        moves the compute deadline), instead of polling.
        """
        period = study.spec.report.period
        mono = time.monotonic()
        next_report = mono + period
        next_save = mono + CLOCK_SAVE_SECONDS
        while not study.done.is_set() and not self.shutting_down:
            mono = time.monotonic()
            if study.engine.state is StudyState.RUNNING:
                hit = lim.limit_hit(study.spec.limits, study.clocks(mono))
                if hit is not None:
                    await self._end_for_limit(study, hit.reason)
            if study.done.is_set():
                break
            if mono >= next_report:
                await self._write_report(study)
                next_report = max(next_report + period, mono + period / 2)
            if mono >= next_save:
                await self._save_clocks(study)
                next_save = mono + CLOCK_SAVE_SECONDS
            delay = min(next_report, next_save) - mono
            if study.engine.state is StudyState.RUNNING:
                delay = min(
                    delay,
                    lim.seconds_to_limit(
                        study.spec.limits, study.clocks(mono), study.devices_running()
                    ),
                )
            with anyio.move_on_after(max(delay, 0.005)):
                await study.poke.wait()
            study.poke = anyio.Event()
