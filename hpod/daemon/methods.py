"""The wire methods: what each control and trial call does, on top of the daemon's state."""

from __future__ import annotations

import hmac
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from hpod import __version__
from hpod.core import limits as lim
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.core.study import Study
from hpod.daemon.answers import Answer
from hpod.daemon.runner import log_tail
from hpod.daemon.runtime import StudyRuntime, TrialRun
from hpod.daemon.server import AnsweringHandler, Handler, Peer
from hpod.daemon.store import StudyRow, report_op
from hpod.daemon.views import best_view, trial_view
from hpod.errors import (
    BadState,
    InvalidParams,
    NotFound,
    PermissionDenied,
    ShuttingDown,
    SpecError,
    TokenRejected,
)

if TYPE_CHECKING:
    from hpod.daemon.app import Daemon

log = structlog.get_logger("hpod.daemon")


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


class Methods:
    """One handler per wire method; the daemon owns the state they read and change."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def table(self) -> dict[str, Handler]:
        return {
            "ping": self._ping,
            "submit": self._submit,
            "studies": self._studies,
            "study": self._study,
            "trials": self._trials,
            "best": self._best,
            "stop": self._stop,
            "wait": self._wait,
            "logs": self._logs,
            "report": self._report,
            "gpus": self._gpus,
            "trial.oom": self._trial_oom,
        }

    def answering(self) -> dict[str, AnsweringHandler]:
        """Methods that send their own answer (see :class:`hpod.daemon.server.Answer`)."""
        return {"trial.report": self._trial_report}

    async def _gpus(self, peer: Peer, params: dict[str, Any]) -> Any:
        return self.d.pool.view()

    async def _report(self, peer: Peer, params: dict[str, Any]) -> Any:
        return self.d.build_report(self._get_study(params))

    # -- control methods -------------------------------------------------------------------------

    def _get_study(self, params: Mapping[str, Any]) -> StudyRuntime:
        sid = _param_str(params, "study")
        study = self.d.studies.get(sid)
        if study is None:
            # Let a user type the name when it is unambiguous.
            named = [s for s in self.d.studies.values() if s.spec.name == sid]
            if len(named) >= 1:
                return max(named, key=lambda s: s.seq)
            known = ", ".join(sorted(self.d.studies)) or "none yet"
            raise NotFound(f"no study {sid!r} (studies: {known}); list them with `hpodctl ls`")
        return study

    async def _ping(self, peer: Peer, params: dict[str, Any]) -> Any:
        return {
            "pong": True,
            "version": __version__,
            "uptime": time.monotonic() - self.d.started_at,
            "slots": self.d.pool.size,
            "free_slots": self.d.pool.free,
            # Whether this process has imported torch: it never should (model fits run in the
            # worker process); the torch-free test reads it.
            "torch_loaded": "torch" in sys.modules,
            "fit_workers_started": self.d.fitter.worker.started,
        }

    async def _submit(self, peer: Peer, params: dict[str, Any]) -> Any:
        if self.d.shutting_down:
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
        seq = max((s.seq for s in self.d.studies.values()), default=0) + 1
        seq = max(seq, self.d.store.next_study_seq())
        sid = f"{spec.name}-{seq}"
        now = time.time()
        study = StudyRuntime(
            id=sid,
            seq=seq,
            owner=peer.uid,
            spec=spec,
            engine=engine,
            folder=self.d.state_dir / "studies" / sid,
            created=now,
        )
        study.folder.mkdir(parents=True, exist_ok=True)
        await self.d.store.insert_study(
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
        self.d.studies[sid] = study
        study.start_clock(time.monotonic())
        study.fit_stats = self.d.fitter.add(sid, engine)
        assert self.d.trial_tg is not None
        self.d.trial_tg.start_soon(self.d.watch_study, study)
        log.info("study_submitted", study=sid, owner=peer.uid)
        self.d.wake()
        return {"study": sid, "name": spec.name}

    async def _studies(self, peer: Peer, params: dict[str, Any]) -> Any:
        return [s.summary() for s in sorted(self.d.studies.values(), key=lambda s: s.seq)]

    async def _study(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._get_study(params)
        out = study.summary()
        out["spec"] = study.spec.to_dict()
        out["running"] = sorted(study.runs)
        out["rungs"] = study.engine.rung_occupancy()
        out["decisions"] = study.fit_stats.view(study.engine.decisions)
        # A fit that backs off while reports come fast (hpod.fit.cpu.Backoff) says so.
        out["decisions"]["fit_yields_to_reports"] = (
            study.fit_stats.in_flight and self.d.fitter.worker.busy
        )
        clocks = study.clocks(time.monotonic())
        out["elapsed"] = clocks.elapsed
        out["compute"] = clocks.compute
        out["limits"] = {
            name: f"{u['used']:.4g} of {u['limit']:g} ({u['share']:.0%})"
            for name, u in lim.usage(study.spec.limits, clocks).items()
        }
        out["failures"] = [
            {
                "trial": rec.trial_id,
                "error": rec.error,
                "stderr_tail": log_tail(self.d.trial_dir(study, rec.trial_id), "stderr", 20),
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
        if peer.uid in (0, study.owner) or peer.uid in self.d.config.admins:
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
        await self.d.store.update_study(
            study.id, state=study.engine.state.value, end_reason=study.engine.end_reason
        )
        async with anyio.create_task_group() as tg:
            for run in list(study.runs.values()):
                tg.start_soon(self.d.stop_run, study, run)
        await self.d.maybe_finish(study)
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
        return {"text": log_tail(self.d.trial_dir(study, trial_id), stream, tail)}

    # -- trial methods ---------------------------------------------------------------------------

    def _authenticate(self, params: Mapping[str, Any]) -> tuple[StudyRuntime, TrialRun]:
        sid = _param_str(params, "study")
        trial_id = _param_int(params, "trial")
        token = params.get("token")
        study = self.d.studies.get(sid)
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

    def _trial_report(self, peer: Peer, params: dict[str, Any], answer: Answer) -> None:
        study, run = self._authenticate(params)
        metrics = params.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise InvalidParams("parameter 'metrics' must be a non-empty object of name: number")
        engine = study.engine
        now = time.time()
        force = Decision.STOP if (self.d.shutting_down or run.stopping) else None
        outcome = engine.on_report(run.trial_id, metrics, now, force=force)
        answer.prepare({"decision": outcome.decision.value})
        # The writer thread sends the answer the moment the report is committed (acknowledged
        # only once durable, as the trial contract says), without a detour through this loop.
        self.d.store.post(
            report_op(
                study.id,
                run.trial_id,
                engine.trials[run.trial_id].runs,
                outcome.resource,
                metrics,
                outcome.decision.value,
                now,
                counted=outcome.counted,
            ),
            then=answer.settle,
        )
        self.d.fitter.count_report()
        if outcome.counted and study.id in self.d.fitter.studies:
            self.d.fitter.poke()  # an event only: the fitter looks later, off this path
        if outcome.counted and outcome.resource > run.mark_resource:
            mono = time.monotonic()
            study.pace = study.pace.add(mono - run.mark_time, outcome.resource - run.mark_resource)
            run.mark_time, run.mark_resource = mono, outcome.resource
        if outcome.decision is not Decision.CONTINUE and not run.stopping:
            assert self.d.trial_tg is not None
            self.d.trial_tg.start_soon(self.d.enforce_decision, study, run)

    async def _trial_oom(self, peer: Peer, params: dict[str, Any]) -> Any:
        study, run = self._authenticate(params)
        await self.d.store.add_event(study.id, run.trial_id, "oom", {}, time.time())
        return {"recorded": True}
