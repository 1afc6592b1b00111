"""The SQLite store: studies, trials, reports and events in one WAL database.

Every write goes through one writer thread with its own connection. The thread drains whatever is
queued, runs it as one transaction and commits once (group commit), then completes every waiter
of that batch, so a burst of reports costs one commit instead of one each. Each caller's ops run
inside their own savepoint: a bad op fails only its own waiter and the rest of the batch commits.

A write is acknowledged (its awaitable returns) only after its commit. With WAL and
``synchronous=NORMAL`` a committed transaction survives the process being killed (SIGKILL), which
is the daemon's contract; ``durability="fsync"`` (``synchronous=FULL``) also survives power loss.

Reads are synchronous, on a second connection, for start-up and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from hpod.core.states import Decision, StudyState, TrialState
from hpod.daemon import wakeups
from hpod.errors import HpodError, InvalidParams, NotFound, ShuttingDown, StoreFull
from hpod.wire import ENCODER, loads_json, tag

SCHEMA_VERSION = 8
DB_NAME = "hpod.sqlite3"

Durability = Literal["normal", "fsync"]
_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "fsync": "FULL"}

# How long a connection waits on a lock held by another process (a tool writing) before failing.
_BUSY_TIMEOUT_S = 30.0

_SCHEMA_V1 = (
    """
    CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        name TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        spec_toml TEXT NOT NULL,
        base_dir TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        ended_at REAL,
        end_reason TEXT,
        elapsed REAL NOT NULL DEFAULT 0,
        compute REAL NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE trials (
        study_id TEXT NOT NULL,
        trial_id INTEGER NOT NULL,
        config TEXT NOT NULL,
        state TEXT NOT NULL,
        token TEXT NOT NULL,
        bracket INTEGER NOT NULL DEFAULT 0,
        resume_from REAL NOT NULL DEFAULT 0,
        max_resource REAL NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        run_seconds REAL NOT NULL DEFAULT 0,
        compute_seconds REAL NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (study_id, trial_id)
    )
    """,
    """
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_id TEXT NOT NULL,
        trial_id INTEGER NOT NULL,
        run INTEGER NOT NULL,
        resource REAL,
        metrics TEXT NOT NULL,
        decision TEXT NOT NULL,
        at REAL NOT NULL,
        counted INTEGER NOT NULL DEFAULT 1
    )
    """,
    "CREATE INDEX reports_by_trial ON reports (study_id, trial_id, id)",
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_id TEXT,
        trial_id INTEGER,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    )
    """,
    "CREATE INDEX events_by_study ON events (study_id, id)",
)

# Migrations: _MIGRATIONS[v] takes a version-v database to version v + 1, inside one transaction.
# Add an entry (and bump SCHEMA_VERSION) for every schema change; never edit _SCHEMA_V1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: every report commit wrote a page of sqlite_sequence (AUTOINCREMENT) and, with n
    # trials reporting, up to n leaf pages of an index by trial: ~7 KiB of WAL per report, and at
    # 8,000 reports a second, checkpoints that could never catch up. Ids now come from the rowid
    # (reports are never deleted, so they still only grow), and the one index a query uses (a
    # study's reports in order, at restart) appends to one leaf page.
    1: (
        """
        CREATE TABLE reports_v2 (
            id INTEGER PRIMARY KEY,
            study_id TEXT NOT NULL,
            trial_id INTEGER NOT NULL,
            run INTEGER NOT NULL,
            resource REAL,
            metrics TEXT NOT NULL,
            decision TEXT NOT NULL,
            at REAL NOT NULL,
            counted INTEGER NOT NULL DEFAULT 1
        )
        """,
        "INSERT INTO reports_v2 (id, study_id, trial_id, run, resource, metrics, decision, at,"
        " counted) SELECT id, study_id, trial_id, run, resource, metrics, decision, at, counted"
        " FROM reports",
        "DROP TABLE reports",
        "ALTER TABLE reports_v2 RENAME TO reports",
        "CREATE INDEX reports_by_study ON reports (study_id, id)",
    ),
    # 2 -> 3: whether a report's answer was the STOP of a shutting-down daemon. A restart reads
    # the last answer of a trial whose exit was never written (the daemon was killed) to end its
    # run as that exit would have; a shutdown's STOP interrupted the run, any other ended it.
    2: ("ALTER TABLE reports ADD COLUMN interrupting INTEGER NOT NULL DEFAULT 0",),
    # 3 -> 4: a submit's client-chosen request id, so that a retried submit (its answer lost with
    # a killed daemon) finds the study the first one made. Unique per owner: each uid picks its
    # own ids. Studies from before have none (NULL), and NULLs never collide.
    3: (
        "ALTER TABLE studies ADD COLUMN request_id TEXT",
        "CREATE UNIQUE INDEX studies_by_request ON studies (owner_uid, request_id)"
        " WHERE request_id IS NOT NULL",
    ),
    # 4 -> 5: the part of the submitter's environment a submit carried (hpod.core.passenv), as
    # JSON: the base of the study's trials' environment, so a restart resumes them with it.
    # Studies from before (and from old clients) have none (NULL): the daemon's own, as then.
    4: ("ALTER TABLE studies ADD COLUMN client_env TEXT",),
    # 5 -> 6: live restore (docs/live-restore.md). A run's process outlives a daemon that dies,
    # and the next one adopts it: live_runs keeps, per running trial, what proves its process
    # (the shim's pid, start time, boot id, cgroup: runner.ProcessIdentity), its token hashed,
    # its GPUs and what it was told last (a stop and when). A report's sender and sequence
    # number let a trial re-send a report whose answer a kill lost without it counting twice.
    # clocks_at: when the study's clocks were last saved, so time an adopted run spent while
    # no daemon watched is counted from there, neither lost nor counted twice.
    5: (
        """
        CREATE TABLE live_runs (
            study_id TEXT NOT NULL,
            trial_id INTEGER NOT NULL,
            run INTEGER NOT NULL,
            token_hash TEXT NOT NULL,
            devices TEXT NOT NULL,
            launched_at REAL NOT NULL,
            identity TEXT,
            stop_reason INTEGER,
            stop_at REAL,
            PRIMARY KEY (study_id, trial_id)
        )
        """,
        "ALTER TABLE reports ADD COLUMN sender TEXT",
        "ALTER TABLE reports ADD COLUMN seq INTEGER",
        "ALTER TABLE studies ADD COLUMN clocks_at REAL",
    ),
    # 6 -> 7: the Python library (docs/python-api.md). decisions: one row per scheduling
    # decision (a promotion, a start, a stop), so `hpodctl decisions` and the counts in `show`
    # survive a restart. studies.changes: what `hpodctl set` changed of a running study (limits,
    # deadline, max_trials, max_concurrent, report period, priority), as JSON: a list of
    # {"key", "value", "at", "by"} in order, applied over the stored spec at every restore.
    # The events table (since 1) is the event stream; its id is the stream's cursor.
    6: (
        """
        CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            study_id TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            trial_id INTEGER,
            level REAL,
            data TEXT NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE INDEX decisions_by_study ON decisions (study_id, id)",
        "ALTER TABLE studies ADD COLUMN changes TEXT",
    ),
    # 7 -> 8: the executors and OTX's ways (docs/slurm.md, docs/time-budget.md, docs/oom.md).
    # live_runs.handle / trials.handles: what an executor knows a run by (a Slurm job id), as
    # JSON: the live run's, and every run's in order for `hpodctl show`. trials.retries: a
    # trial's out-of-memory retries (the key, its value before and after, when), as a JSON
    # list. studies.budget: the time budget's latest estimate and what it derived, as JSON.
    7: (
        "ALTER TABLE live_runs ADD COLUMN handle TEXT",
        "ALTER TABLE trials ADD COLUMN handles TEXT",
        "ALTER TABLE trials ADD COLUMN retries TEXT",
        "ALTER TABLE studies ADD COLUMN budget TEXT",
    ),
}


# --------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, kw_only=True)
class StudyRow:
    id: str
    seq: int
    name: str
    owner_uid: int
    spec_toml: str
    base_dir: str
    state: StudyState
    created_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    elapsed: float = 0.0  # optimization seconds used, summed across daemon restarts
    compute: float = 0.0  # device-seconds used by its trials
    request_id: str | None = None  # the submit's, unique per owner; None from old clients
    # The submitter's environment for its trials (hpod.core.passenv); None: the daemon's own.
    client_env: dict[str, str] | None = None
    clocks_at: float | None = None  # wall time of the last save of elapsed and compute
    # What `hpodctl set` changed, as JSON text (a list; hpod.core.changes reads and writes it).
    changes: str | None = None
    # The time budget's samples and latest applied estimate, as JSON (hpod.daemon.budget).
    budget: str | None = None

    def replace(self, **changes: Any) -> StudyRow:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class TrialRow:
    study_id: str
    trial_id: int
    config: dict[str, Any]
    state: TrialState
    token: str
    bracket: int = 0
    resume_from: float = 0.0
    max_resource: float
    runs: int = 0
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    run_seconds: float = 0.0
    compute_seconds: float = 0.0
    error: str | None = None
    # Its out-of-memory retries, oldest first (OomRetry.to_dict each; docs/oom.md).
    retries: tuple[dict[str, Any], ...] = ()
    # What an executor knew each run by, in order (a Slurm job: its id, state, node, times);
    # None for a trial of the local executor.
    handles: list[dict[str, Any]] | None = None

    def replace(self, **changes: Any) -> TrialRow:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class ReportRow:
    id: int
    study_id: str
    trial_id: int
    run: int
    resource: float | None
    metrics: dict[str, Any]
    decision: Decision
    at: float
    counted: bool = True  # False: kept for the record, but not replayed into the scheduler
    interrupting: bool = False  # the answer was forced by the daemon's shutdown
    # Who sent it (one id per reporting process) and its number there: a report re-sent after
    # a lost answer carries the same pair (hpod.trial), and is answered, not counted, again.
    sender: str | None = None
    seq: int | None = None


@dataclass(frozen=True, kw_only=True)
class EventRow:
    id: int
    study_id: str | None
    trial_id: int | None
    at: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class DecisionRow:
    id: int
    study_id: str
    at: float
    kind: str
    trial_id: int | None
    level: float | None
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class LiveRunRow:
    """A run whose process may be alive: written as it starts, deleted with its exit."""

    study_id: str
    trial_id: int
    run: int
    token_hash: str  # hex sha256 of the run's HPOD_TOKEN: the store never holds a live token
    devices: tuple[str, ...]  # GPU UUIDs of its slot; () for a CPU slot
    launched_at: float  # wall time
    # runner.ProcessIdentity.to_json() once the process is up; None: it may never have started.
    identity: dict[str, Any] | None = None
    stop_reason: int | None = None  # runtime.StopReason once a stop was asked for
    stop_at: float | None = None  # wall time the stop was due
    # What the executor knows the run by (a Slurm job: {"job": id, ...}); None for a process.
    handle: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> LiveRunRow:
        return dataclasses.replace(self, **changes)


_JSON_COLUMNS = frozenset(
    {"config", "metrics", "data", "client_env", "identity", "handle", "handles"}
)
_STUDY_COLUMNS = tuple(f.name for f in dataclasses.fields(StudyRow))
_TRIAL_COLUMNS = tuple(f.name for f in dataclasses.fields(TrialRow))
# The key columns name a row; an update may not change them.
# A request id names the submit that made the study, once and for all; so does its environment.
_STUDY_UPDATABLE = frozenset(_STUDY_COLUMNS) - {"id", "request_id", "client_env"}
_TRIAL_UPDATABLE = frozenset(_TRIAL_COLUMNS) - {"study_id", "trial_id"}
_LIVE_COLUMNS = tuple(f.name for f in dataclasses.fields(LiveRunRow))
_LIVE_UPDATABLE = frozenset({"identity", "stop_reason", "stop_at", "handle"})


# ---------------------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class Op:
    """One SQL statement for the writer. Build them with the ``*_op`` functions below.

    ``must_change``: the statement must touch a row, or it fails with :class:`NotFound`
    (``not_found`` is the message), so an update of a row that was never written is not lost
    silently.
    """

    sql: str
    params: tuple[Any, ...]
    must_change: bool = False
    not_found: str = ""
    # An event's insert (hpod.daemon.events): once committed, the writer calls ``on_events``.
    wakes: bool = False


def _dump_json(value: Mapping[str, Any] | list[Any]) -> str:
    # Tagged so NaN and infinities round-trip exactly; allow_nan=False keeps the text real JSON.
    # A list (trials.handles) is kept as a list.
    data = [dict(v) for v in value] if isinstance(value, list) else dict(value)
    try:
        # Nearly every report's metrics are plain finite numbers: encoded without the walk.
        return ENCODER.encode(data)
    except (ValueError, TypeError):  # a NaN or infinity, or a mapping json does not take
        return ENCODER.encode(tag(data))


def _sql_value(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS and value is not None:  # client_env may be NULL
        return _dump_json(value)
    if column == "devices":
        return json.dumps(list(value))
    if column == "retries":
        return json.dumps([dict(r) for r in value], separators=(",", ":")) if value else None
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _insert(table: str, columns: Iterable[str], row: object) -> Op:
    names = tuple(columns)
    placeholders = ", ".join("?" for _ in names)
    return Op(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})",
        tuple(_sql_value(name, getattr(row, name)) for name in names),
    )


def _update(
    table: str,
    allowed: frozenset[str],
    where: Mapping[str, Any],
    fields: Mapping[str, Any],
    what: str,
) -> Op:
    if not fields:
        raise ValueError(f"an update of {what} needs at least one field")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(
            f"cannot update {', '.join(unknown)} of {what}: "
            f"the columns that may change are {', '.join(sorted(allowed))}"
        )
    # Only names checked against the table's columns reach the SQL text.
    sets = ", ".join(f"{name} = ?" for name in fields)
    conds = " AND ".join(f"{name} = ?" for name in where)
    params = tuple(_sql_value(k, v) for k, v in fields.items()) + tuple(where.values())
    return Op(
        f"UPDATE {table} SET {sets} WHERE {conds}",
        params,
        must_change=True,
        not_found=f"{what} is not in the store",
    )


def insert_study_op(row: StudyRow) -> Op:
    return _insert("studies", _STUDY_COLUMNS, row)


def update_study_op(study_id: str, **fields: Any) -> Op:
    return _update("studies", _STUDY_UPDATABLE, {"id": study_id}, fields, f"study {study_id}")


def insert_trial_op(row: TrialRow) -> Op:
    return _insert("trials", _TRIAL_COLUMNS, row)


def update_trial_op(study_id: str, trial_id: int, **fields: Any) -> Op:
    return _update(
        "trials",
        _TRIAL_UPDATABLE,
        {"study_id": study_id, "trial_id": trial_id},
        fields,
        f"trial {trial_id} of study {study_id}",
    )


def insert_live_run_op(row: LiveRunRow) -> Op:
    # REPLACE: a relaunch of the trial takes the place of a run whose exit was never written.
    op = _insert("live_runs", _LIVE_COLUMNS, row)
    return Op(op.sql.replace("INSERT INTO", "INSERT OR REPLACE INTO", 1), op.params)


def update_live_run_op(study_id: str, trial_id: int, **fields: Any) -> Op:
    return _update(
        "live_runs",
        _LIVE_UPDATABLE,
        {"study_id": study_id, "trial_id": trial_id},
        fields,
        f"live run of trial {trial_id} of study {study_id}",
    )


def delete_live_run_op(study_id: str, trial_id: int) -> Op:
    return Op("DELETE FROM live_runs WHERE study_id = ? AND trial_id = ?", (study_id, trial_id))


def metrics_text(metrics: Mapping[str, Any]) -> str:
    """A report's metrics as the store keeps them; InvalidParams for one it cannot keep.

    The daemon calls it before the study counts the report, so that a report refused here
    changes nothing. Over the wire a metric can only be JSON, and a non-finite number is
    tagged, so what fails is one nested deeper than serializing can recurse (a few hundred
    levels); finding which metric is the slow path, taken only then."""
    try:
        return _dump_json(metrics)
    except (RecursionError, ValueError, TypeError) as exc:
        for name, value in metrics.items():
            try:
                _dump_json({name: value})
            except RecursionError:
                raise InvalidParams(
                    f"metric {name!r} is nested too deeply to be stored; report numbers, or "
                    "objects a few levels deep"
                ) from None
            except (ValueError, TypeError) as bad:
                raise InvalidParams(f"metric {name!r} cannot be stored: {bad}") from None
        raise InvalidParams(f"the metrics cannot be stored: {exc}") from None


def report_op(
    study_id: str,
    trial_id: int,
    run: int,
    resource: float | None,
    metrics: Mapping[str, Any] | str,
    decision: Decision | str,
    at: float,
    *,
    counted: bool = True,
    interrupting: bool = False,
    sender: str | None = None,
    seq: int | None = None,
) -> Op:
    return Op(
        "INSERT INTO reports (study_id, trial_id, run, resource, metrics, decision, at, counted,"
        " interrupting, sender, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            study_id,
            trial_id,
            run,
            resource,
            # Text: what metrics_text made of them.
            metrics if isinstance(metrics, str) else _dump_json(metrics),
            _sql_value("decision", Decision(decision)),
            at,
            int(counted),
            int(interrupting),
            sender,
            seq,
        ),
    )


def event_op(
    study_id: str | None,
    trial_id: int | None,
    kind: str,
    data: Mapping[str, Any] | None,
    at: float,
) -> Op:
    return Op(
        "INSERT INTO events (study_id, trial_id, at, kind, data) VALUES (?, ?, ?, ?, ?)",
        (study_id, trial_id, at, kind, _dump_json(data or {})),
        wakes=True,  # every event wakes the stream's long polls once committed
    )


# ------------------------------------------------------------------------------------- writer

_Done = Callable[[BaseException | None], None]


@dataclass(frozen=True)
class _Job:
    ops: tuple[Op, ...]
    done: _Done | None = None  # a blocking or posting caller's, called on the writer thread
    fut: asyncio.Future[None] | None = None  # an async caller's, settled on its own loop


_STOP = object()
# Checkpoints wait for a pause in the commits: one that ran under a stream of reports put a burst
# of 3-10 ms round trips on every trial at once (each half second, bench/report_latency.py: p99
# 1.7-2.2 ms with a checkpoint every 0.5 s, 1.4-1.7 ms without). A WAL that grows past the cap
# under a load that never pauses is checkpointed anyway, so it stays bounded.
_CHECKPOINT_QUIET_S = 0.25
_CHECKPOINT_WAL_CAP = 64 * 1024 * 1024


def checkpoint_due(commits: int, a_tick_ago: int, at_last_checkpoint: int, wal_bytes: int) -> bool:
    """Whether to checkpoint now: something is new since the last one, and either no commit
    came in the last tick or the WAL has passed its cap."""
    if commits == at_last_checkpoint:
        return False
    return commits == a_tick_ago or wal_bytes >= _CHECKPOINT_WAL_CAP


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    # The awaiting task may have been cancelled meanwhile; its write still happened (or not).
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


_T = TypeVar("_T")


def _check_ops(ops: Sequence[Op]) -> None:
    for op in ops:
        if not isinstance(op, Op):
            raise TypeError(f"Store writes take Op values, not {type(op).__name__}")


class Store:
    """The daemon's SQLite store. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        *,
        inline: bool = False,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._read_lock = threading.Lock()
        self._reader_closed = False
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._closed = False
        self._commits = 0
        # Jobs submitted and not yet settled by the writer; a post may commit on its caller's
        # thread (``inline``) only when there are none, so commits keep the order of the posts.
        self._unfinished = 0
        # A commit of synchronous=NORMAL is a write to the WAL, tens of microseconds: a post to an
        # idle writer commits at once on its caller's thread. Handing it to the writer thread
        # cost more than the commit: the two threads' GIL hand-offs, and at 1,000 trials
        # batches of a hundred answers let out at once (bench/results/scale.md). Never with
        # fsync, whose commit would hold the loop for a disk's flush.
        self._inline = inline
        # Called on the writer thread (it must neither block nor raise) after a batch in which a
        # write failed for want of disk space: the daemon's hold on launching (hpod.daemon.disk).
        self.on_full: Callable[[], None] | None = None
        # Called on the writer thread (it must neither block nor raise) after a batch that
        # committed an event (an op with ``wakes``), once the batch's waiters are settled: the
        # event stream's long polls (hpod.daemon.events).
        self.on_events: Callable[[], None] | None = None
        # Held by the writer while it drains and runs a batch; tests hold it to build a batch.
        self._writer_gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hpod-store-writer", daemon=True)
        self._thread.start()
        # The writer never checkpoints (wal_autocheckpoint = 0): a checkpoint syncs the database
        # file, and doing that inside a commit put tens of milliseconds on a report's answer.
        # A thread of its own runs passive checkpoints, which never block the writer.
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="hpod-store-checkpoint", daemon=True
        )
        self._checkpointer.start()

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, state_dir: Path, *, durability: Durability = "normal") -> Store:
        """Open (creating or migrating) ``state_dir/hpod.sqlite3``."""
        if durability not in _SYNCHRONOUS:
            raise ValueError(f"durability must be 'normal' or 'fsync', not {durability!r}")
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / DB_NAME
        # The database holds trial tokens: create it private. SQLite gives its -wal and -shm
        # files the database's permissions.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        writer = _connect(path)
        try:
            _configure(writer, path, durability)
            _ensure_schema(writer, path)
            reader = _connect(path)
        except BaseException:
            writer.close()
            raise
        try:
            reader.execute("PRAGMA query_only = ON")
        except BaseException:
            reader.close()
            writer.close()
            raise
        return cls(path, writer, reader, inline=durability == "normal")

    # ------------------------------------------------------------------------------ writes

    @property
    def commits(self) -> int:
        """How many transactions the writer has committed (group commit makes this < writes)."""
        return self._commits

    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, job: _Job) -> None:
        _check_ops(job.ops)
        with self._state_lock:
            if self._closed:
                raise ShuttingDown(f"the store {self.path} is closed: nothing more can be written")
            self._unfinished += 1
            self._queue.put(job)

    async def write(self, *ops: Op) -> None:
        """Commit ``ops`` atomically (all or none); return once they are durable."""
        if not ops:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Job(ops, fut=fut))
        await fut

    def post(self, *ops: Op, then: Callable[[BaseException | None], None]) -> None:
        """Queue ``ops`` for one atomic commit and return at once.

        ``then`` gets the outcome (None once durable, else the error) right after the commit
        and before any awaiting caller is woken; it must neither block nor raise. It is called
        on the writer thread, or, when the writer is idle with nothing queued and the store's
        durability is "normal", at once on the caller's, before this returns. The daemon
        answers reports this way (see hpod.daemon.answers).
        """
        if not ops:
            raise ValueError("post() needs at least one op")
        job = _Job(ops, done=then)
        if self._inline and self._writer_gate.acquire(blocking=False):
            try:
                with self._state_lock:
                    idle = not self._closed and self._unfinished == 0
                if idle:
                    _check_ops(ops)
                    self._commit_and_settle([job])  # as the writer would, a batch of one
                    return
            finally:
                self._writer_gate.release()
        self._submit(job)

    def write_sync(self, *ops: Op) -> None:
        """Commit ``ops`` atomically and block until they are durable (no event loop needed)."""
        if not ops:
            return
        event = threading.Event()
        outcome: list[BaseException | None] = []

        def done(exc: BaseException | None) -> None:
            outcome.append(exc)
            event.set()

        self._submit(_Job(ops, done=done))
        event.wait()
        if outcome[0] is not None:
            raise outcome[0]

    async def insert_study(self, row: StudyRow) -> None:
        await self.write(insert_study_op(row))

    async def update_study(self, study_id: str, **fields: Any) -> None:
        await self.write(update_study_op(study_id, **fields))

    async def insert_trial(self, row: TrialRow) -> None:
        await self.write(insert_trial_op(row))

    async def update_trial(self, study_id: str, trial_id: int, **fields: Any) -> None:
        await self.write(update_trial_op(study_id, trial_id, **fields))

    async def add_report(
        self,
        study_id: str,
        trial_id: int,
        run: int,
        resource: float | None,
        metrics: Mapping[str, Any],
        decision: Decision | str,
        at: float,
        *,
        counted: bool = True,
        interrupting: bool = False,
    ) -> None:
        await self.write(
            report_op(
                study_id,
                trial_id,
                run,
                resource,
                metrics,
                decision,
                at,
                counted=counted,
                interrupting=interrupting,
            )
        )

    async def add_event(
        self,
        study_id: str | None,
        trial_id: int | None,
        kind: str,
        data: Mapping[str, Any] | None,
        at: float,
    ) -> None:
        await self.write(event_op(study_id, trial_id, kind, data, at))

    # ------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            with self._writer_gate:
                items = [first]
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                jobs = [item for item in items if isinstance(item, _Job)]
                if jobs:
                    self._commit_and_settle(jobs)
                    with self._state_lock:
                        self._unfinished -= len(jobs)
            if any(item is _STOP for item in items):
                return

    def _commit_and_settle(self, jobs: list[_Job]) -> None:
        """Commit ``jobs`` as one batch (the writer gate held) and settle each: its ``done``
        called here, its future woken on its loop."""
        outcomes = [self._full_error(exc) for exc in self._run_batch(jobs)]
        if self.on_full is not None and any(isinstance(exc, StoreFull) for exc in outcomes):
            with contextlib.suppress(Exception):
                self.on_full()
        # One wake-up per event loop for the whole batch, not one per waiter or answer: each
        # costs the loop a self-pipe write and read (hpod.daemon.wakeups).
        with wakeups.batch():
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.fut is not None:
                    wakeups.call_soon(job.fut.get_loop(), _settle, job.fut, outcome)
                elif job.done is not None:
                    with contextlib.suppress(Exception):
                        job.done(outcome)
        if self.on_events is not None and any(
            outcome is None and any(op.wakes for op in job.ops)
            for job, outcome in zip(jobs, outcomes, strict=True)
        ):
            with contextlib.suppress(Exception):
                self.on_events()

    def _run_batch(self, jobs: list[_Job]) -> list[BaseException | None]:
        """Run ``jobs`` in one transaction, each in its own savepoint; commit once."""
        conn = self._writer
        outcomes: list[BaseException | None] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(jobs) == 1:
                # Alone in its batch, a job is its own transaction: no savepoint to pay for.
                try:
                    for op in jobs[0].ops:
                        _execute(conn, op)
                except Exception as exc:
                    # SQLITE_FULL may have rolled the transaction back already (SQLite then
                    # refuses a ROLLBACK): the op's own error is the one to report.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return [exc]
                conn.execute("COMMIT")
                self._commits += 1
                return [None]
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    for op in job.ops:
                        _execute(conn, op)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
            self._commits += 1
            return outcomes
        except Exception as exc:
            # The transaction itself failed (I/O error, disk full, a lock held too long): nothing
            # of it committed. Retry each job alone so one cause fails only its own waiters.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if len(jobs) == 1:
                return [exc]
            return [self._run_batch([job])[0] for job in jobs]

    def _full_error(self, exc: BaseException | None) -> BaseException | None:
        """A write that failed for want of disk space as :class:`StoreFull`, which the daemon
        answers with its own code and holds its launches for; any other outcome as it is."""
        if exc is None or isinstance(exc, StoreFull) or not disk_full(exc):
            return exc
        error = StoreFull(
            f"the disk of {self.path.parent} is full ({exc}): the store kept nothing of this "
            "write, and a report so answered was not counted; send it again once there is room"
        )
        error.__cause__ = exc
        return error

    def _checkpoint_loop(self) -> None:
        conn = _connect(self.path)
        wal = Path(f"{self.path}-wal")
        try:
            last = self._commits
            checkpointed = -1  # a WAL left by a daemon that was killed goes in at the first pause
            while not self._stop_checkpoints.wait(_CHECKPOINT_QUIET_S):
                now = self._commits
                due = checkpoint_due(now, last, checkpointed, _size(wal))
                last = now
                if due:
                    checkpointed = now
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    # ------------------------------------------------------------------------------- close

    def close(self) -> None:
        """Commit everything queued, stop the writer and close the connections. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        self._stop_checkpoints.set()
        self._checkpointer.join()
        self._writer.close()
        with self._read_lock:
            self._reader.close()
            self._reader_closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------- reads

    def _query(
        self, sql: str, params: tuple[Any, ...], build: Callable[[sqlite3.Row], _T]
    ) -> list[_T]:
        with self._read_lock:
            if self._reader_closed:
                raise ShuttingDown(f"the store {self.path} is closed")
            rows = self._reader.execute(sql, params).fetchall()
        return [build(row) for row in rows]

    def load_studies(self) -> list[StudyRow]:
        return self._query("SELECT * FROM studies ORDER BY seq", (), _study_row)

    def load_study(self, study_id: str) -> StudyRow | None:
        rows = self._query("SELECT * FROM studies WHERE id = ?", (study_id,), _study_row)
        return rows[0] if rows else None

    def load_study_by_request(self, owner_uid: int, request_id: str) -> StudyRow | None:
        """The study that ``owner_uid``'s submit with ``request_id`` made, if one did."""
        rows = self._query(
            "SELECT * FROM studies WHERE owner_uid = ? AND request_id = ?",
            (owner_uid, request_id),
            _study_row,
        )
        return rows[0] if rows else None

    def load_trials(self, study_id: str) -> list[TrialRow]:
        return self._query(
            "SELECT * FROM trials WHERE study_id = ? ORDER BY trial_id", (study_id,), _trial_row
        )

    def load_trial(self, study_id: str, trial_id: int) -> TrialRow | None:
        rows = self._query(
            "SELECT * FROM trials WHERE study_id = ? AND trial_id = ?",
            (study_id, trial_id),
            _trial_row,
        )
        return rows[0] if rows else None

    def load_reports(self, study_id: str, trial_id: int | None = None) -> list[ReportRow]:
        if trial_id is None:
            return self._query(
                "SELECT * FROM reports WHERE study_id = ? ORDER BY id", (study_id,), _report_row
            )
        return self._query(
            "SELECT * FROM reports WHERE study_id = ? AND trial_id = ? ORDER BY id",
            (study_id, trial_id),
            _report_row,
        )

    def iter_reports(self, study_id: str, page: int = 5000) -> Iterator[ReportRow]:
        """A study's reports, oldest first, read a page at a time: a restart or a report's plots
        of a 10,000-trial study hold one page of rows at once, not every one (270,000 rows of
        parsed metrics were 300 MB of the daemon's RSS, kept by the allocator after)."""
        after = 0
        while True:
            rows = self.load_reports_page(study_id, None, after, page)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1].id

    def report_counts(self, study_id: str) -> dict[int, int]:
        """How many reports each trial of a study has stored, by trial id."""
        rows = self._query(
            "SELECT trial_id, COUNT(*) AS n FROM reports WHERE study_id = ? GROUP BY trial_id",
            (study_id,),
            lambda r: (int(r["trial_id"]), int(r["n"])),
        )
        return dict(rows)

    def iter_reports_of(
        self, study_id: str, trial_ids: Sequence[int], chunk: int = 200
    ) -> Iterator[ReportRow]:
        """The reports of ``trial_ids``' trials, a chunk of trials at a time (each trial's in
        order, the trials in the order given)."""
        for i in range(0, len(trial_ids), chunk):
            part = list(trial_ids[i : i + chunk])
            marks = ", ".join("?" * len(part))
            yield from self._query(
                f"SELECT * FROM reports WHERE study_id = ? AND trial_id IN ({marks})"
                " ORDER BY trial_id, id",
                (study_id, *part),
                _report_row,
            )

    def load_reports_page(
        self, study_id: str, trial_id: int | None, after: int, limit: int
    ) -> list[ReportRow]:
        """Up to ``limit`` of a study's reports (one trial's, with ``trial_id``) with an id past
        ``after``, oldest first: a page of the learning curves (method ``curves``)."""
        if trial_id is None:
            return self._query(
                "SELECT * FROM reports WHERE study_id = ? AND id > ? ORDER BY id LIMIT ?",
                (study_id, after, limit),
                _report_row,
            )
        return self._query(
            "SELECT * FROM reports WHERE study_id = ? AND trial_id = ? AND id > ? ORDER BY id"
            " LIMIT ?",
            (study_id, trial_id, after, limit),
            _report_row,
        )

    def load_events(self, study_id: str | None = None) -> list[EventRow]:
        if study_id is None:
            return self._query("SELECT * FROM events ORDER BY id", (), _event_row)
        return self._query(
            "SELECT * FROM events WHERE study_id = ? ORDER BY id", (study_id,), _event_row
        )

    def load_events_after(
        self, after: int, study_id: str | None = None, limit: int = 1000
    ) -> list[EventRow]:
        """The events with an id past ``after`` (the stream's cursor), oldest first."""
        if study_id is None:
            return self._query(
                "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit), _event_row
            )
        return self._query(
            "SELECT * FROM events WHERE study_id = ? AND id > ? ORDER BY id LIMIT ?",
            (study_id, after, limit),
            _event_row,
        )

    def load_decisions(self, study_id: str, after: int = 0, limit: int = 1000) -> list[DecisionRow]:
        """A study's decision records with an id past ``after``, oldest first."""
        return self._query(
            "SELECT * FROM decisions WHERE study_id = ? AND id > ? ORDER BY id LIMIT ?",
            (study_id, after, limit),
            _decision_row,
        )

    def decision_counts(self, study_id: str) -> dict[str, int]:
        """How many decision records of each kind a study has."""
        return dict(
            self._query(
                "SELECT kind, COUNT(*) AS n FROM decisions WHERE study_id = ? GROUP BY kind",
                (study_id,),
                lambda r: (str(r["kind"]), int(r["n"])),
            )
        )

    def load_live_runs(self) -> list[LiveRunRow]:
        return self._query("SELECT * FROM live_runs ORDER BY study_id, trial_id", (), _live_run_row)

    def next_study_seq(self) -> int:
        """One more than the largest study seq so far (1 for an empty store); reserves nothing."""
        rows = self._query(
            "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM studies", (), lambda r: int(r["next"])
        )
        return rows[0]

    def load_last_reports(self, study_id: str) -> dict[int, ReportRow]:
        """Each trial's last report (any run), by trial id: what `top --all-metrics` shows."""
        rows = self._query(
            "SELECT * FROM reports WHERE id IN "
            "(SELECT MAX(id) FROM reports WHERE study_id = ? GROUP BY trial_id)",
            (study_id,),
            _report_row,
        )
        return {r.trial_id: r for r in rows}


# ---------------------------------------------------------------------------------- helpers


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a disk is full: SQLITE_FULL, or ENOSPC / EDQUOT from the OS."""
    if isinstance(exc, StoreFull):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        # The primary code is the low byte (SQLITE_FULL's extended codes keep it).
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return False


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the writer issues BEGIN/COMMIT itself. check_same_thread=False: the
    # writer connection is opened here and used only by the writer thread; the reader is guarded
    # by a lock.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    return conn


def _configure(conn: sqlite3.Connection, path: Path, durability: Durability) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise HpodError(f"{path} is not a usable hpod database: {exc}") from exc
    if str(mode).lower() != "wal":
        raise HpodError(
            f"{path}: SQLite could not switch to WAL mode (got {mode!r}); "
            "put the state directory on a local filesystem"
        )
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE: two processes opening a fresh state directory at once must not both create it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            for sql in _SCHEMA_V1:
                conn.execute(sql)
            version = 1
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", ("1",))
        else:
            version = int(row[0])
        if version > SCHEMA_VERSION:
            raise HpodError(
                f"{path} has schema version {version}, but this hpod understands up to "
                f"{SCHEMA_VERSION}: it was written by a newer hpod. Run that version, or "
                "point --state-dir somewhere else."
            )
        while version < SCHEMA_VERSION:
            for sql in _MIGRATIONS[version]:
                conn.execute(sql)
            version += 1
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _execute(conn: sqlite3.Connection, op: Op) -> None:
    cursor = conn.execute(op.sql, op.params)
    if op.must_change and cursor.rowcount == 0:
        raise NotFound(op.not_found or "no row matched")


def _load_handles(text: str | None) -> list[dict[str, Any]] | None:
    value = None if text is None else loads_json(text)
    if not isinstance(value, list):
        return None
    return [h for h in value if isinstance(h, dict)]


def _load_json(text: str) -> dict[str, Any]:
    value = loads_json(text)
    if not isinstance(value, dict):
        raise HpodError(f"the store holds {type(value).__name__} where an object belongs")
    return value


def _load_env(text: str) -> dict[str, str]:
    env = _load_json(text)
    if not all(isinstance(v, str) for v in env.values()):
        raise HpodError("the store holds an environment whose values are not all strings")
    return env


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _study_row(r: sqlite3.Row) -> StudyRow:
    return StudyRow(
        id=r["id"],
        seq=int(r["seq"]),
        name=r["name"],
        owner_uid=int(r["owner_uid"]),
        spec_toml=r["spec_toml"],
        base_dir=r["base_dir"],
        state=StudyState(r["state"]),
        created_at=float(r["created_at"]),
        ended_at=_opt_float(r["ended_at"]),
        end_reason=r["end_reason"],
        elapsed=float(r["elapsed"]),
        compute=float(r["compute"]),
        request_id=r["request_id"],
        client_env=None if r["client_env"] is None else _load_env(r["client_env"]),
        clocks_at=_opt_float(r["clocks_at"]),
        changes=r["changes"],
        budget=r["budget"],
    )


def _trial_row(r: sqlite3.Row) -> TrialRow:
    return TrialRow(
        study_id=r["study_id"],
        trial_id=int(r["trial_id"]),
        config=_load_json(r["config"]),
        state=TrialState(r["state"]),
        token=r["token"],
        bracket=int(r["bracket"]),
        resume_from=float(r["resume_from"]),
        max_resource=float(r["max_resource"]),
        runs=int(r["runs"]),
        created_at=float(r["created_at"]),
        started_at=_opt_float(r["started_at"]),
        ended_at=_opt_float(r["ended_at"]),
        exit_code=_opt_int(r["exit_code"]),
        run_seconds=float(r["run_seconds"]),
        compute_seconds=float(r["compute_seconds"]),
        error=r["error"],
        retries=_retries(r["retries"]),
        handles=_load_handles(r["handles"]),
    )


def _retries(text: str | None) -> tuple[dict[str, Any], ...]:
    if not text:
        return ()
    value = loads_json(text)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise HpodError(f"the store holds {type(value).__name__} where a list of retries belongs")
    return tuple(value)


def _report_row(r: sqlite3.Row) -> ReportRow:
    return ReportRow(
        id=int(r["id"]),
        study_id=r["study_id"],
        trial_id=int(r["trial_id"]),
        run=int(r["run"]),
        resource=_opt_float(r["resource"]),
        metrics=_load_json(r["metrics"]),
        decision=Decision(r["decision"]),
        at=float(r["at"]),
        counted=bool(r["counted"]),
        interrupting=bool(r["interrupting"]),
        sender=r["sender"],
        seq=_opt_int(r["seq"]),
    )


def _live_run_row(r: sqlite3.Row) -> LiveRunRow:
    devices = loads_json(r["devices"])
    return LiveRunRow(
        study_id=r["study_id"],
        trial_id=int(r["trial_id"]),
        run=int(r["run"]),
        token_hash=r["token_hash"],
        devices=tuple(str(d) for d in devices) if isinstance(devices, list) else (),
        launched_at=float(r["launched_at"]),
        identity=None if r["identity"] is None else _load_json(r["identity"]),
        stop_reason=_opt_int(r["stop_reason"]),
        stop_at=_opt_float(r["stop_at"]),
        handle=None if r["handle"] is None else _load_json(r["handle"]),
    )


def _event_row(r: sqlite3.Row) -> EventRow:
    return EventRow(
        id=int(r["id"]),
        study_id=r["study_id"],
        trial_id=_opt_int(r["trial_id"]),
        at=float(r["at"]),
        kind=r["kind"],
        data=_load_json(r["data"]),
    )


def _decision_row(r: sqlite3.Row) -> DecisionRow:
    return DecisionRow(
        id=int(r["id"]),
        study_id=r["study_id"],
        at=float(r["at"]),
        kind=r["kind"],
        trial_id=_opt_int(r["trial_id"]),
        level=_opt_float(r["level"]),
        data=_load_json(r["data"]),
    )
