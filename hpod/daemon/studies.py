"""The studies service: admit a study, restore the stored ones, end one, finish one, watch each.

Admitting (a submit) and restoring (a start-up) build the same runtime through one constructor;
ending for a user's stop and for a limit go through ``end``. It drives the trials service below it
and hears back from it through the ``RunHooks`` it implements.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import structlog

from hpod.core import changes as chg
from hpod.core import limits as lim
from hpod.core.deadlines import format_deadline
from hpod.core.passenv import submit_env
from hpod.core.spec import StudySpec
from hpod.core.states import StudyState, TrialState
from hpod.core.study import OomRetry, Study, TrialRecord
from hpod.daemon import plotting
from hpod.daemon.adoption import survey
from hpod.daemon.budget import BudgetState, fixed_keys
from hpod.daemon.config import DaemonConfig
from hpod.daemon.gpus import DevicePool
from hpod.daemon.reports import build_report, report_summary, trial_rows, write_report
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.statetree import UnsafePath, open_dir, owner_ids, remove_tree
from hpod.daemon.store import (
    Op,
    ReportRow,
    Store,
    StudyRow,
    TrialRow,
    insert_study_op,
    update_live_run_op,
    update_study_op,
    update_trial_op,
)
from hpod.daemon.trials import Trials, trial_dir
from hpod.daemon.views import best_view
from hpod.errors import (
    BadState,
    InvalidParams,
    NoGpus,
    NotFound,
    ShuttingDown,
    SpecError,
    StoreFull,
    problems_message,
)
from hpod.fit.fitter import Fitter

log = structlog.get_logger("hpod.daemon")

# How often a study's clocks reach the store between exits: what a SIGKILL can lose of them.
CLOCK_SAVE_SECONDS = 2.0
# The trials a report makes rows for between two turns of the loop: 500 were 13-21 ms of it on
# this machine at 10,000 trials (bench/scale.py), 100 a few ms.
REPORT_SLICE = 100


@dataclass(frozen=True)
class Admitted:
    """What a submit with a request id got: its study, and whether an earlier submit made it."""

    study: StudyRuntime
    existing: bool


class Studies:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        state_dir: Path,
        fitter: Fitter,
        pool: DevicePool,
        trials: Trials,
    ) -> None:
        self.config = config
        self.store = store
        self.state_dir = state_dir
        self.fitter = fitter
        self.pool = pool
        self.trials = trials
        self.studies = trials.studies  # one registry, shared with the dispatcher
        self.accepting = True
        # One admit at a time: a submit retried while its first try is still committing must
        # find that study, and two at once would both take the same seq.
        self._admitting = anyio.Lock()
        # One `set` at a time: each stores the whole list of changes, so two at once would lose one.
        self._changing = anyio.Lock()
        # Studies whose report images are being drawn: one drawing at a time per study.
        self._plotting: set[str] = set()
        # Each drawing's scope: a shutdown cancels them (hpod.plots killed, its images skipped)
        # rather than wait for a drawing that takes seconds, minutes under load.
        self._plot_scopes: set[anyio.CancelScope] = set()
        trials.hooks = self
        # A full disk holds the studies (hpod.daemon.disk): their clocks stop meanwhile.
        self.disk = trials.disk
        self.disk.listen(self._disk_changed)

    # -- lookup ----------------------------------------------------------------------------------

    def get(self, sid: str) -> StudyRuntime:
        study = self.studies.get(sid)
        if study is not None:
            return study
        # Let a user type the name when it is unambiguous.
        named = [s for s in self.studies.values() if s.spec.name == sid]
        if named:
            return max(named, key=lambda s: s.seq)
        known = ", ".join(sorted(self.studies)) or "none yet"
        raise NotFound(f"no study {sid!r} (studies: {known}); list them with `hpodctl ls`")

    def find(self, sid: str) -> StudyRuntime | None:
        """The study with exactly this id (trial calls name it so), or None."""
        return self.studies.get(sid)

    def all(self) -> list[StudyRuntime]:
        return sorted(self.studies.values(), key=lambda s: s.seq)

    def trial_dir(self, study: StudyRuntime, trial_id: int) -> Path:
        return trial_dir(study, trial_id)

    # -- admit and restore -----------------------------------------------------------------------

    def _runtime(self, row: StudyRow, spec: StudySpec, engine: Study) -> StudyRuntime:
        changes = chg.load(row.changes)
        budget = BudgetState.of(spec, self._concurrency(spec), row.budget)
        if budget is not None and budget.samples.measured:
            # Restored: the estimate from the samples it had, in force again at once (its
            # limits are not in the stored spec); said only when it moves from here.
            budget.resume(len(engine.trials), fixed_keys(changes))
            spec = budget.apply(spec, fixed_keys(changes))
            engine.spec = spec
        return StudyRuntime(
            id=row.id,
            seq=row.seq,
            owner=row.owner_uid,
            spec=spec,
            engine=engine,
            folder=self.state_dir / "studies" / row.id,
            created=row.created_at,
            ended=row.ended_at,
            elapsed_base=row.elapsed,
            compute_base=row.compute,
            client_env=row.client_env,
            disk=self.disk,
            changes=changes,
            budget=budget,
        )

    def _concurrency(self, spec: StudySpec) -> int:
        """How many of a study's trials may run at once: its max_concurrent, within the pool."""
        cap = spec.limits.max_concurrent
        size = max(1, self.pool.size)
        return size if cap is None else max(1, min(cap, size))

    def _serve(self, study: StudyRuntime, now: float) -> None:
        """A running study starts its clock, its model fits and (once serving) its timers."""
        self.studies[study.id] = study
        if study.engine.state.is_final:
            study.done.set()
            return
        if study.engine.state is StudyState.RUNNING:
            if self.disk.held is None:  # a study restored on a full disk comes up held
                study.start_clock(now)
            study.fit_stats = self.fitter.add(study.id, study.engine)
        if self.trials.tg is not None:
            self.trials.spawn(self.watch, study)

    def start_watching(self) -> None:
        """Once the trial task group is open: the timers of every restored study."""
        for study in self.studies.values():
            if not study.done.is_set():
                self.trials.spawn(self.watch, study)

    async def admit(
        self, text: str, base_dir: Path, owner: int, *, env: Mapping[str, str] | None = None
    ) -> StudyRuntime:
        """A new study (a submit without a request id: an old client's).

        ``env``: the submitter's environment as the submit carried it, the base of the study's
        trials' (only the names hpod.core.passenv passes are kept); None: the daemon's own."""
        self._check_accepting()
        async with self._admitting:
            return await self._admit(text, base_dir, owner, None, env)

    async def admit_once(
        self,
        text: str,
        base_dir: Path,
        owner: int,
        request_id: str,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Admitted:
        """The study of ``owner``'s submit ``request_id``: the one stored (made by a try whose
        answer was lost, before a restart too), else a new one that keeps the id."""
        self._check_accepting()
        async with self._admitting:
            # The store, not the registry: it has every committed study, also one whose spec
            # could not be restored.
            row = self.store.load_study_by_request(owner, request_id)
            if row is None:
                return Admitted(await self._admit(text, base_dir, owner, request_id, env), False)
        if (row.spec_toml, row.base_dir) != (text, str(base_dir)):
            raise InvalidParams(
                f"request id {request_id!r} already made study {row.id} from another spec (or "
                "base_dir); a new submit needs a new request id"
            )
        study = self.studies.get(row.id)
        if study is None:
            raise BadState(
                f"request id {request_id!r} made study {row.id}, which this daemon could not "
                "restore (its log says why)"
            )
        log.info("study_resubmitted", study=row.id, owner=owner, request_id=request_id)
        return Admitted(study, True)

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown("the daemon is shutting down; submit again once it is back")

    async def _admit(
        self,
        text: str,
        base_dir: Path,
        owner: int,
        request_id: str | None,
        env: Mapping[str, str] | None,
    ) -> StudyRuntime:
        spec = StudySpec.from_toml(text, base_dir=base_dir)
        res = spec.resources
        refusal = self.pool.gpu_refusal(res.gpus_per_trial, res.cpu_fallback)
        if refusal is not None:
            # Refused now rather than left to run on CPU slots (or never to start).
            raise NoGpus(
                f"study {spec.name} {refusal}",
                data={"gpus_per_trial": res.gpus_per_trial, "gpus": len(self.pool.gpus)},
            )
        deadline = spec.limits.deadline
        if deadline is not None and deadline <= time.time():
            raise SpecError(
                [
                    f"limits.deadline: {format_deadline(deadline)} is in the past; give a "
                    "later moment (or none, and end the study with `hpodctl stop`)"
                ]
            )
        if not spec.workdir.is_dir():
            raise SpecError(
                [
                    f"workdir: {spec.workdir} is not a folder; fix `workdir` (relative "
                    "to the spec file)"
                ]
            )
        if self.disk.held is not None:
            # Its row would be the next write the disk refuses, and its trials could not start.
            raise StoreFull(f"study {spec.name} not submitted: {self.disk.held}")
        engine = Study.new(spec)
        seq = max((s.seq for s in self.studies.values()), default=0) + 1
        seq = max(seq, self.store.next_study_seq())
        sid = f"{spec.name}-{seq}"
        row = StudyRow(
            id=sid,
            seq=seq,
            name=spec.name,
            owner_uid=owner,
            spec_toml=text,
            base_dir=str(base_dir),
            state=engine.state,
            created_at=time.time(),
            ended_at=None,
            end_reason=None,
            elapsed=0.0,
            compute=0.0,
            request_id=request_id,
            # The daemon's own filter too, whatever the client sent: what PASSED and the
            # spec's pass_env name, never the daemon's or the service manager's variables.
            client_env=None if env is None else submit_env(env, spec.pass_env),
        )
        study = self._runtime(row, spec, engine)
        # 0700 and the owner's (a root daemon's studies/ is 0711): no one else reads it.
        os.close(open_dir(study.folder.parent, study.folder, owner_ids(owner), create=True))
        await self.store.write(
            insert_study_op(row),
            self.trials.events.op(
                sid, None, "study_submitted", {"name": spec.name}, row.created_at
            ),
        )
        self._serve(study, time.monotonic())
        log.info("study_submitted", study=sid, owner=owner)
        self.trials.wake()
        return study

    async def restore(self) -> None:
        # The runs the last daemon left (hpod.daemon.adoption): alive ones are adopted, ones
        # that ended meanwhile are recorded as they ended, the rest are resumed as before.
        left = survey(self.store.load_live_runs())
        kept: set[tuple[str, int]] = set()
        for row in self.store.load_studies():
            try:
                spec = StudySpec.from_toml(row.spec_toml, base_dir=Path(row.base_dir), stored=True)
            except SpecError as exc:
                log.error("study_unreadable", study=row.id, problems=list(exc.problems))
                continue
            # What `hpodctl set` changed, over the spec as submitted (hpod.core.changes).
            spec, skipped = chg.replay(spec, chg.load(row.changes))
            if skipped:
                log.warning("study_changes_skipped", study=row.id, problems=skipped)
            trial_rows = self.store.load_trials(row.id)
            records, last = self._trial_records(spec, row.id, trial_rows)
            live = {
                t.trial_id
                for t in trial_rows
                if t.state is TrialState.RUNNING
                and (found := left.get((row.id, t.trial_id))) is not None
                # A handed-out run has no process to prove: its caller runs it; a Slurm
                # job is proven by its job id, by its first poll (hpod.daemon.slurm).
                and (found.fate != "gone" or spec.executor.remote)
                and found.row.run == t.runs
            }
            engine = Study.restore(
                spec,
                records,
                state=StudyState(row.state),
                end_reason=row.end_reason,
                live=live,
                # One stored record per decision: the counts in `show` go on from them.
                decisions=self.store.decision_counts(row.id),
            )
            was = engine.state
            engine.resume()
            if engine.state is not was:
                # Kept in memory when the disk is full: a restart on a full disk comes up held.
                await self.disk.update_study(row.id, state=engine.state.value)
            study = self._runtime(row, spec, engine)
            self._claim_folder(study)
            await self._record_restored_ends(study, trial_rows, live)
            study.run_seconds = {t.trial_id: t.run_seconds for t in trial_rows}
            study.compute_seconds = {t.trial_id: t.compute_seconds for t in trial_rows}
            study.handles = {t.trial_id: list(t.handles) for t in trial_rows if t.handles}
            study.unrun = {t.trial_id for t in trial_rows if t.runs == 0}
            for tid in sorted(live):
                if spec.executor.slurm is not None:
                    self.trials.slurm.adopt(
                        study, left[(row.id, tid)].row, last.get(tid), row.clocks_at
                    )
                elif spec.executor.external:
                    self.trials.external.adopt(
                        study, left[(row.id, tid)].row, last.get(tid), row.clocks_at
                    )
                else:
                    await self.trials.adopt(
                        study, left[(row.id, tid)], last.get(tid), row.clocks_at
                    )
                kept.add((row.id, tid))
            self._serve(study, time.monotonic())
            log.info(
                "study_restored",
                study=row.id,
                state=engine.state.value,
                trials=len(records),
                to_resume=engine.counts()[TrialState.INTERRUPTED.value],
                adopted=sorted(live),
            )
            res = spec.resources
            refusal = self.pool.gpu_refusal(res.gpus_per_trial, res.cpu_fallback)
            if refusal is not None and not engine.state.is_final:
                # Admitted where there were GPUs (or before this check): never dropped, and
                # never run on CPU slots it did not accept; it waits, and `show` says why.
                log.warning("study_waits_for_gpus", study=row.id, reason=refusal)
        await self.trials.forget_left([f for key, f in left.items() if key not in kept])

    async def _record_restored_ends(
        self, study: StudyRuntime, rows: list[TrialRow], live: set[int]
    ) -> None:
        """Runs whose exit a killed daemon never stored, and whose processes went with it:
        ``Study.restore`` ends each as its last answer says (a PAUSE: paused, a STOP: ended).
        That end is stored now, with its event (trial_paused, trial_ended), so the event stream
        tells of it, and only once: the next restart finds it stored. (One left interrupted
        runs again, and its trial_resumed tells of it.)"""
        now = time.time()
        for t in rows:
            if t.state is not TrialState.RUNNING or t.trial_id in live:
                continue
            rec = study.engine.record(t.trial_id)
            if rec.state in (TrialState.RUNNING, TrialState.INTERRUPTED):
                continue
            await self.disk.write(
                update_trial_op(
                    study.id, t.trial_id, state=rec.state.value, ended_at=now, error=rec.error
                ),
                *self.trials.events.exit_ops(study, rec, None, now),
            )

    def _claim_folder(self, study: StudyRuntime) -> None:
        """A restored study's folder made its owner's and 0700 if an older hpod left it root's
        and 0755 (with its ``trials/``, in one walk: ``statetree.open_dir``)."""
        ids = owner_ids(study.owner)
        for path in (study.folder / "trials", study.folder):
            try:
                os.close(open_dir(study.folder.parent, path, ids, create=False, claim=True))
            except FileNotFoundError:
                continue
            except UnsafePath as exc:
                log.warning("study_folder_refused", study=study.id, problem=exc.message)
            return

    def _trial_records(
        self, spec: StudySpec, study_id: str, rows: list[TrialRow]
    ) -> tuple[list[TrialRecord], dict[int, ReportRow]]:
        """The trials as the engine takes them back, and each one's last report of its latest
        run (what an adopted run was last told, and the sequence number it sent it with)."""
        curves: dict[int, dict[float, float]] = {}
        vectors: dict[int, dict[float, tuple[float, ...]]] = {}
        keys: dict[int, set[str]] = {}
        # The last report of each trial's latest run (reports come in order): its answer says how
        # a run the store still calls running ended.
        latest = {t.trial_id: t.runs for t in rows}
        last: dict[int, ReportRow] = {}
        for rep in self.store.iter_reports(study_id):
            keys.setdefault(rep.trial_id, set()).update(rep.metrics)
            if rep.run == latest.get(rep.trial_id):
                last[rep.trial_id] = rep
            if not rep.counted or rep.resource is None:
                continue
            value = rep.metrics.get(spec.objective.metric)
            if spec.objective.is_multi:
                # As Study.on_report counts it: any of the metrics counts the report, and the
                # ones it left out are NaN.
                names = spec.objective.names
                if any(n in rep.metrics for n in names):
                    vector = tuple(_metric_number(rep.metrics.get(n)) for n in names)
                    vectors.setdefault(rep.trial_id, {})[rep.resource] = vector
                    value = math.nan if value is None else value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(rep.trial_id, {})[rep.resource] = float(value)
            elif value is not None:
                curves.setdefault(rep.trial_id, {})[rep.resource] = math.nan
        records = [
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
                last_decision=last[t.trial_id].decision if t.trial_id in last else None,
                interrupting=t.trial_id in last and last[t.trial_id].interrupting,
                reported_keys=tuple(sorted(keys.get(t.trial_id, ()))),
                vectors=tuple(sorted(vectors.get(t.trial_id, {}).items())),
                retries=tuple(OomRetry.from_dict(r) for r in t.retries),
            )
            for t in rows
        ]
        return records, last

    # -- ending ----------------------------------------------------------------------------------

    async def end(
        self, study: StudyRuntime, state: StudyState, reason: str, stop: StopReason
    ) -> None:
        """End a running study (a user's stop, a limit): its runs get STOP at their next report
        and SIGTERM now, then the grace period to checkpoint, then SIGKILL."""
        engine = study.engine
        if engine.state.is_final:
            raise BadState(f"study {study.id} has already ended ({engine.state.value})")
        engine.end(state, reason)
        event = "study_limit" if stop is StopReason.LIMIT else "study_stop"
        log.info(event, study=study.id, reason=reason, running=sorted(study.runs))
        told = (
            [
                self.trials.events.op(
                    study.id, None, "limit_reached", {"reason": reason}, time.time()
                )
            ]
            if stop is StopReason.LIMIT
            else []
        )
        await self.disk.write(
            update_study_op(study.id, state=engine.state.value, end_reason=reason), *told
        )
        if stop is StopReason.USER:
            # The stop answers once every run is reaped, so `hpodctl stop` returns to a quiet
            # machine.
            await self.trials.stop_and_wait(study, stop)
        else:
            self.trials.stop_all(study, stop)
        await self.maybe_finish(study)

    async def _end_for_limit(self, study: StudyRuntime, reason: str) -> None:
        if study.engine.state is StudyState.RUNNING:
            await self.end(study, StudyState.COMPLETED, reason, StopReason.LIMIT)

    async def maybe_finish(self, study: StudyRuntime) -> None:
        engine = study.engine
        if study.done.is_set() or study.ended is not None or not self.accepting:
            return
        if not engine.finished:
            return
        events = self.trials.events
        told: list[Op] = []
        if engine.state is StudyState.RUNNING:
            reason = lim.max_trials_reason(study.spec.limits, study.clocks(time.monotonic()))
            engine.conclude(reason)
            if reason is not None and engine.end_reason == reason:
                told.append(
                    events.op(study.id, None, "limit_reached", {"reason": reason}, time.time())
                )
        study.ended = time.time()
        study.stop_clock(time.monotonic())
        told.extend(events.study_ended_ops(study, study.ended))
        await self.disk.write(
            update_study_op(
                study.id,
                state=engine.state.value,
                ended_at=study.ended,
                end_reason=engine.end_reason,
                elapsed=study.elapsed_base,
                compute=study.compute_base,
            ),
            *told,
        )
        await self._prune_checkpoints(study)
        await self._write_report(study)
        log.info(
            "study_end",
            study=study.id,
            state=engine.state.value,
            reason=engine.end_reason,
            best=best_view(study.id, engine.best()),
        )
        study.done.set()

    # -- what the trials service tells ----------------------------------------------------------

    async def run_ended(self, study: StudyRuntime) -> None:
        await self._save_clocks(study)
        await self._prune_checkpoints(study)
        await self.maybe_finish(study)

    async def nothing_to_run(self, study: StudyRuntime, reason: str) -> None:
        await self._end_for_limit(study, reason)

    async def settle(self, study: StudyRuntime) -> None:
        await self.maybe_finish(study)

    # -- shutdown --------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every run as interrupted, wait until each is recorded, then the studies."""
        self.accepting = False
        self.trials.close()
        for scope in list(self._plot_scopes):
            scope.cancel()
        log.info("shutting_down", running=sum(len(s.runs) for s in self.studies.values()))
        # What each run is told is stored first: a daemon killed during this shutdown leaves
        # the next one runs it knows to resume once they exit, not to count as ended.
        due = time.time() + self.config.stop_grace
        told = [
            dataclasses.replace(
                update_live_run_op(
                    study.id, tid, stop_reason=StopReason.SHUTDOWN.value, stop_at=due
                ),
                must_change=False,  # one that exited meanwhile has no row left: nothing to tell
            )
            for study in self.studies.values()
            for tid in study.runs
        ]
        try:
            await self.disk.write(*told)
        except Exception as exc:  # a shutdown goes on whatever the store says
            log.warning("shutdown_not_recorded", error=str(exc))
        now = time.monotonic()
        runs: list[TrialRun] = []
        for study in self.studies.values():
            # The daemon being down does not count against optimization_time.
            study.stop_clock(now)
            study.wake()
            runs.extend(study.runs.values())
            self.trials.stop_all(study, StopReason.SHUTDOWN)
        for run in runs:
            await run.exited.wait()
        for study in self.studies.values():
            if study.engine.state is StudyState.RUNNING:
                study.engine.interrupt()
                await self.disk.update_study(study.id, state=study.engine.state.value)
            if not study.done.is_set():
                await self._save_clocks(study)
        # A disk still full: what the store could not take is lost with the process, and the
        # restart goes by what it holds (a run it still calls running is resumed).
        await self.disk.flush()
        self.disk.forget()

    def _disk_changed(self, held: bool) -> None:
        """The disk filled (held) or has room again: a held study's optimization_time does not
        run down while it may start nothing; its running trials' compute time still counts."""
        now = time.monotonic()
        for study in self.studies.values():
            if study.engine.state is StudyState.RUNNING and not study.done.is_set():
                if held:
                    study.stop_clock(now)
                else:
                    study.start_clock(now)
                study.wake()

    # -- clocks, reports, checkpoints, timers ----------------------------------------------------

    async def save_all_clocks(self) -> None:
        """Every study's clocks, now (before a re-exec: its adopted runs count from here)."""
        for study in self.studies.values():
            if not study.done.is_set():
                await self._save_clocks(study)

    async def _save_clocks(self, study: StudyRuntime) -> None:
        mono = time.monotonic()
        # With the time they were saved at: a run adopted after a crash counts from there.
        await self.disk.update_study(
            study.id,
            elapsed=study.elapsed(mono),
            compute=study.compute(mono),
            clocks_at=time.time(),
        )

    async def report(self, study: StudyRuntime) -> dict[str, Any]:
        """The study's objective report as of now. Its per-trial rows are made a slice of
        :data:`REPORT_SLICE` trials at a time, the loop free between slices (10,000 trials made
        at once held it 100 ms); a trial that changes meanwhile is as it was at its slice."""
        rows: list[dict[str, Any]] = []
        while len(rows) < len(study.engine.trials):
            if rows:
                await anyio.lowlevel.checkpoint()
            start = len(rows)
            rows += trial_rows(
                study.engine,
                study.run_seconds,
                study.compute_seconds,
                start,
                start + REPORT_SLICE,
            )
        return self._report(study, rows)

    def _report(self, study: StudyRuntime, rows: list[dict[str, Any]]) -> dict[str, Any]:
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
            rows=rows,
        )

    async def _write_report(self, study: StudyRuntime) -> None:
        report = await self.report(study)
        write = partial(
            write_report,
            study.folder,
            report,
            within=study.folder.parent,
            ids=owner_ids(study.owner),
        )
        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            log.warning("report_write_failed", study=study.id, error=str(exc))
        except UnsafePath as exc:
            log.warning("report_write_failed", study=study.id, error=exc.message)
        log.info("objective_report", **report_summary(report))
        if (
            self.config.report_plots
            and plotting.available()
            and study.id not in self._plotting
            and self.accepting
            and self.trials.tg is not None
            and report.get("total_trials")
        ):
            # In a task of its own: neither the study's timers nor its end wait for a drawing.
            self._plotting.add(study.id)
            self.trials.spawn(self._write_plots, study, report)

    async def _write_plots(self, study: StudyRuntime, report: Mapping[str, Any]) -> None:
        """The report's PNGs beside report.json (hpod.daemon.plotting); a failure is logged."""
        with anyio.CancelScope() as scope:
            self._plot_scopes.add(scope)
            try:
                await self._draw_plots(study, report)
            finally:
                self._plot_scopes.discard(scope)
        if scope.cancelled_caught:
            log.info("report_plots_skipped", study=study.id, reason="the daemon is stopping")

    async def _draw_plots(self, study: StudyRuntime, report: Mapping[str, Any]) -> None:
        try:
            # Read on the loop (it changes there): the rest, every stored report turned into
            # points and encoded, runs in a thread.
            rungs = study.engine.rung_occupancy()
            objective = study.engine.objective

            def payload() -> bytes:
                drawn = plotting.drawn_trials(report, self.store.report_counts(study.id))
                rows = (
                    self.store.iter_reports(study.id)
                    if drawn is None
                    else self.store.iter_reports_of(study.id, drawn)
                )
                return plotting.encode(report, plotting.plot_points(objective, rows), rungs)

            images = await plotting.draw(await anyio.to_thread.run_sync(payload))
            write = partial(
                plotting.write_images,
                study.folder,
                images,
                within=study.folder.parent,
                ids=owner_ids(study.owner),
            )
            await anyio.to_thread.run_sync(write)
            log.debug("report_plots", study=study.id, images=sorted(images))
        except UnsafePath as exc:
            log.warning("report_plots_failed", study=study.id, error=exc.message)
        except (OSError, ValueError, TimeoutError, subprocess.CalledProcessError) as exc:
            detail = str(exc)
            if isinstance(exc, subprocess.CalledProcessError):
                detail += ": " + exc.stderr.decode(errors="replace")[-500:]
            log.warning("report_plots_failed", study=study.id, error=detail)
        finally:
            self._plotting.discard(study.id)

    async def _prune_checkpoints(self, study: StudyRuntime) -> None:
        keep = study.spec.report.keep_checkpoints
        if keep is None:
            return
        engine = study.engine
        # Several objectives: each trial's value vector, so the fronts are what is kept.
        value = engine.vector_of if engine.objective.is_multi else engine.value_of
        rows: list[tuple[int, TrialState, float | tuple[float, ...] | None]] = [
            (t.trial_id, t.state, value(t.trial_id) if t.curve else None) for t in engine.trials
        ]
        doomed = [
            tid
            for tid in lim.checkpoints_to_delete(engine.objective, rows, keep)
            if tid not in study.pruned
        ]
        for tid in doomed:
            study.pruned.add(tid)
            problems = await anyio.to_thread.run_sync(self._delete_checkpoint, study, tid)
            if problems:
                log.warning(
                    "checkpoint_delete_problems", study=study.id, trial=tid, problems=problems
                )
        if doomed:
            log.info("checkpoints_deleted", study=study.id, trials=doomed, keep=keep)

    def _delete_checkpoint(self, study: StudyRuntime, trial_id: int) -> list[str]:
        """Delete a trial's checkpoint folder, which its owner controls: walked to without
        following a link, deleted by descriptor (a link in it is removed, never followed; a
        checkpoint that is itself a link loses the link only). The problems met."""
        folder = self.trial_dir(study, trial_id)
        try:
            fd = open_dir(study.folder.parent, folder, owner_ids(study.owner), create=False)
        except FileNotFoundError:
            return []
        except UnsafePath as exc:
            return [exc.message]
        try:
            return remove_tree(fd, "checkpoint", folder)
        except OSError as exc:
            return [str(exc)]
        finally:
            os.close(fd)

    async def watch(self, study: StudyRuntime) -> None:
        """The study's timers: its limits' deadline, its report period, saving its clocks.

        It sleeps until the nearest of them, or until poked (a run started or ended, which
        moves the compute deadline), instead of polling.
        """
        period = study.spec.report.period
        mono = time.monotonic()
        next_report = mono + period
        next_save = mono + CLOCK_SAVE_SECONDS
        while not study.done.is_set() and self.accepting:
            mono = time.monotonic()
            if study.spec.report.period != period:
                # `hpodctl set report_period`: the next report is due the new period after the
                # last one (at once, if that is past). Its limits are read afresh below.
                next_report += study.spec.report.period - period
                period = study.spec.report.period
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
                # Not while the disk is full: the clocks are kept here, and the first save
                # after it has room stores them (saves queued behind the hold would only pile up).
                if self.disk.held is None:
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

    # -- changes (hpodctl set) -------------------------------------------------------------------

    async def change(
        self, study: StudyRuntime, raw: Mapping[str, Any], by: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Change a running study's limits, deadline, report period or priority (hpod.core.changes):
        stored first, then in force at once (the watcher looks again, the dispatcher too). The
        study's whole list of changes, and the entries this one made (none for values it had)."""
        values, problems = chg.check(raw)
        if problems:
            raise InvalidParams(
                problems_message("the change", problems), data={"problems": problems}
            )
        self._check_accepting()
        async with self._changing:
            engine = study.engine
            if engine.state.is_final or study.done.is_set():
                raise BadState(
                    f"study {study.id} has ended ({engine.state.value}); an ended study takes no "
                    "changes (submit a new one)"
                )
            made = len(engine.trials)
            wanted = values.get("max_trials")
            if wanted is not None and wanted < made:
                raise InvalidParams(
                    f"max_trials: {wanted} is fewer than the {made} trials study {study.id} has "
                    f"already started; the least it can be now is {made} (then no new trial "
                    "starts), or `hpodctl stop` it",
                    data={"problems": [f"max_trials: the least it can be now is {made}"]},
                )
            made_now = chg.entries(study.spec, values, at=time.time(), by=by)
            if not made_now:
                return study.changes, []  # every value is the study's already
            new = chg.apply(study.spec, values)
            history = [*study.changes, *made_now]
            # Stored before it is in force: a change the study acted on survives a crash. With
            # its study_changed event, in the same commit (hpod.daemon.events).
            await self.disk.write(
                update_study_op(study.id, changes=chg.dump(history)),
                self.trials.events.op(
                    study.id, None, "study_changed", {"changes": made_now}, made_now[0]["at"]
                ),
            )
            study.spec = new
            engine.spec = new  # the engine reads max_trials off its spec
            study.changes = history
        log.info("study_changed", study=study.id, by=by, changes=values)
        study.wake()  # a limit shortened (or a deadline past) is acted on now, not at the next tick
        self.trials.wake()  # more (or fewer) trials may start
        return history, made_now


def _metric_number(raw: Any) -> float:
    """A stored metric as the engine counts it: a float, NaN for one missing or not a number."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    return math.nan
