"""The wire methods: what each control and trial call does, on top of the daemon's state."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog

from hpod import __version__, wire
from hpod.core import changes as chg
from hpod.core import limits as lim
from hpod.core import passenv
from hpod.core.deadlines import format_deadline
from hpod.core.durations import format_duration
from hpod.core.states import Decision, StudyState, TrialState
from hpod.daemon.answers import Answer
from hpod.daemon.config import DaemonConfig
from hpod.daemon.events import PAGE_MAX
from hpod.daemon.events import page as events_page
from hpod.daemon.external import HeldAnswer, final_metrics
from hpod.daemon.gpus import DevicePool
from hpod.daemon.reads import curves_page, metric_summary, ranked, top_view
from hpod.daemon.reports import best_rows
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.server import AnsweringHandler, Handler, Peer
from hpod.daemon.store import metrics_text, report_op
from hpod.daemon.studies import Studies
from hpod.daemon.trials import Trials, trial_log, trial_log_or_refusal
from hpod.daemon.views import best_view, front_view, trial_view, trials_page
from hpod.errors import BadState, InvalidParams, NotFound, PermissionDenied, TokenRejected
from hpod.fit.fitter import Fitter

log = structlog.get_logger("hpod.daemon")


def _param_str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"parameter {key!r} must be a non-empty string")
    return value


# A submit's request id is stored with its study and named back in errors: short and printable.
REQUEST_ID_MAX = 128
# The most per-trial rows a ``report`` answer holds (see Methods._report).
REPORT_TRIALS = 1000


def _param_env(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The submit's ``env`` (the submitter's environment, hpod.core.passenv), or None from an
    old client that sends none: its study's trials then get the daemon's own, as before."""
    value = params.get("env")
    if value is None:
        return None
    problem = passenv.env_problem(value)
    if problem is not None:
        raise InvalidParams(f"parameter 'env' {problem}")
    return dict(value)


def _param_request_id(params: Mapping[str, Any]) -> str | None:
    """The submit's ``request_id``, or None from an old client that sends none."""
    value = params.get("request_id")
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= REQUEST_ID_MAX and value.isprintable():
        return value
    if not isinstance(value, str):
        got = f"a {type(value).__name__}"
    elif len(value) > REQUEST_ID_MAX:
        got = f"{len(value)} characters"
    else:
        got = repr(value)
    raise InvalidParams(
        f"parameter 'request_id' must be a string of 1 to {REQUEST_ID_MAX} printable characters "
        f"(a uuid4 does), not {got}"
    )


def _param_int(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses. And few of them, so
    # int() never meets a string it takes long over, or refuses past 4,300 digits.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(
            f"parameter {key!r} must be an integer (a number, or a string of ASCII digits), "
            f"not {wire.shown(value)}"
        )
    return value


# A report's sender (hpod.trial: its pid and 8 hex digits) is kept with it in the store: short.
SENDER_MAX = 64
# A report's seq is stored as SQLite's INTEGER, a signed 64-bit number.
SEQ_MAX = (1 << 63) - 1


def _param_stamp(params: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """A report's ``sender`` and ``seq``, each None where absent (an old reporter)."""
    sender = params.get("sender")
    seq = params.get("seq")
    if sender is not None and not (isinstance(sender, str) and 0 < len(sender) <= SENDER_MAX):
        raise InvalidParams(
            f"parameter 'sender' must be a string of 1 to {SENDER_MAX} characters (hpod.trial "
            f"sends its pid and 8 hex digits), not {wire.shown(sender)}"
        )
    if seq is not None and (
        isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= SEQ_MAX
    ):
        raise InvalidParams(
            f"parameter 'seq' must be an integer from 0 to {SEQ_MAX} (the report's number "
            f"within its sender), not {wire.shown(seq)}"
        )
    return sender, seq


# The longest `wait` the daemon takes: a year. Without a timeout a wait lasts as long as the study.
WAIT_MAX = 366 * 86400.0


def _param_timeout(params: Mapping[str, Any]) -> float | None:
    value = params.get("timeout")
    if value is None:
        return None
    # NaN fails both comparisons: a deadline of NaN is no deadline anyio can keep.
    if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= WAIT_MAX:
        return float(value)
    raise InvalidParams(
        f"parameter 'timeout' must be a number of seconds from 0 to {WAIT_MAX:.0f} (omit it to "
        f"wait until the study ends), not {wire.shown(value)}"
    )


def _token_bytes(token: Any) -> bytes | None:
    """A token's bytes to compare, or None for one no run has (not a string; not UTF-8, as a
    string with a lone surrogate is not: the wire refuses those, this keeps any other caller
    from an encode error)."""
    if not isinstance(token, str):
        return None
    try:
        return token.encode()
    except UnicodeEncodeError:
        return None


class Methods:
    """One handler per wire method: wire params in, calls on the services, views out.

    It holds no daemon: the studies and trials services own the state, and the app wires them
    in (as supervisor's rpcinterface is handed its supervisord).
    """

    def __init__(
        self,
        studies: Studies,
        trials: Trials,
        pool: DevicePool,
        fitter: Fitter,
        config: DaemonConfig,
        *,
        started_at: float,
        about: Mapping[str, Any] | None = None,
    ) -> None:
        self.studies = studies
        self.trials = trials
        self.pool = pool
        self.fitter = fitter
        self.config = config
        self.started_at = started_at
        # What ping says of the daemon itself: its pid, its generation (new at each start and
        # re-exec), how trials are contained.
        self.about = dict(about or {})

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
            "set": self._set,
            "top": self._top,
            "trial": self._trial,
            "trial.oom": self._trial_oom,
            "events": self._events,
            "decisions": self._decisions,
            "curves": self._curves,
            "ask": self._ask,
            "tell": self._tell,
        }

    def answering(self) -> dict[str, AnsweringHandler]:
        """Methods that send their own answer (see :class:`hpod.daemon.server.Answer`)."""
        return {"trial.report": self._trial_report}

    async def _gpus(self, peer: Peer, params: dict[str, Any]) -> Any:
        return self.pool.view()

    async def _report(self, peer: Peer, params: dict[str, Any]) -> Any:
        """The objective report; past :data:`REPORT_TRIALS` trials its ``per_trial`` holds the
        rows of the best ones only (by ``top_k``'s ranking), ``per_trial_total`` says of how
        many: every row of 10,000 trials was over the line cap (report.json keeps them all;
        ``trials`` pages them)."""
        report = await self.studies.report(self._read_study(peer, params))
        rows = report["per_trial"]
        report["per_trial_total"] = len(rows)
        if len(rows) > REPORT_TRIALS:
            report["per_trial"] = best_rows(report["objective"], rows, REPORT_TRIALS)
        return report

    # -- control methods -------------------------------------------------------------------------

    def _get_study(self, params: Mapping[str, Any]) -> StudyRuntime:
        return self.studies.get(_param_str(params, "study"))

    def _may_read(self, peer: Peer, owner: int) -> bool:
        """Whether ``peer`` may read a study of ``owner``'s (the ``read_access`` setting)."""
        return (
            self.config.read_access == "anyone"
            or peer.uid in (0, owner)
            or peer.uid in self.config.admins
        )

    def _read_study(self, peer: Peer, params: Mapping[str, Any]) -> StudyRuntime:
        """The study a read names; one the peer may not read is answered as one that does not
        exist (read_access = "owner"), so its id, name and owner stay unknown."""
        name = _param_str(params, "study")
        study = self.studies.get(name)
        if not self._may_read(peer, study.owner):
            raise NotFound(f"no study {name!r} that you may read; list yours with `hpodctl ls`")
        return study

    async def _ping(self, peer: Peer, params: dict[str, Any]) -> Any:
        return {
            "pong": True,
            "version": __version__,
            "uptime": time.monotonic() - self.started_at,
            "slots": self.pool.size,
            "free_slots": self.pool.free,
            # Whether this process has imported torch: it never should (model fits run in the
            # worker process); the torch-free test reads it.
            "torch_loaded": "torch" in sys.modules,
            "fit_workers_started": self.fitter.worker.started,
            **self.about,
        }

    async def _submit(self, peer: Peer, params: dict[str, Any]) -> Any:
        text = _param_str(params, "spec")
        base_dir = Path(_param_str(params, "base_dir"))
        request_id = _param_request_id(params)
        env = _param_env(params)
        if request_id is None:
            study = await self.studies.admit(text, base_dir, peer.uid, env=env)
            return {"study": study.id, "name": study.spec.name}
        # With a request id a submit may be sent again (its answer lost with a killed daemon):
        # the answer is the study the first one made, and says so.
        admitted = await self.studies.admit_once(text, base_dir, peer.uid, request_id, env=env)
        study = admitted.study
        return {"study": study.id, "name": study.spec.name, "existing": admitted.existing}

    async def _studies(self, peer: Peer, params: dict[str, Any]) -> Any:
        return [s.summary() for s in self.studies.all() if self._may_read(peer, s.owner)]

    async def _study(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._read_study(peer, params)
        out = study.summary()
        out["spec"] = study.spec.to_dict()
        # Whose environment its trials start from; the names only, since `show` answers anyone
        # on the socket and a value may be a secret (pass_env = ["WANDB_API_KEY"]).
        out["environment"] = {
            "from": "daemon" if study.client_env is None else "submitter",
            "names": sorted(study.client_env or ()),
        }
        res = study.spec.resources
        out["devices"] = self.pool.placement(res.gpus_per_trial, res.cpu_fallback)
        if study.spec.executor.external:
            lease = format_duration(study.spec.executor.lease)
            out["devices"] = {
                "kind": "external",
                "reason": f"handed out by ask, run where their caller starts them; lease {lease}",
            }
        if study.spec.executor.slurm is not None:
            out["devices"] = {
                "kind": "slurm",
                "reason": "each run a Slurm job; its GPUs are the ones Slurm gives it",
            }
            # Each run's job: its id, Slurm's state, node and times (trials.handles).
            out["jobs"] = [
                {"trial": tid, **handle}
                for tid, handles in sorted(study.handles.items())
                for handle in handles
            ]
        out["running"] = sorted(study.runs)
        # Runs started by an earlier daemon (or this one before a re-exec) and taken over, and
        # how what every trial starts is kept from outliving it (docs/live-restore.md).
        out["adopted"] = sorted(tid for tid, run in study.runs.items() if run.adopted)
        out["containment"] = self.about.get("containment")
        out["rungs"] = study.engine.rung_occupancy()
        out["decisions"] = study.fit_stats.view(study.engine.decisions)
        # A fit that backs off while reports come fast (hpod.fit.cpu.Backoff) says so.
        out["decisions"]["fit_yields_to_reports"] = (
            study.fit_stats.in_flight and self.fitter.worker.busy
        )
        clocks = study.clocks(time.monotonic())
        out["elapsed"] = clocks.elapsed
        out["compute"] = clocks.compute
        out["limits"] = {
            name: f"{u['used']:.4g} of {u['limit']:g} ({u['share']:.0%})"
            for name, u in lim.usage(study.spec.limits, clocks).items()
        }
        # The same as numbers, for a controller; the deadline as epoch seconds (or None).
        out["limits_detail"] = lim.usage(study.spec.limits, clocks)
        deadline = study.spec.limits.deadline
        out["deadline"] = deadline
        if deadline is not None:
            left = deadline - time.time()
            when = f"in {format_duration(left)}" if left > 0 else "passed"
            out["limits"]["deadline"] = f"{format_deadline(deadline)} ({when})"
        # What `hpodctl set` changed, in order: {key, value, from, at, by}.
        out["changes"] = study.changes
        # The time budget's latest estimate and what it set (docs/time-budget.md); None without.
        out["budget"] = None if study.budget is None else study.budget.view(clocks.elapsed)
        out["failures"] = [
            {
                "trial": rec.trial_id,
                "error": rec.error,
                "stderr_tail": trial_log_or_refusal(study, rec.trial_id, "stderr", 20),
            }
            for rec in study.engine.records_in(TrialState.FAILED)
        ]
        # Each out-of-memory retry (not a failure): {trial, run, key, from, to, at, error}.
        out["oom_retries"] = [
            {"trial": t.trial_id, **r.to_dict()} for t in study.engine.trials for r in t.retries
        ]
        return out

    async def _trials(self, peer: Peer, params: dict[str, Any]) -> Any:
        """A study's trials: a page of them from ``after`` (0: the first; a page's ``next``) when
        ``after`` or ``limit`` is given, else every one in one list, as before pages (an older
        client's call; past some thousands of trials it is over the line cap)."""
        study = self._read_study(peer, params)
        if "after" in params or "limit" in params:
            after = _param_cursor(params, what="the 'next' of the page before")
            return trials_page(study.engine, after, _param_limit(params))
        return [trial_view(study.engine, t) for t in study.engine.trials]

    async def _best(self, peer: Peer, params: dict[str, Any]) -> Any:
        """The best trial; with ``front``, the Pareto front as a list (a multi-objective
        study's answer: every non-dominated trial with each metric's value; one trial, the
        best, for a single objective)."""
        study = self._read_study(peer, params)
        engine = study.engine
        if _param_flag(params, "front"):
            front = front_view(study.id, engine)
            if not front:
                raise NotFound(
                    f"study {study.id} has no result yet: no trial has reported "
                    + " or ".join(repr(n) for n in engine.objective.names)
                )
            return front
        view = best_view(study.id, engine.best())
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
        await self.studies.end(
            study, StudyState.STOPPED, f"stopped by uid {peer.uid}", StopReason.USER
        )
        return {"study": study.id, "state": study.engine.state.value}

    async def _wait(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._read_study(peer, params)
        timeout = _param_timeout(params)
        with anyio.move_on_after(timeout):
            await study.done.wait()
        return study.summary()

    async def _logs(self, peer: Peer, params: dict[str, Any]) -> Any:
        study = self._read_study(peer, params)
        trial_id = _param_int(params, "trial")
        study.engine.record(trial_id)  # NOT_FOUND for an unknown trial
        stream = params.get("stream", "stderr")
        if stream not in ("stdout", "stderr"):
            raise InvalidParams("parameter 'stream' must be 'stdout' or 'stderr'")
        tail = params.get("tail", 50)
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
            raise InvalidParams("parameter 'tail' must be a positive integer")
        # A log the trial swapped for a link (or anything not its own file) is refused, unread.
        return {"text": trial_log(study, trial_id, stream, tail)}

    # -- trial methods ---------------------------------------------------------------------------

    def _authenticate(self, params: Mapping[str, Any]) -> tuple[StudyRuntime, TrialRun]:
        sid = _param_str(params, "study")
        trial_id = _param_int(params, "trial")
        token = _token_bytes(params.get("token"))
        study = self.studies.find(sid)
        run = study.runs.get(trial_id) if study is not None else None
        if (
            study is None
            or run is None
            or token is None
            or not hmac.compare_digest(hashlib.sha256(token).digest(), run.token_hash)
        ):
            # One answer for every mismatch, so a guesser learns nothing about which part was wrong.
            raise TokenRejected(
                f"no running trial {sid}/{trial_id} with that token; a trial reports with the "
                "HPOD_TOKEN of its own run"
            )
        return study, run

    def _trial_report(self, peer: Peer, params: dict[str, Any], answer: Answer) -> None:
        study, run = self._authenticate(params)
        metrics = params.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise InvalidParams("parameter 'metrics' must be a non-empty object of name: number")
        sender, seq = _param_stamp(params)
        if (
            sender is not None
            and sender == run.last_sender
            and seq is not None
            and run.last_seq is not None
            and seq <= run.last_seq
            and run.last_answer is not None
        ):
            # Sent again: its answer was lost (the daemon killed after the commit, a dropped
            # connection), and the reporter cannot tell whether it was taken. It was: the same
            # answer again, nothing counted or stored twice.
            answer.prepare({"decision": run.last_answer.value, "repeat": True})
            answer.settle(None)
            return
        # Serialized before the study sees it: a report the store could not keep (a metric too
        # deep) is refused with the study untouched. The in-memory study never holds a report
        # the store does not.
        text = metrics_text(metrics)
        engine = study.engine
        now = time.time()
        # The daemon is stopping (or stopping this run for its shutdown): PAUSE, "save your
        # checkpoint and exit, you will be resumed", as it is at the next start. A limit or a
        # user's stop ends the run: STOP.
        # A handed-out run (hpod.daemon.external) outlives its daemon: never PAUSEd for it.
        # So is a Slurm job: the next daemon adopts it by its job id.
        shutdown = not run.remote and (not self.studies.accepting or run.interrupted)
        stop = run.forces_stop and not (run.remote and run.interrupted)
        force = Decision.PAUSE if shutdown else (Decision.STOP if stop else None)
        best_before = engine.best_key()  # new_best: whether the report moves it
        outcome = engine.on_report(run.trial_id, metrics, now, force=force)
        answer.prepare({"decision": outcome.decision.value})
        last = (run.last_sender, run.last_seq, run.last_answer)
        stamped = sender is not None and seq is not None
        if stamped:
            run.last_sender, run.last_seq, run.last_answer = sender, seq, outcome.decision

        def undo() -> None:
            engine.retract_report(run.trial_id, outcome)
            if stamped and (run.last_sender, run.last_seq) == (sender, seq):
                # Not stored: a re-send of it is a new report, not one to answer from memory.
                run.last_sender, run.last_seq, run.last_answer = last

        # The scheduler's PAUSE or STOP is acted on (the grace period, then SIGTERM) only once
        # the trial has been told it: a report whose commit fails was answered with an error.
        decided = outcome.decision is not Decision.CONTINUE and not outcome.forced
        # Its decision record, trial_reported (rate-limited) and new_best, in its commit.
        told = self.trials.events.report_ops(
            study, run.trial_id, metrics, outcome, now, time.monotonic(), best_before
        )
        # The answer goes out the moment the report is committed (acknowledged only once
        # durable, as the trial contract says): from the writer thread without a detour
        # through this loop, or, the writer idle, committed and sent here before post returns.
        self.studies.store.post(
            report_op(
                study.id,
                run.trial_id,
                engine.trials[run.trial_id].runs,
                outcome.resource,
                text,
                outcome.decision.value,
                now,
                counted=outcome.counted,
                # A shutdown's PAUSE interrupts the run: a restart resumes it, where any other
                # PAUSE or STOP the trial acknowledged ends it (Study.restore).
                interrupting=outcome.forced and shutdown,
                sender=sender,
                seq=seq,
            ),
            *told,
            then=_settle_report(
                answer,
                asyncio.get_running_loop(),
                undo=undo,
                then=(lambda: self.trials.after_report(study, run, outcome)) if decided else None,
            ),
        )
        self.fitter.count_report()
        if outcome.counted and study.id in self.fitter.studies:
            self.fitter.poke()  # an event only: the fitter looks later, off this path
        if not decided:
            self.trials.after_report(study, run, outcome)

    async def _events(self, peer: Peer, params: dict[str, Any]) -> Any:
        """The event stream: the events past ``after``, waiting up to ``timeout`` for one."""
        sid = None if params.get("study") is None else self._read_study(peer, params).id
        after = _param_cursor(params)
        limit = _param_limit(params)
        timeout = _param_timeout(params) or 0.0
        rows = await self.trials.events.wait(after, sid, timeout, limit)
        if sid is None and self.config.read_access != "anyone":
            # The cursor goes past the events left out, so the next poll does not see them again.
            cursor = rows[-1].id if rows else after
            page = events_page([r for r in rows if self._may_read_event(peer, r.study_id)], after)
            page["cursor"] = cursor
            page["next"] = cursor if len(rows) >= limit else None
            return page
        return events_page(rows, after, limit)

    def _may_read_event(self, peer: Peer, study_id: str | None) -> bool:
        if study_id is None:  # the daemon's own events
            return True
        study = self.studies.find(study_id)
        return study is not None and self._may_read(peer, study.owner)

    async def _decisions(self, peer: Peer, params: dict[str, Any]) -> Any:
        """A study's decision records past ``after`` (one per scheduling decision)."""
        study = self._read_study(peer, params)
        after = _param_cursor(params)
        rows = self.studies.store.load_decisions(study.id, after, _param_limit(params))
        return {
            "decisions": [
                {
                    "id": r.id,
                    "study": r.study_id,
                    "trial": r.trial_id,
                    "at": r.at,
                    "kind": r.kind,
                    "level": r.level,
                    "data": r.data,
                }
                for r in rows
            ],
            "cursor": rows[-1].id if rows else after,
        }

    async def _curves(self, peer: Peer, params: dict[str, Any]) -> Any:
        """A page of a study's learning curves (one ``trial``'s, if given): its reports past the
        cursor ``after``, oldest first, each with the objective's value; ``next`` is the cursor
        for the next page, or None once this page reached the last report stored now."""
        study = self._read_study(peer, params)
        trial_id = None if params.get("trial") is None else _param_int(params, "trial")
        if trial_id is not None:
            study.engine.record(trial_id)  # NOT_FOUND for an unknown trial
        after = _param_cursor(params)
        limit = _param_limit(params)
        # One more than asked: whether another page follows, without a second query.
        rows = await anyio.to_thread.run_sync(
            self.studies.store.load_reports_page, study.id, trial_id, after, limit + 1
        )
        return curves_page(study.engine.objective, rows, limit)

    async def _trial_oom(self, peer: Peer, params: dict[str, Any]) -> Any:
        study, run = self._authenticate(params)
        # Its exit is then an out-of-memory one: the study's [oom] policy decides (docs/oom.md).
        run.oom = True
        await self.studies.store.add_event(study.id, run.trial_id, "oom", {}, time.time())
        return {"recorded": True}

    # -- changing a running study, and reading it (docs/python-api.md) ---------------------------

    async def _set(self, peer: Peer, params: dict[str, Any]) -> Any:
        """Change a running study (its owner, root or an admin): hpod.core.changes."""
        study = self._get_study(params)
        self._authorize(peer, study)
        changes = params.get("changes")
        if not isinstance(changes, dict):
            raise InvalidParams(
                "parameter 'changes' must be an object of key: value, the keys among "
                f"{', '.join(chg.CHANGEABLE)}; not {wire.shown(changes)}"
            )
        history, made = await self.studies.change(study, changes, peer.uid)
        spec = study.spec
        return {
            "study": study.id,
            "limits": spec.limits.to_dict(),
            "report_period": spec.report.period,
            "priority": spec.priority,
            "changes": history,
            "made": made,
        }

    async def _top(self, peer: Peer, params: dict[str, Any]) -> Any:
        """The best ``k`` trials (default: the spec's top_k), best first."""
        study = self._read_study(peer, params)
        k = params.get("k", study.spec.report.top_k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidParams(f"parameter 'k' must be a positive integer, not {wire.shown(k)}")
        only_completed = _param_flag(params, "only_completed")
        rows = ranked(study.engine, only_completed=only_completed)
        last = None
        if _param_flag(params, "all_metrics"):
            # Off the loop: a study of many trials has many reports, and this loop answers them.
            last = await anyio.to_thread.run_sync(self.studies.store.load_last_reports, study.id)
        return top_view(rows, k, last)

    async def _trial(self, peer: Peer, params: dict[str, Any]) -> Any:
        """One trial, with every metric it reported: last, min, max (and the curve)."""
        study = self._read_study(peer, params)
        trial_id = _param_int(params, "trial")
        # As it is now (NOT_FOUND for an unknown trial), before the reports are read.
        out = trial_view(study.engine, study.engine.trial(trial_id))
        curve = _param_flag(params, "curve")
        reports = await anyio.to_thread.run_sync(
            self.studies.store.load_reports, study.id, trial_id
        )
        out["reports"] = len(reports)
        out["metrics"] = metric_summary(reports, curve=curve)
        return out

    # -- trials launched by their caller (hpod.daemon.external) ----------------------------------

    async def _ask(self, peer: Peer, params: dict[str, Any]) -> Any:
        """Hand out the next trial of an external study to run, or None: nothing may run now."""
        study = self._get_study(params)
        self._authorize(peer, study)
        return await self.trials.external.ask(study)

    async def _tell(self, peer: Peer, params: dict[str, Any]) -> Any:
        """A handed-out trial's report (``metrics``) and/or its end (``final``): answered once
        the report is committed and, if final, once the run's end is recorded."""
        study, run = self._authenticate(params)
        if not run.external:
            raise BadState(
                f"trial {study.id}/{run.trial_id} is run by the daemon: it reports with "
                "trial.report and ends when its process exits; tell is for a trial handed out "
                "by ask"
            )
        final = params.get("final", False)
        if not isinstance(final, bool):
            raise InvalidParams(f"parameter 'final' must be true or false, not {wire.shown(final)}")
        metrics = params.get("metrics")
        decision: Any = None
        if metrics is None or metrics == {}:  # {}: a caller that always sends the key
            if not final:
                raise InvalidParams("tell needs 'metrics' (a report), 'final': true, or both")
        else:
            if final and isinstance(metrics, dict):
                params = {**params, "metrics": final_metrics(study, run, metrics)}
            # Taken as a report is: the same checks, counting, commit and answer.
            held = HeldAnswer()
            self._trial_report(peer, params, held)
            answered = await held.result()
            if not final:
                return answered
            decision = answered["decision"]
        # After its report was committed: its end is recorded in a commit after the report's.
        await self.trials.external.finish(run)
        return {"decision": decision, "final": True}


def _param_cursor(params: Mapping[str, Any], what: str = "the id of the last one seen") -> int:
    value = params.get("after", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEQ_MAX:
        raise InvalidParams(
            f"parameter 'after' must be a cursor: 0 (from the start) or {what}, "
            f"not {wire.shown(value)}"
        )
    return value


def _param_limit(params: Mapping[str, Any]) -> int:
    value = params.get("limit", PAGE_MAX)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PAGE_MAX:
        raise InvalidParams(
            f"parameter 'limit' must be an integer from 1 to {PAGE_MAX}, not {wire.shown(value)}"
        )
    return value


def _param_flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidParams(f"parameter {key!r} must be true or false, not {wire.shown(value)}")
    return value


def _settle_report(
    answer: Answer,
    loop: asyncio.AbstractEventLoop,
    *,
    undo: Callable[[], None],
    then: Callable[[], None] | None,
) -> Callable[[BaseException | None], None]:
    """The writer thread's callback for one report: the loop's follow-up, then the answer.

    The report was counted on the loop before it was stored (``Study.retract_report`` says why
    that order): if the commit failed, ``undo`` takes it back, on the loop, which owns the
    study. Either follow-up is queued before the answer goes out, so it runs before anything
    the trial does in reply (its next report, its exit). A report committed with nothing to
    follow (nearly every one: CONTINUE) costs the loop no wake-up at all."""

    def settle(error: BaseException | None) -> None:
        follow = undo if error is not None else then
        if follow is not None:
            # The loop is gone only when the daemon is: nothing in memory outlives it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(follow)
        answer.settle(error)

    return settle
