"""Descriptor exhaustion: idle connections past RLIMIT_NOFILE, accept() failing with EMFILE and
abandoned waits leave the daemon serving and its running trials untouched.

Before the caps, 300 idle connections under a soft limit of 256 made accept() fail with EMFILE;
anyio's ``listener.serve`` ended the task group and the daemon exited 1, interrupting its trial;
200 waits whose clients hung up held 200 descriptors until their study ended. The real daemon
(`hpod serve`, tests/e2e/conftest.py) is used where the daemon's own descriptors are counted
(``/proc/PID/fd``); the per-uid cap runs in-process with the SO_PEERCRED seam faked, as in
tests/daemon/test_authorization.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import structlog

from hpod import wire
from hpod.client import Client
from hpod.daemon import server
from hpod.daemon.app import Daemon
from hpod.daemon.config import DaemonConfig
from hpod.daemon.connections import (
    BACKOFF_FIRST,
    BACKOFF_LAST,
    FD_RESERVE,
    FDS_PER_SLOT,
    MIN_CAP,
    ROOT_RESERVE,
    AcceptBackoff,
    ConnectionLimits,
    Gate,
    accept_forever,
)
from hpod.errors import ErrorCode, TooManyConnections
from tests.daemon.test_authorization import Uids
from tests.e2e.conftest import DaemonHandle
from tests.e2e.conftest import daemon_factory as daemon_factory  # the fixture, for this module
from tests.e2e.specs import spec
from tests.e2e.test_settings import events, serve, trial_dir, wait_for

e2e = pytest.mark.e2e

# A trial that reports every 20 ms, counting its acknowledged reports in `steps`, until the test
# writes `finish` in its folder; then it reports once more and exits 0 (the study completes).
LONG_TRIAL = """
import os, pathlib, time
from hpod import trial
folder = pathlib.Path(os.environ["HPOD_TRIAL_DIR"])
step = 0
while not (folder / "finish").exists():
    step += 1
    trial.report(step=step, loss=1.0 / step)
    (folder / "steps").write_text(str(step))
    time.sleep(0.02)
trial.report(step=step + 1, loss=0.0)
"""

# A trial that reports, sits for QUIET seconds (several idle time-outs), reports again, and
# notes whether both reports went over one connection (trial._conn is the reporter's).
QUIET_TRIAL = """
import os, pathlib, time
QUIET = 3
from hpod import trial
folder = pathlib.Path(os.environ["HPOD_TRIAL_DIR"])
trial.report(step=1, loss=1.0)
first = trial._conn
(folder / "reported").touch()
time.sleep(QUIET)
trial.report(step=2, loss=0.5)
(folder / "same").write_text(str(trial._conn is first))
"""


# -- helpers -------------------------------------------------------------------------------------


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_long_study(d: DaemonHandle) -> tuple[str, Path]:
    """A one-trial study of LONG_TRIAL, returned once its trial has reported."""
    text = spec("long", steps=10**6, limits="max_trials = 1", script="long.py")
    path = d.write_spec("long", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "long.py").write_text(LONG_TRIAL)
    sid = str(d.ctl_json("submit", str(path))["study"])
    folder = trial_dir(d, sid)
    wait_for("the trial's first report", (folder / "steps").exists)
    return sid, folder


def steps(folder: Path) -> int:
    text = (folder / "steps").read_text()
    return int(text) if text else 0


def finish(d: DaemonHandle, sid: str, folder: Path) -> None:
    """Let the long trial end; the study completes, its trial completed."""
    (folder / "finish").touch()
    done = d.ctl_json("wait", sid)
    assert done["state"] == "completed", done
    assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]


def hello_line() -> bytes:
    return wire.Request(1, "hello", {"protocol": wire.PROTOCOL_VERSION, "client": "t"}).line()


def first_line(sock: socket.socket, timeout: float = 20.0) -> Any:
    """The first line the daemon sends on ``sock`` (None if it closed without one)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def closed_by_daemon(sock: socket.socket, timeout: float) -> bool:
    """Whether the daemon closes ``sock`` (EOF) within ``timeout`` seconds."""
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready) and sock.recv(4096) == b""


def ping(path: str) -> Any:
    with wire.SyncConnection(path, client="test", timeout=10) as conn:
        return conn.call("ping")


@pytest.fixture
def restore_nofile() -> Iterator[None]:
    """This process's RLIMIT_NOFILE as it was (a test lowers it to show the cap follow)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


# -- the caps, in the small ----------------------------------------------------------------------


def test_a_uid_over_its_cap_is_refused_and_each_running_trial_adds_one() -> None:
    running: dict[int, int] = {}
    gate = Gate(ConnectionLimits(max_per_uid=2, running_trials=lambda: running))
    gate.opened(1000)
    gate.opened(1000)
    refusal = gate.refusal(1000)
    assert isinstance(refusal, TooManyConnections)
    assert refusal.code is ErrorCode.TOO_MANY_CONNECTIONS
    assert "max_connections_per_uid = 2" in refusal.message
    assert gate.refusal(1001) is None
    running[1000] = 1  # a trial of 1000's that starts may still connect to report
    assert gate.refusal(1000) is None
    gate.closed(1000)
    running.clear()
    assert gate.refusal(1000) is None


def test_the_overall_cap_keeps_a_few_for_root(restore_nofile: None) -> None:
    gate = Gate(ConnectionLimits(max_connections=3, max_per_uid=100))
    for uid in (1000, 1001, 1002):
        gate.opened(uid)
    refusal = gate.refusal(1003)
    assert refusal is not None
    assert "max_connections = 3" in refusal.message
    assert gate.refusal(0) is None
    for _ in range(ROOT_RESERVE):
        gate.opened(0)
    assert gate.refusal(0) is not None


def test_the_overall_cap_follows_rlimit_nofile_when_lower(restore_nofile: None) -> None:
    gate = Gate(ConnectionLimits(max_connections=512, slots=4))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert gate.cap() == 256 - FD_RESERVE - 4 * FDS_PER_SLOT
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
    assert gate.cap() == MIN_CAP  # never nothing: what the kernel then refuses is backed off
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 16), hard))
    assert gate.cap() == 512


def test_accept_failures_back_off_doubling_to_a_second_and_log_once_per_burst() -> None:
    backoff = AcceptBackoff("/s")
    emfile = OSError(errno.EMFILE, "Too many open files")
    with structlog.testing.capture_logs() as logs:
        delays = [backoff.failed(emfile) for _ in range(12)]
        backoff.succeeded()
        backoff.failed(emfile)
    assert delays[0] == BACKOFF_FIRST
    assert delays[1] == 2 * BACKOFF_FIRST
    assert delays[-1] == BACKOFF_LAST
    assert [e["event"] for e in logs] == ["accept_failed", "accept_recovered", "accept_failed"]
    assert logs[0]["errno"] == "EMFILE"
    assert logs[1]["failures"] == 12


class FlakyListener(anyio.abc.SocketListener):
    """accept() fails with each of ``errors`` in turn, then the listener is closed."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors

    async def accept(self) -> anyio.abc.SocketStream:
        await anyio.lowlevel.checkpoint()
        if not self.errors:
            raise anyio.ClosedResourceError
        code = self.errors.pop(0)
        raise anyio.BrokenResourceError from OSError(code, os.strerror(code))

    async def aclose(self) -> None:
        pass

    @property
    def extra_attributes(self) -> Any:
        return {}


@pytest.mark.anyio
async def test_no_accept_error_ends_the_accept_loop() -> None:
    codes = [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ECONNABORTED, errno.ENOMEM]
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        await accept_forever(FlakyListener(list(codes)), lambda stream: None, where="/s")
    # It returned only when the listener closed; one line for the whole burst.
    assert [e["event"] for e in logs] == ["accept_failed"]


# -- the per-uid cap, in-process -----------------------------------------------------------------


@pytest.mark.anyio
async def test_one_users_connections_are_capped_and_another_user_still_gets_in(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = Uids()
    monkeypatch.setattr(server, "peer_credentials", uids.creds)
    config = DaemonConfig.defaults().with_overrides(cpu_slots=1, max_connections_per_uid=3)
    d = Daemon(config, socket_path=str(root / "s"), state_dir=root / "state")
    path = str(root / "s")

    def connect(uid: int) -> wire.SyncConnection:
        uids.next.append(uid)
        return wire.SyncConnection(path, client="test", timeout=10)

    async with anyio.create_task_group() as tg:
        await tg.start(d.serve)
        held = [await anyio.to_thread.run_sync(connect, 1000) for _ in range(3)]
        with pytest.raises(TooManyConnections) as refused:
            await anyio.to_thread.run_sync(connect, 1000)
        assert refused.value.code.exit_status == 15
        assert "uid 1000 already has 3 connections" in refused.value.message
        other = await anyio.to_thread.run_sync(connect, 1001)
        assert (await anyio.to_thread.run_sync(other.call, "ping"))["pong"] is True
        other.close()
        held.pop().close()
        # The closed one's place is free again once the daemon has seen it go.
        with anyio.fail_after(10):
            while True:
                try:
                    again = await anyio.to_thread.run_sync(connect, 1000)
                    break
                except TooManyConnections:
                    await anyio.sleep(0.01)
        assert (await anyio.to_thread.run_sync(again.call, "ping"))["pong"] is True
        for conn in [*held, again]:
            conn.close()
        d.request_shutdown()


# -- a real daemon -------------------------------------------------------------------------------


@e2e
def test_idle_connections_past_rlimit_nofile_are_capped_and_the_daemon_keeps_serving(
    daemon_factory: Any,
) -> None:
    # Every connection here is root's: the per-uid cap is raised so that the overall one, which
    # RLIMIT_NOFILE sets, is the one that binds.
    d = serve(daemon_factory, idle_timeout="2s", max_connections_per_uid=10_000)
    sid, folder = start_long_study(d)
    assert d.proc is not None
    pid = d.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, hard))
    baseline = fds(pid)
    flood: list[socket.socket] = []
    answers: list[Any] = []
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(d.socket)
            flood.append(sock)
            with contextlib.suppress(BrokenPipeError):  # refused already: its line waits
                sock.sendall(hello_line())
        answers = [first_line(sock) for sock in flood]
        peak = fds(pid)
        held = [s for s, a in zip(flood, answers, strict=True) if a and "result" in a]
        refused = [a for a in answers if a and "error" in a]
        assert len(held) + len(refused) == 300, answers
        assert {a["error"]["code"] for a in refused} == {ErrorCode.TOO_MANY_CONNECTIONS}
        # The cap: 256 less the daemon's reserve and its slots', root's few more, the trial's
        # connection among them.
        cap = 256 - FD_RESERVE - 2 * FDS_PER_SLOT + ROOT_RESERVE
        assert cap - 2 <= len(held) <= cap, len(held)
        assert peak < 256
        # Meanwhile the trial reports on its own connection.
        before = steps(folder)
        wait_for("the trial reporting on", lambda: steps(folder) >= before + 5)
        with pytest.raises(TooManyConnections):
            ping(d.socket)
        # The idle ones time out; then anyone gets in again.
        assert all(closed_by_daemon(s, 20.0) for s in held)
        assert ping(d.socket)["pong"] is True
    finally:
        for sock in flood:
            sock.close()
    wait_for("the descriptors back", lambda: fds(pid) <= baseline + 2)
    print(
        f"fds: {baseline} before, {peak} with 300 idle connections ({len(held)} held, "
        f"{len(refused)} refused), {fds(pid)} after"
    )
    finish(d, sid, folder)
    assert d.proc.poll() is None
    # Refusals are logged once per uid per burst, not once each.
    assert sum(e["event"] == "connection_refused" for e in events(d)) <= 2


@e2e
def test_accept_failing_with_emfile_is_backed_off_and_never_ends_the_daemon(
    daemon_factory: Any,
) -> None:
    d: DaemonHandle = daemon_factory()
    sid, folder = start_long_study(d)
    assert d.proc is not None
    pid = d.proc.pid
    limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Three descriptors to spare: the fourth connection's accept() fails with EMFILE.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds(pid) + 3, limit[1]))
    flood = []
    try:
        for _ in range(20):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(d.socket)
            flood.append(sock)
        wait_for("accept() failing", lambda: "accept_failed" in d.output())
        before = steps(folder)
        wait_for("the trial reporting on", lambda: steps(folder) >= before + 10)
        assert d.proc.poll() is None, d.output()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        for sock in flood:
            sock.close()
    assert ping(d.socket)["pong"] is True
    finish(d, sid, folder)
    said = [e for e in events(d) if e["event"].startswith("accept_")]
    assert [e["event"] for e in said] == ["accept_failed", "accept_recovered"], said
    assert said[0]["errno"] == "EMFILE"
    assert said[1]["failures"] >= 2


@e2e
def test_abandoned_waits_give_their_descriptors_back(daemon_factory: Any) -> None:
    d: DaemonHandle = daemon_factory()
    sid, folder = start_long_study(d)
    assert d.proc is not None
    pid = d.proc.pid
    baseline = fds(pid)
    for _ in range(200):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(d.socket)
            sock.sendall(hello_line())
            assert "result" in first_line(sock)
            sock.sendall(wire.Request(2, "wait", {"study": sid}).line())
    wait_for("the waits' descriptors back", lambda: fds(pid) <= baseline + 2)
    print(f"fds: {baseline} before 200 abandoned waits, {fds(pid)} after")
    # A client that only shut its writing side still gets its wait's answer.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(d.socket)
        sock.sendall(hello_line())
        first_line(sock)
        sock.sendall(wire.Request(2, "wait", {"study": sid, "timeout": 1.5}).line())
        sock.shutdown(socket.SHUT_WR)
        answer = first_line(sock)
    assert answer["result"]["state"] == "running"
    finish(d, sid, folder)


@e2e
def test_a_trials_connection_and_a_wait_in_progress_are_never_idle(daemon_factory: Any) -> None:
    d = serve(daemon_factory, idle_timeout="1s")  # three between the trial's two reports
    text = spec("quiet", steps=10, limits="max_trials = 1", script="quiet.py")
    path = d.write_spec("quiet", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "quiet.py").write_text(QUIET_TRIAL)
    with Client(d.socket) as client:
        sid = client.submit(path)["study"]
        started = time.monotonic()
        done = client.wait(sid)  # answered only when the study ends, > 3 s later
    assert time.monotonic() - started > 2
    assert done["state"] == "completed", done
    assert (trial_dir(d, sid) / "same").read_text() == "True"


@e2e
def test_an_idle_control_connection_is_closed_and_the_client_reconnects(
    daemon_factory: Any,
) -> None:
    d = serve(daemon_factory, idle_timeout="1s")
    with Client(d.socket) as client:
        client.ping()
        assert client._conn is not None
        assert closed_by_daemon(client._conn._sock, 10.0)
        assert client.ping()["pong"] is True
