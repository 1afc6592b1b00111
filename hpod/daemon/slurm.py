"""Trials as Slurm jobs (issue 18; docs/slurm.md): ``[executor] type = "slurm"``.

Each run of a trial is one batch job, submitted with ``sbatch`` as the study's owner (a root
daemon runs sbatch with the owner's uid, gid and groups: Slurm runs the job as whoever submitted
it, never as root for a user's study). The daemon stays the one scheduler: it decides every
launch, answers every report and counts every limit; Slurm only places and runs the job.

- The job's environment is the trial contract's (hpod.daemon.runner.trial_environment): its
  ``HPOD_SOCKET`` is the daemon's TCP endpoint (hpod.daemon.tcp) where there is one, and its
  GPUs are the ones Slurm gives it (``CUDA_VISIBLE_DEVICES`` is Slurm's, not hpod's).
- The job's script runs the trial's command as a child, forwards SIGTERM to it, and writes the
  trial's exit status next to its logs (``slurm-<run>.exit``) before it ends: that file, on the
  storage the daemon reads, says how the trial ended, even after Slurm has forgotten the job.
- A PAUSE answer ends the job once the trial has saved its checkpoint and exited; a promotion is
  a new job that resumes from that checkpoint. A stop is ``scancel --signal=TERM --full``, the
  grace period, then ``scancel`` (SIGKILL).
- Queue time is nobody's: a run's clocks (its trial's run time, the study's compute) start when
  Slurm starts the job (squeue's start time), not when it was submitted. ``max_concurrent``
  bounds the study's jobs, queued and running alike.
- One poller asks ``squeue`` for every watched job at once, every ``poll`` seconds.
- A daemon that stops or dies leaves its jobs to Slurm: the next one adopts each by its job id
  (stored with the run in live_runs.handle), as live restore adopts processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pwd
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import structlog

from hpod.core.command import CommandError, render_command
from hpod.core.spec import SlurmSpec
from hpod.core.states import StudyState
from hpod.core.study import Launch
from hpod.daemon.disk import Disk
from hpod.daemon.runner import TrialLaunch, TrialStartError, prepare_folders, trial_environment
from hpod.daemon.runtime import RunState, StopReason, StudyRuntime, TrialRun
from hpod.daemon.slots import Slot
from hpod.daemon.statetree import UnsafePath, owner_ids, read_tail, walk_dir
from hpod.daemon.store import LiveRunRow, ReportRow, update_live_run_op, update_trial_op

log = structlog.get_logger("hpod.daemon")

# Slurm's job states (squeue %T), by what they mean for the run.
QUEUED = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
RUNNING = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"})
# Ended by the machine, not the trial: resumed from its checkpoint, never failed for it.
LOST = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
# After scancel (SIGKILL), how long Slurm gets to end the job before the daemon stops asking.
KILL_WAIT_SECONDS = 60.0
# A job that ended but whose exit file is not there yet (shared storage catching up).
EXIT_FILE_WAIT = 3.0
CLIENT_TIMEOUT = 30.0  # one sbatch / squeue / scancel

Outcome = Literal["ended", "lost", "left", "failed"]


def job_name(study_id: str, trial_id: int, run: int) -> str:
    return f"hpod.{study_id}.{trial_id}.{run}"


def slot_for(spec: SlurmSpec) -> Slot:
    """The slot of a Slurm run: none of the pool's; it counts as the GPUs it asks for (one
    device, at least, for compute_time)."""
    return Slot(index=-(1 << 61), devices=tuple(f"slurm:{i}" for i in range(spec.gpus)))


@dataclass(frozen=True)
class JobInfo:
    """What squeue says of one job."""

    job: str
    state: str
    node: str
    start: float | None  # wall time it started, once it has
    reason: str


# -- the Slurm commands --------------------------------------------------------------------------


class SlurmError(Exception):
    """A Slurm command failed (the controller away, a refusal)."""


async def _run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    user: int | None = None,
    cwd: str | None = None,
) -> str:
    extra: dict[str, Any] = {}
    if user is not None:
        pw = pwd.getpwuid(user)
        groups = [g for g in os.getgrouplist(pw.pw_name, pw.pw_gid) if g != pw.pw_gid]
        extra = {"user": user, "group": pw.pw_gid, "extra_groups": groups}
    try:
        with anyio.fail_after(CLIENT_TIMEOUT):
            done = await anyio.run_process(
                list(argv),
                input=input,
                env=dict(env) if env is not None else None,
                check=False,
                cwd=cwd,
                **extra,
            )
    except TimeoutError:
        raise SlurmError(f"{argv[0]} did not answer within {CLIENT_TIMEOUT:g}s") from None
    except OSError as exc:
        raise SlurmError(f"could not run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip() or done.stdout.decode(errors="replace")
        raise SlurmError(f"{argv[0]} exited {done.returncode}: {said.strip()}")
    return done.stdout.decode(errors="replace")


async def squeue(jobs: Sequence[str]) -> dict[str, JobInfo]:
    """The jobs Slurm still knows, by id (ended ones too, until MinJobAge)."""
    if not jobs:
        return {}
    try:
        out = await _run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={','.join(jobs)}",
                "--format=%i|%T|%N|%S|%r",
            ]
        )
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return {}  # one id, and Slurm has forgotten it
        raise
    seen: dict[str, JobInfo] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        job, state, node, start, reason = parts
        seen[job] = JobInfo(job, state.split()[0], node, _slurm_time(start), reason)
    return seen


def _slurm_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


async def scancel(job: str, sig: str | None = None) -> None:
    argv = ["scancel"]
    if sig is not None:
        # --full: the batch step too (the script, which forwards it to the trial).
        argv += [f"--signal={sig}", "--full"]
    await _run([*argv, job])


# -- the job ------------------------------------------------------------------------------------


def sbatch_arguments(spec: SlurmSpec, launch: TrialLaunch, folder: Path) -> list[str]:
    name = job_name(launch.study_id, launch.trial_id, launch.run)
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--output={folder / 'stdout.log'}",
        f"--error={folder / 'stderr.log'}",
        "--open-mode=append",
        f"--chdir={launch.workdir}",
        "--export=ALL",
        "--nodes=1",
        "--ntasks=1",
    ]
    if spec.partition:
        argv.append(f"--partition={spec.partition}")
    if spec.account:
        argv.append(f"--account={spec.account}")
    if spec.qos:
        argv.append(f"--qos={spec.qos}")
    if spec.time_limit is not None:
        argv.append(f"--time={max(1, math.ceil(spec.time_limit / 60))}")
    if spec.gres:
        argv.append(f"--gres={spec.gres}")
    elif spec.gpus:
        argv.append(f"--gpus={spec.gpus}")
    if spec.cpus is not None:
        argv.append(f"--cpus-per-task={spec.cpus}")
    if spec.memory is not None:
        argv.append(f"--mem={max(1, math.ceil(spec.memory / 1024**2))}M")
    argv += list(spec.sbatch_args)
    return argv


def job_script(spec: SlurmSpec, argv: Sequence[str], exit_name: str) -> str:
    """The batch script: the setup, the trial's command as a child (SIGTERM forwarded), and
    its exit status written beside its logs (renamed into place) before the job ends."""
    setup = spec.setup or ":"
    return f"""#!/bin/sh
# hpod trial run (docs/slurm.md)
{setup}
{shlex.join(argv)} &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
done
exit_file="$HPOD_TRIAL_DIR/{exit_name}"
printf '{{"returncode": %d, "ended_at": %s}}\\n' "$rc" "$(date +%s)" > "$exit_file.tmp" \\
    && mv -f "$exit_file.tmp" "$exit_file"
exit "$rc"
"""


def _returncode(shell_rc: int) -> int:
    """The shell's status of its child as Popen's returncode: 128+N is signal N."""
    if 128 < shell_rc <= 128 + 64:
        return -(shell_rc - 128)
    return shell_rc


# -- the runs -----------------------------------------------------------------------------------


class RunHost(Protocol):
    """What of the trials service (hpod.daemon.trials.Trials) a Slurm run uses."""

    closed: bool
    disk: Disk
    trial_socket: str
    trial_address: str | None
    tls_ca: str | None
    _adopted: list[tuple[StudyRuntime, TrialRun]]

    def spawn(self, fn: object, *args: object) -> None: ...

    def _trial_launch(self, study: StudyRuntime, run: TrialRun) -> TrialLaunch: ...

    async def _after_exit(
        self, study: StudyRuntime, run: TrialRun, returncode: int | None, error: str | None
    ) -> None: ...


class SlurmRuns:
    """Submits the runs of Slurm studies, watches their jobs, stops them, adopts them."""

    def __init__(self, trials: RunHost) -> None:
        self.trials = trials
        self._watched: dict[str, float] = {}  # job id: its study's poll interval
        self._seen: dict[str, JobInfo | None] = {}  # None: Slurm knows it no more
        self._tick = anyio.Event()
        self._polling = False
        self._poke = anyio.Event()

    # -- the poller --------------------------------------------------------------------------

    async def _next(self, job: str, interval: float) -> JobInfo | None:
        """What the next poll says of ``job``; None once Slurm does not know it."""
        self._watched[job] = interval
        if not self._polling:
            self._polling = True
            self.trials.spawn(self._poll_loop)
        tick = self._tick
        await tick.wait()
        return self._seen.get(job)

    def poke(self) -> None:
        """Poll now (a stop was asked for, a job is expected to end)."""
        self._poke.set()

    async def _poll_loop(self) -> None:
        failing = False
        try:
            while self._watched:
                with anyio.move_on_after(min(self._watched.values())):
                    await self._poke.wait()
                self._poke = anyio.Event()
                jobs = sorted(self._watched)
                try:
                    seen = await squeue(jobs)
                except SlurmError as exc:
                    # The controller is away: the jobs are as they were; ask again next time.
                    if not failing:
                        log.warning("slurm_unreachable", error=str(exc))
                    failing = True
                    continue
                if failing:
                    log.info("slurm_reachable")
                    failing = False
                for job in jobs:
                    self._seen[job] = seen.get(job)
                tick, self._tick = self._tick, anyio.Event()
                tick.set()
        finally:
            self._polling = False

    def _unwatch(self, job: str) -> None:
        self._watched.pop(job, None)
        self._seen.pop(job, None)

    # -- one run -----------------------------------------------------------------------------

    async def run(self, study: StudyRuntime, run: TrialRun) -> None:
        """A Slurm run's task: submit (or take over) its job, wait for it inside the run's
        scope, stop it when the scope fires, then record its end as a local run's is recorded;
        a shutdown leaves it, unrecorded, to the next daemon."""
        outcome: Outcome = "left"  # cancelled from outside: the daemon's trouble
        returncode: int | None = None
        error: str | None = None
        job: str | None = None
        try:
            if run.adopted:
                job = None if run.handle is None else str(run.handle.get("job") or "") or None
                if job is None:
                    # Killed between its launch and storing its job id: its job, if sbatch
                    # got through, is found by name and cancelled; the trial is resumed. If
                    # Slurm knows no job by that name, the run never was one.
                    if not await self._cancel_named(study, run):
                        run.never_ran = True
                        log.info(
                            "slurm_never_submitted",
                            study=study.id,
                            trial=run.trial_id,
                            run=self._run_number(study, run),
                        )
                    outcome = "lost"
            else:
                try:
                    job = await self._submit(study, run)
                except TrialStartError as exc:
                    outcome, error = "failed", exc.message
                except Exception as exc:
                    # Whatever else goes wrong submitting one run fails that trial, never the
                    # daemon (as a local launch's trouble does).
                    outcome, error = "failed", f"could not submit: {type(exc).__name__}: {exc}"
                    log.warning(
                        "slurm_submit_error", study=study.id, trial=run.trial_id, error=error
                    )
            if job is not None:
                outcome, returncode, error = await self._watch(study, run, job)
        finally:
            if outcome == "lost":
                run.request_stop(StopReason.SHUTDOWN, time.monotonic())
            if run.state is not RunState.EXITED:
                run.move(RunState.EXITED)
            run.exited.set()
            if job is not None:
                self._unwatch(job)
            if outcome != "left":
                with anyio.CancelScope(shield=True):
                    mono = time.monotonic()
                    if math.isinf(run.started):  # never ran: no time of anyone's
                        run.started = run.compute_from = mono
                    await self._store_handle(study, run, ended=True)
                    await self.trials._after_exit(study, run, returncode, error)
                    if job is not None:
                        await anyio.to_thread.run_sync(self._forget_exit, study, run)

    async def _submit(self, study: StudyRuntime, run: TrialRun) -> str:
        spec = study.spec.executor.slurm
        assert spec is not None
        launch = self.trials._trial_launch(study, run)
        launch = dataclasses.replace(
            launch, socket_path=self.trials.trial_address or self.trials.trial_socket
        )
        env = self._environment(study, launch, spec)
        ids = owner_ids(study.owner)
        try:
            argv = render_command(
                launch.command,
                launch.config,
                trial_id=launch.trial_id,
                trial_dir=launch.trial_dir,
                checkpoint_dir=launch.checkpoint_dir,
            )
        except CommandError as exc:
            raise TrialStartError(str(exc)) from None
        # Its folders the owner's, and a header in each log (the job appends below it).
        logs = await anyio.to_thread.run_sync(prepare_folders, launch, ids)
        for opened in logs:
            opened.close()
        script = job_script(spec, argv, exit_name(launch.run))
        args = sbatch_arguments(spec, launch, launch.trial_dir)
        user = study.owner if os.geteuid() == 0 and study.owner != 0 else None
        submitted = time.time()
        try:
            out = await _run(args, input=script.encode(), env=env, user=user, cwd="/")
        except SlurmError as exc:
            raise TrialStartError(f"sbatch refused the job: {exc}") from None
        job = out.strip().split(";", 1)[0]
        if not job.isdigit() and not job.replace("_", "").isdigit():
            raise TrialStartError(f"sbatch answered no job id: {out.strip()!r}")
        run.handle = {
            "run": launch.run,
            "job": job,
            "state": "PENDING",
            "node": None,
            "submitted_at": submitted,
            "started_at": None,
            "ended_at": None,
        }
        await self._store_handle(study, run)
        if run.state is RunState.STARTING:
            run.move(RunState.RUNNING)
        log.info("slurm_submitted", study=study.id, trial=run.trial_id, job=job, run=launch.run)
        return job

    def _environment(
        self, study: StudyRuntime, launch: TrialLaunch, spec: SlurmSpec
    ) -> dict[str, str]:
        base = study.client_env if study.client_env is not None else dict(os.environ)
        # A submitter inside an allocation of its own passes SLURM_* on: not this job's.
        base = {k: v for k, v in base.items() if not k.startswith("SLURM_")}
        env = trial_environment(launch, base)
        if spec.gpus or spec.gres:
            # The GPUs are the ones Slurm gives the job: it sets CUDA_VISIBLE_DEVICES itself.
            env.pop("CUDA_VISIBLE_DEVICES", None)
        if self.trials.tls_ca is not None and launch.socket_path.startswith("tls://"):
            env["HPOD_TLS_CA"] = self.trials.tls_ca
        # sbatch itself finds its cluster as the daemon does.
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return env

    async def _watch(
        self, study: StudyRuntime, run: TrialRun, job: str
    ) -> tuple[Outcome, int | None, str | None]:
        spec = study.spec.executor.slurm
        assert spec is not None
        info: JobInfo | None = None
        with run.scope:
            while True:
                info = await self._next(job, spec.poll)
                if info is None or not self._update(study, run, info):
                    break
                if info.state in RUNNING and run.handle and run.handle.get("_stored") != "R":
                    run.handle["_stored"] = "R"
                    await self._store_handle(study, run)
            return await self._ended(study, run, job, info)
        # The scope fired: a stop was asked for (or trial_time ran out).
        if run.stop_reason is StopReason.SHUTDOWN:
            return "left", None, None
        if not study.stop_if_out_of_time(run) and run.stop_reason is StopReason.DECISION:
            log.warning("trial_ignored_decision", study=study.id, trial=run.trial_id)
        with anyio.CancelScope(shield=True):
            info = await self._stop(study, run, job, study.spec.stop_grace)
            ended = await self._ended(study, run, job, info)
        return ended

    def _update(self, study: StudyRuntime, run: TrialRun, info: JobInfo) -> bool:
        """Take what squeue said; False once the job has ended."""
        handle = run.handle
        if handle is not None:
            handle["state"], handle["node"] = info.state, info.node or handle.get("node")
        if info.state in QUEUED:
            return True
        if math.isinf(run.started):
            # It runs: its clocks start now (from Slurm's start time), not at its submit.
            wall, mono = time.time(), time.monotonic()
            began = info.start if info.start is not None else wall
            run.started = run.compute_from = run.mark_time = mono - max(0.0, wall - began)
            if handle is not None:
                handle["started_at"] = began
            limit = study.spec.limits.trial_time
            if limit is not None:
                used = study.run_seconds.get(run.trial_id, 0.0)
                run.cap_time(run.started + max(0.0, limit - used))
            study.wake()
            log.info(
                "slurm_running", study=study.id, trial=run.trial_id, job=info.job, node=info.node
            )
        return info.state in RUNNING

    async def _stop(
        self, study: StudyRuntime, run: TrialRun, job: str, grace: float
    ) -> JobInfo | None:
        """scancel --signal=TERM, the grace period, then scancel (SIGKILL): what Slurm says of
        the job at its end (None: forgotten)."""
        spec = study.spec.executor.slurm
        assert spec is not None
        info = self._seen.get(job)
        queued = info is not None and info.state in QUEUED
        with contextlib.suppress(SlurmError):
            if queued or math.isinf(run.started):
                await scancel(job)  # nothing of it ran: no grace to give
            else:
                await scancel(job, "TERM")
        log.info("slurm_stop", study=study.id, trial=run.trial_id, job=job, grace=grace)
        with run.grace, anyio.move_on_after(grace):
            while True:
                self.poke()
                info = await self._next(job, spec.poll)
                if info is None or info.state not in RUNNING | QUEUED:
                    return info
        with contextlib.suppress(SlurmError):
            await scancel(job)
        with anyio.move_on_after(KILL_WAIT_SECONDS):
            while True:
                self.poke()
                info = await self._next(job, spec.poll)
                if info is None or info.state not in RUNNING | QUEUED:
                    return info
        return info

    async def _ended(
        self, study: StudyRuntime, run: TrialRun, job: str, info: JobInfo | None
    ) -> tuple[Outcome, int | None, str | None]:
        """How the job ended: the exit file its script wrote, else what Slurm says."""
        if run.handle is not None:
            run.handle["ended_at"] = time.time()
            if info is not None:
                run.handle["state"] = info.state
        written = await self._read_exit(study, run)
        if written is None and info is not None and info.state not in LOST:
            with anyio.move_on_after(EXIT_FILE_WAIT):
                while written is None:
                    await anyio.sleep(0.2)  # shared storage may show the file a moment late
                    written = await self._read_exit(study, run)
        if written is not None:
            rc = _returncode(written)
            log.info(
                "slurm_ended",
                study=study.id,
                trial=run.trial_id,
                job=job,
                returncode=rc,
                state=None if info is None else info.state,
            )
            return "ended", rc, None
        state = "forgotten" if info is None else info.state
        log.info("slurm_ended", study=study.id, trial=run.trial_id, job=job, state=state)
        if info is None or info.state in LOST:
            return "lost", None, None  # resumed from its checkpoint
        if run.forces_stop or run.stop_reason is StopReason.DECISION:
            return "ended", -signal.SIGKILL, None
        if info.state == "TIMEOUT":
            return "ended", -signal.SIGKILL, "Slurm's time limit ended the job (time_limit)"
        if info.state == "OUT_OF_MEMORY":
            return "ended", -signal.SIGKILL, "Slurm killed the job: out of memory"
        return "ended", -signal.SIGKILL, f"the job ended {info.state} without an exit status"

    # -- its files ---------------------------------------------------------------------------

    def _folder(self, study: StudyRuntime, run: TrialRun) -> tuple[Path, Path]:
        launch = self.trials._trial_launch(study, run)
        return launch.top, launch.trial_dir

    async def _read_exit(self, study: StudyRuntime, run: TrialRun) -> int | None:
        return await anyio.to_thread.run_sync(self._read_exit_sync, study, run)

    def _read_exit_sync(self, study: StudyRuntime, run: TrialRun) -> int | None:
        top, folder = self._folder(study, run)
        ids = owner_ids(study.owner)
        name = exit_name(self._run_number(study, run))
        try:
            fd, trusted = walk_dir(top, folder, ids, create=False)
        except (OSError, UnsafePath):
            return None
        try:
            data, _ = read_tail(fd, name, ids, folder, 4096, trusted=trusted)
        except (OSError, UnsafePath):
            return None
        finally:
            os.close(fd)
        try:
            raw = json.loads(data or b"null")
        except ValueError:
            return None
        rc = raw.get("returncode") if isinstance(raw, dict) else None
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else None

    def _forget_exit(self, study: StudyRuntime, run: TrialRun) -> None:
        top, folder = self._folder(study, run)
        try:
            fd, _ = walk_dir(top, folder, owner_ids(study.owner), create=False)
        except (OSError, UnsafePath):
            return
        try:
            with contextlib.suppress(OSError):
                os.unlink(exit_name(self._run_number(study, run)), dir_fd=fd)
        finally:
            os.close(fd)

    @staticmethod
    def _run_number(study: StudyRuntime, run: TrialRun) -> int:
        if run.handle is not None and isinstance(run.handle.get("run"), int):
            return int(run.handle["run"])
        return study.engine.trials[run.trial_id].runs

    async def _cancel_named(self, study: StudyRuntime, run: TrialRun) -> bool:
        """Cancel the run's job by its name; False only if Slurm surely has none by it."""
        name = job_name(study.id, run.trial_id, self._run_number(study, run))
        try:
            # Ended jobs too (until MinJobAge): one that ran and ended was a run.
            known = await _run(
                ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"]
            )
            submitted = bool(known.strip())
        except SlurmError:
            submitted = True  # the controller is away: assume it was
        with contextlib.suppress(SlurmError):
            await _run(["scancel", f"--name={name}"])
        return submitted

    async def _store_handle(self, study: StudyRuntime, run: TrialRun, ended: bool = False) -> None:
        """The run's handle into live_runs and its trial's list (trials.handles)."""
        if run.handle is None:
            return
        shown = {k: v for k, v in run.handle.items() if not k.startswith("_")}
        runs = study.handles.setdefault(run.trial_id, [])
        if runs and runs[-1].get("run") == shown.get("run"):
            runs[-1] = shown
        else:
            runs.append(shown)
        ops = [update_trial_op(study.id, run.trial_id, handles=list(runs))]
        if not ended:  # the exit's commit deletes the live row
            ops.append(update_live_run_op(study.id, run.trial_id, handle=shown))
        await self.trials.disk.write(*ops)

    # -- after a restart ---------------------------------------------------------------------

    def adopt(
        self,
        study: StudyRuntime,
        row: LiveRunRow,
        last: ReportRow | None,
        clocks_at: float | None,
    ) -> TrialRun:
        """Take over a job an earlier daemon left: its token, what it was last told, its job
        id; whether it still runs, has ended, or is gone, its first poll says."""
        spec = study.spec.executor.slurm
        assert spec is not None
        handle = dict(row.handle) if row.handle is not None else None
        run = TrialRun.adopted_from(
            row,
            study.engine.record(row.trial_id),
            slot_for(spec),
            last,
            clocks_at,
            slurm=True,
            handle=handle,
        )
        wall, mono = time.time(), time.monotonic()
        began = None if handle is None else handle.get("started_at")
        if isinstance(began, (int, float)):
            run.started = mono - max(0.0, wall - float(began))
            counted = max(float(began), clocks_at or float(began))
            run.compute_from = mono - max(0.0, wall - counted)
        else:
            run.started = run.compute_from = math.inf
        run.mark_time = mono
        study.restate_stop(run, mono)
        study.runs[row.trial_id] = run
        self.trials._adopted.append((study, run))
        log.info(
            "trial_adopted",
            study=study.id,
            trial=row.trial_id,
            run=row.run,
            fate="slurm",
            why=f"Slurm job {handle.get('job') if handle else None}",
            stop=None if run.stop_reason is None else run.stop_reason.name,
        )
        return run

    # -- begun ------------------------------------------------------------------------------

    @staticmethod
    def begun(run: TrialRun) -> None:
        """A run just begun for a Slurm study: its clocks wait for its job to start."""
        run.slurm = True
        run.started = run.compute_from = math.inf


def exit_name(run: int) -> str:
    return f"slurm-{run}.exit"


def may_submit(study: StudyRuntime) -> bool:
    """Under its max_concurrent (queued and running jobs alike) and running."""
    if study.engine.state is not StudyState.RUNNING:
        return False
    cap = study.spec.limits.max_concurrent
    return cap is None or len(study.runs) < cap


__all__ = ["Launch", "SlurmRuns", "job_name", "may_submit", "slot_for", "squeue"]
