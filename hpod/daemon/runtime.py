"""What the daemon holds in memory for a study and for each running trial."""

from __future__ import annotations

import enum
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from hpod.core import limits as lim
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, StudyState
from hpod.core.study import Launch, Study, TrialRecord
from hpod.daemon.budget import BudgetState
from hpod.daemon.disk import Disk
from hpod.daemon.procid import ProcessIdentity
from hpod.daemon.runner import TrialProcess
from hpod.daemon.slots import Slot
from hpod.daemon.store import LiveRunRow, ReportRow
from hpod.daemon.views import summary_view
from hpod.errors import BadState
from hpod.fit.fitter import FitStats

log = structlog.get_logger("hpod.daemon")


class RunState(enum.StrEnum):
    """Where one run of a trial is; its task moves it along the table below."""

    STARTING = "starting"  # the slot is taken, the process not started yet
    RUNNING = "running"
    # Told to end: at ``stop_at`` the run's cancel scope fires and TrialProcess.stop sends
    # SIGTERM, waits the grace period, then SIGKILL to the group (supervisor's STOPPING).
    STOPPING = "stopping"
    EXITED = "exited"


_RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.STARTING: frozenset({RunState.RUNNING, RunState.STOPPING, RunState.EXITED}),
    RunState.RUNNING: frozenset({RunState.STOPPING, RunState.EXITED}),
    # STOPPING -> STOPPING: a sterner reason (a limit after a PAUSE answer) moves the deadline.
    RunState.STOPPING: frozenset({RunState.STOPPING, RunState.EXITED}),
    RunState.EXITED: frozenset(),
}


def hash_token(token: str) -> bytes:
    """The digest a run's token is kept and compared as (the store never holds a live token)."""
    return hashlib.sha256(token.encode()).digest()


class StopReason(enum.IntEnum):
    """Why the daemon ends a run, mildest first: a later request only ever raises it."""

    DECISION = 1  # answered PAUSE or STOP: the grace period to exit by itself, then SIGTERM
    TRIAL_TIME = 2  # the trial's trial_time is used up
    LIMIT = 3  # the study ended for a limit
    USER = 4  # `hpodctl stop`
    SHUTDOWN = 5  # the daemon stops: the trial runs again after the restart

    @property
    def forces_stop(self) -> bool:
        """Whether the run's next report is forced, whatever the scheduler says: STOP, or
        PAUSE for a shutdown (the trial is resumed at the next start)."""
        return self is not StopReason.DECISION


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
    state: RunState = RunState.STARTING
    stop_reason: StopReason | None = None
    # The last report taken from the run (hpod.trial's sender and seq) and its answer: a report
    # sent again after its answer was lost (a killed daemon, a dropped connection) is answered
    # this, not counted twice. Set as a report is taken (and put back if its commit fails), or
    # for an adopted run from the store's last report of it; None until a stamped report.
    last_sender: str | None = None
    last_seq: int | None = None
    last_answer: Decision | None = None
    # The run's task waits for its process inside this scope; its deadline is the stop's (and
    # trial_time's). Cancelling it is the one way a run is stopped.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    # Then (SIGTERM sent, SIGKILL due) its grace period runs inside this one: a shutdown during
    # it brings the SIGKILL to the daemon's stop_grace from then, whatever the study's grace.
    grace: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    time_cap: float = math.inf  # monotonic: where trial_time ends this run
    # The last counted report (monotonic time, resource level): the study's pace is measured
    # between consecutive ones.
    mark_time: float = 0.0
    mark_resource: float = 0.0
    # Counted reports taken from this run (the time budget measures start-up from the first).
    counted: int = 0
    # sha256 of the token: what a report's token is checked against, and all the store keeps
    # (an adopted run's token is known only so). Made from ``token`` when not given.
    token_hash: bytes = b""
    # From when (monotonic) its device time counts toward the study's compute clock: its start,
    # or for a run adopted after a restart the last time the study's clocks were saved.
    compute_from: float = math.nan
    adopted: bool = False  # started by an earlier daemon (or this one before a re-exec)
    # Launched on record only: the daemon died before the run reached its executor (a Slurm job
    # never submitted). Its trial gets the run back: it was not one.
    never_ran: bool = False
    # An adopted run that ended while no daemon watched: the returncode its shim wrote, and
    # its process identity (its cgroup to remove and status file to forget once recorded).
    away: int | None = None
    away_identity: ProcessIdentity | None = None
    # A trial handed out by `ask` (hpod.daemon.external): no process; the caller runs it. Its
    # task waits for ``told_final`` (`tell(final=true)`) until ``lease_until`` (monotonic),
    # which each report pushes back; past it the trial is taken back (``lease_lost``).
    external: bool = False
    # It ran out of memory (trial.oom, its stderr, the kernel's OOM killer): the study's [oom]
    # policy decides its exit (docs/oom.md).
    oom: bool = False
    lease_until: float = math.inf
    told_final: anyio.Event | None = None
    lease_lost: bool = False
    # A Slurm job (hpod.daemon.slurm): no process of the daemon's; ``started`` and
    # ``compute_from`` are infinite while it waits in the queue (queue time counts for neither
    # the trial nor the study's compute), and ``handle`` is what Slurm says of it.
    slurm: bool = False
    handle: dict[str, Any] | None = None

    @classmethod
    def adopted_from(
        cls,
        row: LiveRunRow,
        rec: TrialRecord,
        slot: Slot,
        last: ReportRow | None,
        clocks_at: float | None,
        *,
        ended: float | None = None,
        **extra: Any,
    ) -> TrialRun:
        """A run an earlier daemon left (live_runs ``row``), taken over: its token hash, what it
        was last answered (``last``, its latest run's last report), running. ``ended``: when it
        ended while no daemon watched (None: it runs still). Its time since launch is the
        trial's; what the study's clocks had not counted (since ``clocks_at``, their last save)
        is the study's compute, neither lost nor counted twice."""
        wall, mono = time.time(), time.monotonic()
        until = ended if ended is not None else wall
        counted_to = max(row.launched_at, clocks_at or row.launched_at)
        run = cls(
            row.trial_id,
            "",
            Launch(row.trial_id, rec.config, rec.resume_from, rec.max_resource, fresh=False),
            slot,
            mono - max(0.0, until - row.launched_at),
            token_hash=bytes.fromhex(row.token_hash),
            compute_from=mono - max(0.0, until - counted_to),
            adopted=True,
            **extra,
        )
        run.mark_time, run.mark_resource = mono, rec.resume_from
        if last is not None and last.run == row.run:
            run.last_sender, run.last_seq, run.last_answer = last.sender, last.seq, last.decision
            if last.counted and last.resource is not None:
                run.mark_resource = max(run.mark_resource, last.resource)
        run.move(RunState.RUNNING)
        return run

    def __post_init__(self) -> None:
        if not self.token_hash:
            self.token_hash = hash_token(self.token)
        if math.isnan(self.compute_from):
            self.compute_from = self.started

    @property
    def devices(self) -> int:
        return max(1, len(self.slot.devices))

    def move(self, new: RunState) -> None:
        if new not in _RUN_TRANSITIONS[self.state]:
            raise BadState(f"run of trial {self.trial_id} cannot go from {self.state} to {new}")
        self.state = new

    @property
    def remote(self) -> bool:
        """Not the daemon's process (handed out, or a Slurm job): it outlives the daemon's
        stop, and a shutdown is no reason to PAUSE it."""
        return self.external or self.slurm

    @property
    def forces_stop(self) -> bool:
        """The daemon itself is ending this run (not merely waiting on a PAUSE/STOP answer)."""
        return self.stop_reason is not None and self.stop_reason.forces_stop

    @property
    def interrupted(self) -> bool:
        """Ended by the daemon's shutdown (or, handed out, by its lease running out): the trial
        is resumed when the daemon is back (handed out again)."""
        return self.stop_reason is StopReason.SHUTDOWN or self.lease_lost

    def request_stop(self, reason: StopReason, at: float) -> bool:
        """Ask the run to end at monotonic time ``at`` (now: at once); False if it has exited.

        A milder reason never replaces a sterner one, and a deadline only ever comes nearer.
        """
        if self.state is RunState.EXITED:
            return False
        if self.stop_reason is None or reason > self.stop_reason:
            self.stop_reason = reason
        self.move(RunState.STOPPING)
        if at < self.scope.deadline:
            self.scope.deadline = at
        return True

    def cap_time(self, deadline: float) -> None:
        """The run may not go past ``deadline`` (trial_time): then it is stopped."""
        self.time_cap = deadline
        if deadline < self.scope.deadline:
            self.scope.deadline = deadline


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
    # The base of its trials' environment: what the submit carried of the submitter's
    # (hpod.core.passenv); None, from an old client: the daemon's own.
    client_env: dict[str, str] | None = None
    runs: dict[int, TrialRun] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)
    # Seconds summed over a trial's runs (and x devices held), as the store keeps them.
    run_seconds: dict[int, float] = field(default_factory=dict)
    compute_seconds: dict[int, float] = field(default_factory=dict)
    # The clocks the limits count, as the store keeps them (across restarts), plus what the
    # running clock and the running trials add since (monotonic).
    elapsed_base: float = 0.0
    running_since: float | None = None
    compute_base: float = 0.0
    pace: lim.Pace = field(default_factory=lim.Pace)
    # Set to make the study's watcher look again (a run started or ended, shutdown).
    poke: anyio.Event = field(default_factory=anyio.Event)
    pruned: set[int] = field(default_factory=set)
    launch_order: int = 0
    # How its decisions were made and how long they and its model fits took (hpodctl show).
    fit_stats: FitStats = field(default_factory=FitStats)
    # The state dir's disk, whose hold (a full disk) the summary shows while the study may run.
    disk: Disk | None = None
    # What `hpodctl set` changed, in order (hpod.core.changes): {key, value, from, at, by}.
    changes: list[dict[str, Any]] = field(default_factory=list)
    # The time budget (hpod.daemon.budget), for a spec with [limits] time_ratio; else None.
    budget: BudgetState | None = None
    # Each trial's runs' executor handles (Slurm jobs), as trials.handles keeps them.
    handles: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # Trials whose row is stored but no run has used it (their first launch never ran): the
    # next launch updates that row instead of making one.
    unrun: set[int] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        return summary_view(
            self.id,
            self.engine,
            owner=self.owner,
            created=self.created,
            ended=self.ended,
            held=self.held,
        )

    @property
    def held(self) -> str | None:
        """Why nothing of this study starts now (the disk is full); None when nothing holds it."""
        if self.disk is None or self.engine.state.is_final:
            return None
        return self.disk.held

    def elapsed(self, now: float) -> float:
        if self.running_since is None:
            return self.elapsed_base
        return self.elapsed_base + max(0.0, now - self.running_since)

    def compute(self, now: float) -> float:
        # A queued Slurm job's compute_from is infinite: it adds nothing until it runs.
        live = sum(max(0.0, now - r.compute_from) * r.devices for r in self.runs.values())
        return self.compute_base + live

    def clocks(self, now: float) -> lim.Clocks:
        # Wall time too, for a deadline: read here, so every caller's clocks have it.
        return lim.Clocks(
            self.elapsed(now), self.compute(now), len(self.engine.trials), wall=time.time()
        )

    def devices_running(self) -> int:
        return sum(r.devices for r in self.runs.values())

    def start_clock(self, now: float) -> None:
        if self.running_since is None:
            self.running_since = now

    def stop_clock(self, now: float) -> None:
        self.elapsed_base = self.elapsed(now)
        self.running_since = None

    def wake(self) -> None:
        self.poke.set()

    def stop_if_out_of_time(self, run: TrialRun) -> bool:
        """A run's cancel scope fired: if nothing sterner than a decision asked for it and the
        run's trial_time is used up, it is stopped for that (logged, its trial marked
        stopping). Whether it was. One rule for every executor's run task."""
        if run.stop_reason not in (None, StopReason.DECISION) or time.monotonic() < run.time_cap:
            return False
        log.info(
            "trial_time_limit",
            study=self.id,
            trial=run.trial_id,
            reason=f"trial_time limit of {self.spec.limits.trial_time:g}s reached",
        )
        run.request_stop(StopReason.TRIAL_TIME, time.monotonic())
        self.engine.mark_stopping(run.trial_id)
        return True

    def restate_stop(self, run: TrialRun, mono: float) -> None:
        """What an adopted run's study had told it still holds: a study that has ended stops
        it now, a PAUSE or STOP answer gives it the grace period to save and exit, from now."""
        engine = self.engine
        if engine.state.is_final:
            stop = StopReason.USER if engine.state is StudyState.STOPPED else StopReason.LIMIT
            engine.mark_stopping(run.trial_id)
            run.request_stop(stop, mono)
        elif engine.trials[run.trial_id].ending is not None:
            run.request_stop(StopReason.DECISION, mono + self.spec.stop_grace)
