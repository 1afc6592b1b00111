"""The daemon: studies in memory, trials as subprocesses, everything durable in the store.

One anyio task group holds the socket server, the dispatcher and the signal watcher; a second one,
inside it, holds the trial tasks, so that on shutdown every trial is stopped and recorded before
the server goes away. The core decides; this module only carries the decisions out.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
import secrets
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from hpod import __version__, notify
from hpod.config import DaemonConfig
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import Launch, Study, TrialRecord
from hpod.errors import (
    BadState,
    HpodError,
    InvalidParams,
    NotFound,
    PermissionDenied,
    ShuttingDown,
    SpecError,
    TokenRejected,
)
from hpod.runner import TrialLaunch, TrialProcess, TrialStartError, log_tail, looks_like_oom
from hpod.server import Peer, Server
from hpod.slots import Slot, SlotPool
from hpod.store import Store, StudyRow, TrialRow
from hpod.views import best_view, summary_view, trial_view

log = structlog.get_logger("hpod.daemon")


@dataclass
class TrialRun:
    """One run of one trial's process."""

    trial_id: int
    token: str
    launch: Launch
    slot: Slot
    started: float  # monotonic
    proc: TrialProcess | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    stopping: bool = False  # the daemon is ending this run itself
    interrupting: bool = False  # ... because it is shutting down: the trial runs again later


@dataclass
class StudyRuntime:
    id: str
    seq: int
    owner: int
    spec: StudySpec
    engine: Study
    folder: Path
    created: float
    ended: float | None = None
    runs: dict[int, TrialRun] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)
    # Seconds summed over a trial's runs (and x devices held), as the store keeps them.
    run_seconds: dict[int, float] = field(default_factory=dict)
    compute_seconds: dict[int, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return summary_view(
            self.id, self.engine, owner=self.owner, created=self.created, ended=self.ended
        )


def _param_str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"parameter {key!r} must be a non-empty string")
    return value


def _param_int(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"parameter {key!r} must be an integer")
    return value


class Daemon:
    def __init__(self, config: DaemonConfig, *, socket_path: str, state_dir: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.started_at = time.monotonic()
        slots = config.cpu_slots if config.cpu_slots is not None else (os.cpu_count() or 1)
        self.pool = SlotPool.cpu(slots)
        self.studies: dict[str, StudyRuntime] = {}
        self._store: Store | None = None
        self._wake = anyio.Event()
        self._shutdown = anyio.Event()
        self.shutting_down = False
        self._trial_tg: anyio.abc.TaskGroup | None = None
        self._rotation = 0
        self._methods = {
            "ping": self._ping,
            "submit": self._submit,
            "studies": self._studies,
            "study": self._study,
            "trials": self._trials,
            "best": self._best,
            "stop": self._stop,
            "wait": self._wait,
            "logs": self._logs,
            "trial.report": self._trial_report,
            "trial.oom": self._trial_oom,
        }

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
            await self._restore()
            server = Server(self._methods, started_at=self.started_at)  # type: ignore[arg-type]
            Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
            listener = await anyio.create_unix_listener(
                self.socket_path, mode=self.config.socket_mode
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals)
                async with listener:
                    tg.start_soon(listener.serve, server.handle)
                    async with anyio.create_task_group() as trial_tg:
                        self._trial_tg = trial_tg
                        trial_tg.start_soon(self._dispatch)
                        log.info(
                            "serving",
                            socket=self.socket_path,
                            state_dir=str(self.state_dir),
                            slots=self.pool.size,
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
        log.info("stopped")

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
                for run in list(study.runs.values()):
                    tg.start_soon(partial(self._stop_run, interrupting=True), study, run)
        # The trial tasks record each trial as interrupted as its process is reaped; the trial
        # task group exits once the last one is done. The studies follow.
        for study in self.studies.values():
            if study.engine.state is StudyState.RUNNING:
                study.engine.interrupt()
                await self.store.update_study(study.id, state=study.engine.state.value)

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
            )
            if engine.state.is_final:
                study.done.set()
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

    async def _fill_slots(self) -> None:
        """Hand free slots to studies in turn, each up to its max_concurrent."""
        while not self.shutting_down and self.pool.free:
            active = [s for s in self.studies.values() if s.engine.state is StudyState.RUNNING]
            if not active:
                break
            launched = False
            for i in range(len(active)):
                study = active[(self._rotation + i) % len(active)]
                cap = study.spec.limits.max_concurrent
                if cap is not None and len(study.runs) >= cap:
                    continue
                if not self.pool.free:
                    break
                launch = study.engine.next_launch(time.time())
                if launch is None:
                    continue
                slot = self.pool.acquire(study.id, launch.trial_id)
                assert slot is not None
                self._rotation = (self._rotation + i + 1) % max(len(active), 1)
                await self._begin(study, launch, slot)
                launched = True
                break
            if not launched:
                break
        for study in list(self.studies.values()):
            await self._maybe_finish(study)

    async def _begin(self, study: StudyRuntime, launch: Launch, slot: Slot) -> None:
        token = secrets.token_hex(16)
        run = TrialRun(launch.trial_id, token, launch, slot, time.monotonic())
        study.runs[launch.trial_id] = run
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
        assert self._trial_tg is not None
        self._trial_tg.start_soon(self._run_trial, study, run)

    def _trial_dir(self, study: StudyRuntime, trial_id: int) -> Path:
        return study.folder / "trials" / str(trial_id)

    async def _run_trial(self, study: StudyRuntime, run: TrialRun) -> None:
        launch = run.launch
        trial_dir = self._trial_dir(study, run.trial_id)
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
                returncode = await run.proc.wait()
                if returncode != 0 and not run.stopping:
                    tail = log_tail(trial_dir, "stderr", 20)
                    error = f"exited with status {returncode}"
                    if looks_like_oom(tail):
                        error += " (out of memory)"
        finally:
            run.exited.set()
            with anyio.CancelScope(shield=True):
                await self._after_exit(study, run, returncode, error)

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
        study.compute_seconds[tid] = study.compute_seconds.get(tid, 0.0) + elapsed * max(
            1, len(run.slot.devices)
        )
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
        if not self.shutting_down:
            await self._maybe_finish(study)
            self.wake()

    async def _maybe_finish(self, study: StudyRuntime) -> None:
        engine = study.engine
        if study.done.is_set() or self.shutting_down or not engine.finished:
            return
        if engine.state is StudyState.RUNNING:
            engine.end(StudyState.COMPLETED, "the search is done: no trial left to run")
        study.ended = time.time()
        await self.store.update_study(
            study.id, state=engine.state.value, ended_at=study.ended, end_reason=engine.end_reason
        )
        best = engine.best()
        log.info(
            "study_end",
            study=study.id,
            state=engine.state.value,
            reason=engine.end_reason,
            best=best_view(study.id, best),
        )
        study.done.set()

    async def _stop_run(
        self, study: StudyRuntime, run: TrialRun, *, interrupting: bool = False
    ) -> None:
        run.stopping = True
        run.interrupting = run.interrupting or interrupting
        study.engine.mark_stopping(run.trial_id)
        if run.proc is not None:
            await run.proc.stop(study.spec.stop_grace)

    async def _enforce_decision(self, study: StudyRuntime, run: TrialRun) -> None:
        """A trial told to PAUSE or STOP has the grace period to exit by itself."""
        with anyio.move_on_after(study.spec.stop_grace):
            await run.exited.wait()
            return
        if run.proc is not None and not run.exited.is_set():
            log.warning("trial_ignored_decision", study=study.id, trial=run.trial_id)
            await run.proc.stop(study.spec.stop_grace)

    # -- control methods -------------------------------------------------------------------------

    def _get_study(self, params: Mapping[str, Any]) -> StudyRuntime:
        sid = _param_str(params, "study")
        study = self.studies.get(sid)
        if study is None:
            # Let a user type the name when it is unambiguous.
            named = [s for s in self.studies.values() if s.spec.name == sid]
            if len(named) >= 1:
                return max(named, key=lambda s: s.seq)
            known = ", ".join(sorted(self.studies)) or "none yet"
            raise NotFound(f"no study {sid!r} (studies: {known}); list them with `hpodctl ls`")
        return study

    async def _ping(self, peer: Peer, params: dict[str, Any]) -> Any:
        return {
            "pong": True,
            "version": __version__,
            "uptime": time.monotonic() - self.started_at,
            "slots": self.pool.size,
            "free_slots": self.pool.free,
        }

    async def _submit(self, peer: Peer, params: dict[str, Any]) -> Any:
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down; submit again once it is back")
        text = _param_str(params, "spec")
        base_dir = Path(_param_str(params, "base_dir"))
        spec = StudySpec.from_toml(text, base_dir=base_dir)
        if not spec.workdir.is_dir():
            raise SpecError(
                [
                    f"workdir: {spec.workdir} is not a folder; fix `workdir` (relative "
                    "to the spec file)"
                ]
            )
        engine = Study.new(spec)
        seq = max((s.seq for s in self.studies.values()), default=0) + 1
        seq = max(seq, self.store.next_study_seq())
        sid = f"{spec.name}-{seq}"
        now = time.time()
        study = StudyRuntime(
            id=sid,
            seq=seq,
            owner=peer.uid,
            spec=spec,
            engine=engine,
            folder=self.state_dir / "studies" / sid,
            created=now,
        )
        study.folder.mkdir(parents=True, exist_ok=True)
        await self.store.insert_study(
            StudyRow(
                id=sid,
                seq=seq,
                name=spec.name,
                owner_uid=peer.uid,
                spec_toml=text,
                base_dir=str(base_dir),
                state=engine.state,
                created_at=now,
                ended_at=None,
                end_reason=None,
                elapsed=0.0,
                compute=0.0,
            )
        )
        self.studies[sid] = study
        log.info("study_submitted", study=sid, owner=peer.uid)
        self.wake()
        return {"study": sid, "name": spec.name}

    async def _studies(self, peer: Peer, params: dict[str, Any]) -> Any:
        return [s.summary() for s in sorted(self.studies.values(), key=lambda s: s.seq)]

    async def _study(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        out = study.summary()
        out["spec"] = study.spec.to_dict()
        out["running"] = sorted(study.runs)
        out["failures"] = [
            {
                "trial": rec.trial_id,
                "error": rec.error,
                "stderr_tail": log_tail(self._trial_dir(study, rec.trial_id), "stderr", 20),
            }
            for rec in study.engine.records()
            if rec.state is TrialState.FAILED
        ]
        return out

    async def _trials(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        return [trial_view(study.engine, rec) for rec in study.engine.records()]

    async def _best(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        view = best_view(study.id, study.engine.best())
        if view is None:
            raise NotFound(
                f"study {study.id} has no result yet: no trial has reported "
                f"{study.spec.objective.metric!r}"
            )
        return view

    def _authorize(self, peer: Peer, study: StudyRuntime) -> None:
        if peer.uid in (0, study.owner) or peer.uid in self.config.admins:
            return
        raise PermissionDenied(
            f"study {study.id} belongs to uid {study.owner}; only its owner or root may change it"
        )

    async def _stop(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        self._authorize(peer, study)
        if study.engine.state.is_final:
            raise BadState(f"study {study.id} has already ended ({study.engine.state.value})")
        study.engine.end(StudyState.STOPPED, f"stopped by uid {peer.uid}")
        await self.store.update_study(
            study.id, state=study.engine.state.value, end_reason=study.engine.end_reason
        )
        async with anyio.create_task_group() as tg:
            for run in list(study.runs.values()):
                tg.start_soon(self._stop_run, study, run)
        await self._maybe_finish(study)
        return {"study": study.id, "state": study.engine.state.value}

    async def _wait(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        timeout = params.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        ):
            raise InvalidParams("parameter 'timeout' must be a number of seconds")
        with anyio.move_on_after(timeout):
            await study.done.wait()
        return study.summary()

    async def _logs(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        trial_id = _param_int(params, "trial")
        study.engine.record(trial_id)  # NOT_FOUND for an unknown trial
        stream = params.get("stream", "stderr")
        if stream not in ("stdout", "stderr"):
            raise InvalidParams("parameter 'stream' must be 'stdout' or 'stderr'")
        tail = params.get("tail", 50)
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
            raise InvalidParams("parameter 'tail' must be a positive integer")
        return {"text": log_tail(self._trial_dir(study, trial_id), stream, tail)}

    # -- trial methods ---------------------------------------------------------------------------

    def _authenticate(self, params: Mapping[str, Any]) -> tuple[StudyRuntime, TrialRun]:
        sid = _param_str(params, "study")
        trial_id = _param_int(params, "trial")
        token = params.get("token")
        study = self.studies.get(sid)
        run = study.runs.get(trial_id) if study is not None else None
        if (
            run is None
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode(), run.token.encode())
        ):
            # One answer for every mismatch, so a guesser learns nothing about which part was wrong.
            raise TokenRejected(
                f"no running trial {sid}/{trial_id} with that token; a trial reports with the "
                "HPOD_TOKEN of its own run"
            )
        return study, run  # type: ignore[return-value]

    async def _trial_report(self, peer: Peer, params: dict[str, Any]) -> Any:
        study, run = self._authenticate(params)
        metrics = params.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise InvalidParams("parameter 'metrics' must be a non-empty object of name: number")
        engine = study.engine
        now = time.time()
        force = Decision.STOP if (self.shutting_down or run.stopping) else None
        outcome = engine.on_report(run.trial_id, metrics, now, force=force)
        await self.store.add_report(
            study.id,
            run.trial_id,
            engine.trials[run.trial_id].runs,
            outcome.resource,
            metrics,
            outcome.decision.value,
            now,
            counted=outcome.counted,
        )
        if outcome.decision is not Decision.CONTINUE and not run.stopping:
            assert self._trial_tg is not None
            self._trial_tg.start_soon(self._enforce_decision, study, run)
        return {"decision": outcome.decision.value}

    async def _trial_oom(self, peer: Peer, params: dict[str, Any]) -> Any:
        study, run = self._authenticate(params)
        await self.store.add_event(study.id, run.trial_id, "oom", {}, time.time())
        return {"recorded": True}
