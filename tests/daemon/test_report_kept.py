"""A report the store does not keep is not kept in memory either.

The daemon runs in-process on a real store and socket, with one real trial process that only
says who it is (through a FIFO, so the test waits for it without polling) and then sleeps: the
test reports in its name, over the wire, as ``hpod.trial.report`` would. A report refused before
it is stored (a metric too deep to serialize) or whose commit fails (the disk is full) gets an
error answer, and the study in memory is then what a restart would rebuild from the store: the
same best, the same curve, the same metric names, no PAUSE or STOP decided and no run stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod import wire
from hpod.core.states import Decision
from hpod.core.study import Best, Study
from hpod.daemon import store as store_module
from hpod.daemon.app import Daemon
from hpod.daemon.config import DaemonConfig
from hpod.daemon.runtime import RunState, StudyRuntime
from hpod.daemon.store import Op
from hpod.errors import ErrorCode, HpodError
from tests.daemon.fakes import spec_toml

pytestmark = pytest.mark.anyio

# No braces: the command's placeholders are {name}.
TRIAL = """
import json, os, sys, time
names = ("HPOD_STUDY", "HPOD_TRIAL", "HPOD_TOKEN")
with open(sys.argv[1], "w") as fifo:
    json.dump(dict((name, os.environ[name]) for name in names), fifo)
while True:
    time.sleep(60)
"""

# What the study holds of trial 0's reports: the best, its curve, its metric names.
Kept = tuple[Best | None, tuple[tuple[float, float], ...], tuple[str, ...]]

DEPTH = 800  # far past what serializing (wire.tag) can recurse through


def nested(depth: int) -> str:
    """The JSON text of an object ``depth`` levels deep: built as text, since dumping it from
    a Python object would recurse out here first."""
    return '{"a":' * depth + "0" + "}" * depth


@dataclass
class Served:
    daemon: Daemon
    socket: str
    study: StudyRuntime
    ident: dict[str, Any]  # the trial's study, trial and token, as its environment had them

    def report_line(self, rid: int, metrics_json: str) -> bytes:
        params = json.dumps({**self.ident, "metrics": "@"})
        params = params.replace('"@"', metrics_json)
        return (
            f'{{"jsonrpc": "2.0", "id": {rid}, "method": "trial.report", "params": {params}}}\n'
        ).encode()

    async def report(self, metrics: dict[str, Any] | str) -> Any:
        """Report as the trial; the result, or the error answer raised as its HpodError."""
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        line = self.report_line(2, text)
        return await anyio.to_thread.run_sync(_send_as_trial, self.socket, line)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        return await call(self.socket, method, params)

    @property
    def engine(self) -> Study:
        return self.study.engine

    def rebuilt(self) -> Study:
        """The study as a restart would rebuild it from what the store holds now."""
        sid = self.study.id
        store = self.daemon.store
        records, _ = self.daemon.studies._trial_records(
            self.study.spec, sid, store.load_trials(sid)
        )
        return Study.restore(self.study.spec, records)


async def call(path: str, method: str, params: dict[str, Any]) -> Any:
    def go() -> Any:
        with wire.SyncConnection(path, client="test") as conn:
            return conn.call(method, params)

    return await anyio.to_thread.run_sync(go)


def _send_as_trial(path: str, line: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        with sock.makefile("rb") as reader:
            sock.sendall(wire.Request(1, "hello", {"protocol": wire.PROTOCOL_VERSION}).line())
            wire.unwrap_response(wire.loads(reader.readline()), 1)
            sock.sendall(line)
            return wire.unwrap_response(wire.loads(reader.readline(wire.MAX_LINE + 1)), 2)


def kept(engine: Study) -> Kept:
    rec = engine.record(0)
    return engine.best(), rec.curve, rec.reported_keys


@asynccontextmanager
async def serving(root: Path) -> AsyncIterator[Served]:
    """A daemon on ``root/state`` with a FIFO study (max_resource 3) whose one trial is up."""
    fifo = root / "ready"
    os.mkfifo(fifo)
    spec = spec_toml(
        "kept",
        command=json.dumps([sys.executable, "-c", TRIAL, str(fifo)]),
        scheduler='type = "fifo"\nmax_resource = 3',
        limits="max_trials = 1",
    )
    # min_free_disk 0: the tmpfs test's 4 MiB state dir would hold the daemon under the default.
    config = DaemonConfig.defaults().with_overrides(cpu_slots=1, min_free_disk=0)
    daemon = Daemon(config, socket_path=str(root / "s"), state_dir=root / "state")
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.serve)
        try:
            sub = await call(str(root / "s"), "submit", {"spec": spec, "base_dir": str(root)})
            with anyio.fail_after(30):
                # Opening the FIFO returns once the trial opens it for writing: no polling.
                text = await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True)
            ident = json.loads(text)
            yield Served(
                daemon,
                str(root / "s"),
                daemon.registry[sub["study"]],
                {
                    "study": ident["HPOD_STUDY"],
                    "trial": int(ident["HPOD_TRIAL"]),
                    "token": ident["HPOD_TOKEN"],
                },
            )
        finally:
            daemon.request_shutdown()


class FailingCommits:
    """The store's one seam for a statement: the next ``times`` report inserts raise what a
    full disk raises (SQLITE_FULL), on the writer thread, inside the report's transaction."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.times = 0
        real: Callable[[sqlite3.Connection, Op], None] = store_module._execute

        def execute(conn: sqlite3.Connection, op: Op) -> None:
            if self.times and op.sql.startswith("INSERT INTO reports"):
                self.times -= 1
                raise sqlite3.OperationalError("database or disk is full")
            real(conn, op)

        monkeypatch.setattr(store_module, "_execute", execute)


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> FailingCommits:
    return FailingCommits(monkeypatch)


async def first_report(served: Served) -> Kept:
    """Trial 0 reports epoch 1 (CONTINUE); what the study holds of it then."""
    assert await served.report({"epoch": 1, "loss": 0.5}) == {"decision": "CONTINUE"}
    return kept(served.engine)


async def test_a_metric_too_deep_to_store_is_refused_and_not_counted(root: Path) -> None:
    async with serving(root) as served:
        before = await first_report(served)
        best = await served.call("best", {"study": served.study.id})
        trials = await served.call("trials", {"study": served.study.id})

        deep = f'{{"epoch": 2, "loss": 0.01, "deep": {nested(DEPTH)}}}'
        with pytest.raises(HpodError) as refused:
            await served.report(deep)

        assert kept(served.engine) == before
        assert await served.call("best", {"study": served.study.id}) == best
        assert await served.call("trials", {"study": served.study.id}) == trials
        # The wire refuses a line nested past hpod.wire.MAX_DEPTH (64) before any handler sees
        # it (issue 12, tests/daemon/test_fuzz.py); metrics_text's InvalidParams guards the rest.
        assert refused.value.code is ErrorCode.NESTING_TOO_DEEP
        assert "more than 64 deep" in str(refused.value)
        assert kept(served.rebuilt()) == before
        # The trial may go on: its next report is counted as usual.
        assert await served.report({"epoch": 2, "loss": 0.01}) == {"decision": "CONTINUE"}
        assert served.engine.record(0).curve == ((1.0, 0.5), (2.0, 0.01))


async def test_a_report_whose_commit_fails_is_not_counted(
    root: Path, failing: FailingCommits
) -> None:
    async with serving(root) as served:
        before = await first_report(served)

        failing.times = 1
        with pytest.raises(HpodError) as lost:
            await served.report({"epoch": 2, "loss": 0.01, "lr": 0.1})

        assert kept(served.engine) == kept(served.rebuilt())
        assert kept(served.engine) == before
        assert lost.value.code is ErrorCode.INTERNAL
        assert "not counted" in str(lost.value)
        # Sent again once the store can write, it is counted (and kept) like any other.
        assert await served.report({"epoch": 2, "loss": 0.01, "lr": 0.1}) == {
            "decision": "CONTINUE"
        }
        assert kept(served.engine) == kept(served.rebuilt())
        assert served.engine.record(0).curve == ((1.0, 0.5), (2.0, 0.01))


async def test_a_stop_whose_commit_fails_is_neither_kept_nor_acted_on(
    root: Path, failing: FailingCommits
) -> None:
    async with serving(root) as served:
        before = await first_report(served)
        run = served.study.runs[0]

        failing.times = 1
        with pytest.raises(HpodError, match="not counted"):
            await served.report({"epoch": 3, "loss": 0.2})  # max_resource: the answer was STOP

        assert kept(served.engine) == kept(served.rebuilt()) == before
        # The trial was never told STOP: nothing waits for it to stop, nor will kill it.
        assert served.engine.record(0).last_decision is None
        assert (run.state, run.stop_reason) == (RunState.RUNNING, None)
        assert await served.report({"epoch": 3, "loss": 0.2}) == {"decision": "STOP"}
        assert served.engine.record(0).last_decision is Decision.STOP
        assert run.state is RunState.STOPPING


@pytest.fixture
def tmpfs_state(root: Path) -> Iterator[Path]:
    """``root/state`` on a 4 MiB tmpfs of its own (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    state = root / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(folder: Path) -> Path:
    """A file that takes every free page of ``folder``'s filesystem."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12):  # big writes first, then the last pages one by one
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return path


async def test_a_report_on_a_full_disk_is_not_counted(root: Path, tmpfs_state: Path) -> None:
    async with serving(root) as served:
        before = await first_report(served)

        filler = fill(tmpfs_state)
        try:
            # Bigger than the WAL so far, so its commit needs new pages the disk no longer has.
            with pytest.raises(HpodError, match="not counted"):
                await served.report({"epoch": 2, "loss": 0.01, "pad": "x" * 400_000})
            assert kept(served.engine) == before
        finally:
            filler.unlink()
        assert kept(served.engine) == kept(served.rebuilt())
        assert await served.report({"epoch": 2, "loss": 0.01}) == {"decision": "CONTINUE"}
        assert kept(served.engine) == kept(served.rebuilt())
