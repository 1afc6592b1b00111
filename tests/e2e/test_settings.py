"""Every key of etc/hpod.toml changes what a user of the daemon sees: one test per key.

A key's test is ``test_setting_<key>`` (``test_setting_gpu_<key>`` for the [gpu] table), and
``test_every_key_has_a_test`` fails for a key added to etc/hpod.toml without one. The tests start
real daemons as ``hpod serve --config FILE`` with no other flag (flags win over the file), except
``admins``, which needs connections from other uids (faked at the SO_PEERCRED seam, as in
tests/daemon/test_authorization.py), and ``durability``, which only the store's own connection
can show: those two run the daemon in-process. The [gpu] keys run against tests/fake_nvml.py.
"""

from __future__ import annotations

import grp
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod import wire
from hpod.daemon import server
from hpod.daemon.app import Daemon
from hpod.daemon.config import DaemonConfig
from hpod.daemon.connections import ROOT_RESERVE
from hpod.errors import ErrorCode, HpodError, PermissionDenied, TooManyConnections
from tests import fake_nvml
from tests.daemon.test_authorization import SPEC as OWNED_SPEC
from tests.daemon.test_authorization import Uids, call_as
from tests.daemon.test_config import uncommented_etc
from tests.e2e.conftest import DaemonHandle
from tests.e2e.specs import spec

REPO = Path(__file__).resolve().parents[2]
e2e = pytest.mark.e2e

# A trial that writes down what the daemon told it, then reports once.
ENV_TRIAL = """
import json, os
from hpod import trial
with open(os.path.join(os.environ["HPOD_TRIAL_DIR"], "env.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in ("HPOD_SOCKET", "CUDA_VISIBLE_DEVICES")}, f)
trial.report(step=1, loss=1.0)
"""

# A trial that reports, then never exits by itself: SIGTERM is only noted (file `sigterm`).
STUBBORN_TRIAL = """
import os, pathlib, signal, time
from hpod import trial
folder = pathlib.Path(os.environ["HPOD_TRIAL_DIR"])
signal.signal(signal.SIGTERM, lambda signum, frame: (folder / "sigterm").touch())
(folder / "pid").write_text(str(os.getpid()))
trial.report(step=1, loss=1.0)
(folder / "reported").touch()
while True:
    time.sleep(0.05)
"""


# -- helpers -------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, for the paths and words used here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def serve(
    daemon_factory: Any,
    *,
    prefix: tuple[str, ...] = (),
    gpus: list[dict[str, Any]] | None = None,
    gpu: dict[str, Any] | None = None,
    **settings: Any,
) -> DaemonHandle:
    """`hpod serve --config FILE` and no flag; FILE puts the socket and the state folder in the
    handle's folder unless ``settings`` says otherwise ("{root}" in a value is that folder).
    ``gpus``: the fake NVML's GPUs."""
    d: DaemonHandle = daemon_factory(start=False)
    values = {"socket": d.socket, "state_dir": str(d.state_dir), **settings}
    values = {k: v.format(root=d.root) if isinstance(v, str) else v for k, v in values.items()}
    lines = [f"{key} = {toml_value(value)}" for key, value in values.items()]
    if gpu:
        lines += ["[gpu]", *(f"{key} = {toml_value(value)}" for key, value in gpu.items())]
    config = d.root / "hpod.toml"
    config.write_text("\n".join(lines) + "\n")
    d.socket = str(values["socket"])
    d.state_dir = d.root / values["state_dir"]  # a relative state_dir is from the file's folder
    if gpus is not None:
        layout = d.root / "gpus.json"
        layout.write_text(json.dumps({"gpus": gpus}))
        path = [p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p]
        d.env.update(
            HPOD_NVML_MODULE="tests.fake_nvml",
            HPOD_FAKE_NVML=str(layout),
            PYTHONPATH=os.pathsep.join(path),
        )
    d.command = [*prefix, sys.executable, "-m", "hpod", "serve", "--config", str(config)]
    d.start()
    return d


def call(path: str | Path, method: str, params: dict[str, Any] | None = None) -> Any:
    with wire.SyncConnection(str(path), client="test") as conn:
        return conn.call(method, params or {})


def events(d: DaemonHandle) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.output().splitlines() if line.startswith("{")]


def submit(d: DaemonHandle, script: str, *, wait: bool = True, **knobs: Any) -> str:
    """A one-trial study of ``script``; its id."""
    text = spec("one", steps=3, limits="max_trials = 1", script="one.py", **knobs)
    path = d.write_spec("one", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "one.py").write_text(script)
    args = ("submit", str(path), "--wait") if wait else ("submit", str(path))
    return str(d.ctl_json(*args)["study"])


def trial_dir(d: DaemonHandle, sid: str, trial: int = 0) -> Path:
    return d.state_dir / "studies" / sid / "trials" / str(trial)


def wait_for(what: str, ready: Any, timeout: float = 20.0) -> None:
    """Poll ``ready()`` (a file appearing, a view changing) until it is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.01)


def gpu_view(d: DaemonHandle) -> list[bool]:
    return [g["usable"] for g in call(d.socket, "gpus")["gpus"]]


# -- the keys ------------------------------------------------------------------------------------


@e2e
def test_setting_socket(daemon_factory: Any) -> None:
    d = serve(daemon_factory, socket="{root}/control")
    assert call(d.root / "control", "ping")["pong"] is True
    assert d.ctl("ping").returncode == 0  # hpodctl --socket <it>
    assert not (d.root / "s").exists()


@e2e
def test_setting_trial_socket(daemon_factory: Any) -> None:
    d = serve(daemon_factory, trial_socket="{root}/trials")
    trials = str(d.root / "trials")
    sid = submit(d, ENV_TRIAL)
    assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]
    seen = json.loads((trial_dir(d, sid) / "env.json").read_text())
    assert seen["HPOD_SOCKET"] == trials  # it reported through the trial socket
    assert call(trials, "ping")["pong"] is True
    assert call(d.socket, "ping")["pong"] is True  # and the control socket still answers


@e2e
def test_setting_state_dir(daemon_factory: Any) -> None:
    d = serve(daemon_factory, state_dir="relative/state")
    assert (d.root / "relative" / "state" / "hpod.sqlite3").is_file()
    assert not (Path.cwd() / "relative").exists()  # from the config file's folder, not the cwd
    serving = next(e for e in events(d) if e["event"] == "serving")
    assert serving["state_dir"] == str(d.root / "relative" / "state")


@e2e
@pytest.mark.parametrize(("value", "pinned"), [("auto", True), ("auto", False), (3, False)])
def test_setting_cpu_slots(daemon_factory: Any, value: Any, pinned: bool) -> None:
    mask = os.sched_getaffinity(0)
    prefix: tuple[str, ...] = ()
    if pinned:
        if shutil.which("taskset") is None:
            pytest.skip("taskset is not installed")
        prefix = ("taskset", "-c", str(min(mask)))
    expected = value if isinstance(value, int) else 1 if pinned else len(mask)
    d = serve(daemon_factory, prefix=prefix, cpu_slots=value)
    assert call(d.socket, "ping")["slots"] == expected
    assert d.ctl_json("gpus")["cpu_slots"]["size"] == expected


def _stubborn_study(d: DaemonHandle) -> tuple[str, Path]:
    sid = submit(d, STUBBORN_TRIAL, wait=False, grace="1h")
    folder = trial_dir(d, sid)
    wait_for("the trial reported", (folder / "reported").exists)
    return sid, folder


def with_pid_gone(pid: int) -> None:
    """The trial is gone (the daemon killed it); if not, kill it: the test must not leave it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    os.kill(pid, signal.SIGKILL)


@e2e
@pytest.mark.parametrize("when", ["running", "stopping"])
def test_setting_stop_grace(daemon_factory: Any, when: str) -> None:
    # The study allows 1h between SIGTERM and SIGKILL, the daemon's stop_grace 1.5s: a shutdown
    # takes the shorter, also for a trial already in its grace period (stopped by a user).
    d = serve(daemon_factory, stop_grace=1.5)
    sid, folder = _stubborn_study(d)
    pid = int((folder / "pid").read_text())
    stopper = None
    try:
        if when == "stopping":
            stopper = subprocess.Popen(
                [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", d.socket, "stop", sid],
                env=d.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for("the user's stop sent SIGTERM", (folder / "sigterm").exists)
        assert d.proc is not None
        began = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=10)
        took = time.monotonic() - began
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.stop()
        with_pid_gone(pid)
        if stopper is not None:
            stopper.wait(timeout=20)
    assert rc == 0, d.output()
    assert 1.5 <= took < 6, f"the shutdown took {took:.1f}s"
    assert (folder / "sigterm").exists()
    conn = sqlite3.connect(d.state_dir / "hpod.sqlite3")
    try:
        (state,) = conn.execute("SELECT state FROM trials WHERE study_id = ?", (sid,)).fetchone()
    finally:
        conn.close()
    assert state == "interrupted", state
    d.stop()


@e2e
@pytest.mark.parametrize("level", ["debug", "info", "warning"])
def test_setting_log_level(daemon_factory: Any, level: str) -> None:
    d = serve(daemon_factory, log_level=level, log_format="json")
    assert d.stop() == 0
    levels = {e["level"] for e in events(d)}
    names = {e["event"] for e in events(d)}
    assert ("debug" in levels) is (level == "debug")
    assert ("config" in names) is (level == "debug")  # the settings in use, at debug
    assert ("info" in levels) is (level != "warning")
    assert ("stopped" in names) is (level != "warning")


@e2e
@pytest.mark.parametrize("fmt", ["json", "console", "auto"])
def test_setting_log_format(daemon_factory: Any, fmt: str) -> None:
    d = serve(daemon_factory, log_format=fmt)
    lines = [line for line in d.output().splitlines() if line.strip()]
    assert any("serving" in line for line in lines)
    json_lines = [line for line in lines if line.startswith("{") and json.loads(line)]
    if fmt == "console":
        assert json_lines == []
    else:  # auto: the log is a file, not a terminal, so JSON lines (as for the journal)
        assert json_lines == lines


@asynccontextmanager
async def in_process(**settings: Any) -> AsyncIterator[tuple[Daemon, Path]]:
    root = Path(tempfile.mkdtemp(prefix="hpod"))
    config = DaemonConfig.defaults().with_overrides(cpu_slots=1, **settings)
    d = Daemon(config, socket_path=str(root / "s"), state_dir=root / "state")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(d.serve)
            yield d, root
            d.request_shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.anyio
@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("fsync", 2)])
async def test_setting_durability(durability: str, synchronous: int) -> None:
    async with in_process(durability=durability) as (d, _):
        # synchronous is the connection's own: only the daemon's writer can say (2 = FULL).
        got = d.store._writer.execute("PRAGMA synchronous").fetchone()[0]
    assert got == synchronous


@e2e
@pytest.mark.parametrize("mode", [0o600, 0o666, "0640"], ids=["0o600", "0o666", "str-0640"])
def test_setting_socket_mode(daemon_factory: Any, mode: int | str) -> None:
    d = serve(daemon_factory, socket_mode=mode, trial_socket="{root}/t")
    want = mode if isinstance(mode, int) else int(mode, 8)
    for path in (d.socket, str(d.root / "t")):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == want, f"{path}: {stat.S_IMODE(st.st_mode):04o}"


def connects_as(path: str, uid: int, gid: int, groups: list[int]) -> bool:
    """Whether a process with these ids may connect to the socket at ``path``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 13), f"the child exited {code}"
    return code == 0


@e2e
@pytest.mark.parametrize("by", ["gid", "name"])
def test_setting_socket_group(daemon_factory: Any, by: str) -> None:
    # A group other than the daemon's own (which the socket would get anyway): as root any
    # group will do; otherwise a supplementary group of this user.
    mine = os.getgid()
    candidates = (
        [g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, mine, 65534)]
        if os.geteuid() == 0
        else [g for g in os.getgroups() if g != mine]
    )
    if not candidates:
        pytest.skip("no group other than the daemon's own to give the socket")
    gid = candidates[0]
    group = str(gid) if by == "gid" else grp.getgrgid(gid).gr_name
    d = serve(daemon_factory, socket_group=group, trial_socket="{root}/t")
    for path in (d.socket, str(d.root / "t")):
        assert os.stat(path).st_gid == gid
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    if os.geteuid() != 0:
        return
    # Members of the group get in through socket_mode's group bits; others do not.
    d.root.chmod(0o755)
    nobody = 65534
    assert connects_as(d.socket, nobody, nobody, [gid])
    assert not connects_as(d.socket, nobody, nobody, [])


@pytest.mark.anyio
@pytest.mark.parametrize("admins", [[4242], []])
async def test_setting_admins(admins: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    uids = Uids()
    monkeypatch.setattr(server, "peer_credentials", uids.creds)
    async with in_process(admins=admins) as (_, root):
        path = str(root / "s")
        params = {"spec": OWNED_SPEC, "base_dir": str(root)}
        sid = (await call_as(path, uids, 1000, "submit", params))["study"]
        if admins:
            stopped = await call_as(path, uids, 4242, "stop", {"study": sid})
            assert stopped["state"] == "stopped"
        else:
            with pytest.raises(PermissionDenied, match="belongs to uid 1000"):
                await call_as(path, uids, 4242, "stop", {"study": sid})
            await call_as(path, uids, 1000, "stop", {"study": sid})


def held_until_refused(d: DaemonHandle, most: int) -> tuple[list[wire.SyncConnection], str]:
    """Connections opened (each after its hello) until one is refused; the refusal's message."""
    held: list[wire.SyncConnection] = []
    for _ in range(most):
        try:
            held.append(wire.SyncConnection(d.socket, client="test", timeout=10))
        except TooManyConnections as exc:
            return held, exc.message
    raise AssertionError(f"{most} connections and none refused")


@e2e
def test_setting_max_connections(daemon_factory: Any) -> None:
    d = serve(daemon_factory, max_connections=4)
    held, why = held_until_refused(d, 50)
    # Root (these tests, when run as root) may open a few past the cap.
    assert len(held) == 4 + (ROOT_RESERVE if os.geteuid() == 0 else 0)
    assert "max_connections = 4" in why
    refused = d.ctl("ping")
    assert refused.returncode == 15, refused.stderr
    held.pop().close()
    wait_for("the freed place taken", lambda: d.ctl("ping").returncode == 0)
    for conn in held:
        conn.close()


@e2e
def test_setting_max_connections_per_uid(daemon_factory: Any) -> None:
    d = serve(daemon_factory, max_connections_per_uid=3)
    held, why = held_until_refused(d, 50)
    assert len(held) == 3
    assert f"uid {os.geteuid()} already has 3 connections" in why
    assert "max_connections_per_uid = 3" in why
    assert d.ctl("ping").returncode == 15
    for conn in held:
        conn.close()


@e2e
@pytest.mark.parametrize("idle", ["1s", 0])
def test_setting_idle_timeout(daemon_factory: Any, idle: str | int) -> None:
    d = serve(daemon_factory, idle_timeout=idle)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(d.socket)
        sock.sendall(wire.Request(1, "hello", {"protocol": wire.PROTOCOL_VERSION}).line())
        assert b'"result"' in sock.recv(4096)
        began = time.monotonic()
        readable, _, _ = select.select([sock], [], [], 10.0 if idle else 2.0)
        if idle:  # closed by the daemon after a second with nothing asked
            assert readable
            assert sock.recv(4096) == b""
            assert 0.9 <= time.monotonic() - began < 5
        else:  # 0: never
            assert not readable
            assert call(d.socket, "ping")["pong"] is True


@e2e
@pytest.mark.parametrize(("floor", "room"), [("1MiB", True), (0, True), ("1000TiB", False)])
def test_setting_min_free_disk(daemon_factory: Any, floor: str | int, room: bool) -> None:
    d = serve(daemon_factory, min_free_disk=floor)
    if room:
        sid = submit(d, ENV_TRIAL)
        assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]
        assert d.ctl_json("show", sid)["held"] is None
        return
    # Less free space than asked for: the daemon serves, launches nothing and admits nothing.
    assert call(d.socket, "ping")["pong"] is True
    text = spec("one", steps=3, limits="max_trials = 1", script="one.py")
    path = d.write_spec("one", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "one.py").write_text(ENV_TRIAL)
    refused = d.ctl("submit", str(path))
    assert refused.returncode == ErrorCode.STORE_FULL.exit_status, refused.stderr
    assert "disk full: " in refused.stderr
    assert "under min_free_disk (1000 TiB)" in refused.stderr
    assert "disk_full_hold" in {e["event"] for e in events(d)}


# A trial whose child leaves its session and sleeps; it notes its own cgroup and the child's pid.
SETSID_TRIAL = """
import os, pathlib, subprocess, sys
from hpod import trial
folder = pathlib.Path(os.environ["HPOD_TRIAL_DIR"])
(folder / "cgroup").write_text(open("/proc/self/cgroup").read())
child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(300)"])
(folder / "child").write_text(str(child.pid))
trial.report(step=1, loss=1.0)
"""


def _cgroups_here() -> bool:
    from hpod.daemon.containment import cgroup2_mount

    mounted = cgroup2_mount()
    return os.geteuid() == 0 and mounted is not None and os.access(mounted[0], os.W_OK)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@e2e
@pytest.mark.parametrize("mode", ["auto", "cgroup", "subreaper"])
def test_setting_containment(daemon_factory: Any, mode: str) -> None:
    if mode == "cgroup" and not _cgroups_here():
        pytest.skip("needs root and a writable cgroup v2 tree (containment = cgroup would refuse)")
    d = serve(daemon_factory, containment=mode)
    sid = submit(d, SETSID_TRIAL)
    folder = trial_dir(d, sid)
    child = int((folder / "child").read_text())
    # Gone when the trial ended, whatever the mode: the shim (a subreaper) killed it.
    wait_for("the trial's setsid() child gone", lambda: not _alive(child))
    line = next(x for x in (folder / "cgroup").read_text().splitlines() if x.startswith("0::"))
    in_cgroup = mode == "cgroup" or (mode == "auto" and _cgroups_here())
    if in_cgroup:
        # A cgroup of its own, <mount>/hpod/<state dir's id>/<study>.<trial>.<run>, gone now.
        assert "/hpod/" in line
        assert line.endswith(f"/{sid}.0.1")
        from hpod.daemon.containment import cgroup2_mount

        mounted = cgroup2_mount()
        assert mounted is not None
        path = mounted[0] / line[3:].lstrip("/")
        wait_for("the run's cgroup removed", lambda: not path.exists())
    else:
        assert "/hpod/" not in line
    # A word the setting does not know is refused with its key path, before anything starts.
    config = d.root / "bad.toml"
    config.write_text('containment = "cgroups"\n')
    bad = subprocess.run(
        [sys.executable, "-m", "hpod", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=d.env,
    )
    assert bad.returncode == ErrorCode.INVALID_PARAMS.exit_status, bad.stderr
    assert "containment" in bad.stderr
    assert "did you mean 'cgroup'" in bad.stderr
    # A clean stop leaves no cgroup behind: the daemon's subtree goes with its last run's.
    assert d.stop() == 0
    if in_cgroup:
        assert not path.parent.exists()


@e2e
def test_setting_gpu_allowed(daemon_factory: Any) -> None:
    layout = [fake_nvml.gpu(i) for i in range(3)]
    d = serve(daemon_factory, gpus=layout, gpu={"allowed": ["1"]})
    view = call(d.socket, "gpus")["gpus"]
    assert [g["allowed"] for g in view] == [False, True, False]
    assert gpu_view(d) == [False, True, False]
    sid = submit(d, ENV_TRIAL, gpus=1)
    assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]
    seen = json.loads((trial_dir(d, sid) / "env.json").read_text())
    assert seen["CUDA_VISIBLE_DEVICES"] == layout[1]["uuid"]


@e2e
@pytest.mark.parametrize(
    ("policy", "usable"),
    [("avoid", [True, False, False]), ("share", [True, True, False]), ("ignore", [True] * 3)],
)
def test_setting_gpu_busy_policy(daemon_factory: Any, policy: str, usable: list[bool]) -> None:
    layout = [
        fake_nvml.gpu(0),
        fake_nvml.gpu(1, used_mib=2048, pids=(999999,)),  # someone else's, memory to spare
        fake_nvml.gpu(2, used_mib=16000),  # 384 MiB free: under min_free_memory_mib
    ]
    d = serve(daemon_factory, gpus=layout, gpu={"busy_policy": policy})
    assert gpu_view(d) == usable
    assert call(d.socket, "gpus")["busy_policy"] == policy


@e2e
@pytest.mark.parametrize(("floor", "usable"), [(1024, True), (2048, False)])
def test_setting_gpu_min_free_memory_mib(daemon_factory: Any, floor: int, usable: bool) -> None:
    layout = [fake_nvml.gpu(0, used_mib=15000)]  # 1384 MiB free
    d = serve(daemon_factory, gpus=layout, gpu={"min_free_memory_mib": floor})
    assert gpu_view(d) == [usable]


@e2e
def test_setting_gpu_refresh_seconds(daemon_factory: Any) -> None:
    # Two daemons, each with a fake NVML of one free GPU; a foreign process arrives on both.
    # The one polling every 0.1s sees it; the one polling every hour still shows the GPU free.
    fast = serve(daemon_factory, gpus=[fake_nvml.gpu(0)], gpu={"refresh_seconds": 0.1})
    slow = serve(daemon_factory, gpus=[fake_nvml.gpu(0)], gpu={"refresh_seconds": "1h"})
    assert gpu_view(fast) == gpu_view(slow) == [True]
    busy = {"gpus": [fake_nvml.gpu(0, used_mib=2048, pids=(999999,))]}
    for d in (fast, slow):
        Path(d.env["HPOD_FAKE_NVML"]).write_text(json.dumps(busy))
    wait_for("the fast daemon saw the foreign process", lambda: gpu_view(fast) == [False])
    assert gpu_view(slow) == [True]


# -- READY=1 and SIGTERM -------------------------------------------------------------------------


def datagrams(sock: socket.socket) -> list[str]:
    """What the daemon sent to $NOTIFY_SOCKET and the test has not read yet."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.extend(sock.recv(4096).decode().split("\n"))
    except BlockingIOError:
        return out


@e2e
@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_the_moment_ready_arrives_is_a_graceful_stop(
    daemon_factory: Any, attempt: int
) -> None:
    # systemd may stop a unit as soon as it says READY=1: the SIGTERM handler must already be
    # there, or the default action kills the daemon (-15) without a word.
    d: DaemonHandle = daemon_factory(slots=1)  # returns the instant READY=1 arrives
    assert d.proc is not None
    assert d.notify is not None
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(timeout=20)
    said = datagrams(d.notify)
    rc = d.stop()
    assert rc == 0, f"exit {rc}:\n{d.output()}"
    assert "STOPPING=1" in said
    assert "stopped" in {e["event"] for e in events(d)}


# -- the trials' TCP endpoint (docs/slurm.md) -----------------------------------------------------

# A trial that reports over the TCP endpoint named in its spec's env (TEST_TRIAL_TCP), then says
# which address the daemon's env gave it.
TCP_TRIAL = """
import json, os
from hpod import trial
os.environ["HPOD_SOCKET"] = os.environ["TEST_TRIAL_TCP"]
if os.environ.get("TEST_TLS_CA"):
    os.environ["HPOD_TLS_CA"] = os.environ["TEST_TLS_CA"]
trial.report(step=1, loss=1.0)
with open(os.path.join(os.environ["HPOD_TRIAL_DIR"], "tcp.json"), "w") as f:
    json.dump({"reported_on": os.environ["HPOD_SOCKET"]}, f)
"""


def _tcp_bound(d: DaemonHandle) -> tuple[str, str]:
    line = next(e for e in events(d) if e["event"] == "trial_tcp")
    return str(line["bound"]), str(line["advertised"])


def _tcp_call(address: str, method: str, params: dict[str, Any], cafile: str | None = None) -> Any:
    with wire.SyncConnection(address, client="test", timeout=10, cafile=cafile) as conn:
        return conn.call(method, params)


def _submit_tcp(d: DaemonHandle, address: str, ca: Path | None = None) -> str:
    env = f'\n[env]\nTEST_TRIAL_TCP = "{address}"\n'
    if ca is not None:
        env += f'TEST_TLS_CA = "{ca}"\n'
    text = spec("one", steps=3, limits="max_trials = 1", script="one.py") + env
    path = d.write_spec("one", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "one.py").write_text(TCP_TRIAL)
    res = d.ctl("submit", str(path), "--wait", "--json")
    sid = str(json.loads(res.stdout)["study"])
    assert res.returncode == 0, d.ctl("logs", sid, "0").stdout
    return sid


@e2e
def test_setting_trial_tcp(daemon_factory: Any) -> None:
    d = serve(daemon_factory, trial_tcp="127.0.0.1:0")
    bound, _ = _tcp_bound(d)
    address = f"tcp://{bound}"
    sid = _submit_tcp(d, address)
    # The trial's report went over TCP, authenticated by its token, and counted.
    assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]
    assert json.loads((trial_dir(d, sid) / "tcp.json").read_text())["reported_on"] == address
    # Only trial methods: control stays on the Unix socket.
    for method in ("ping", "studies", "stop", "submit"):
        with pytest.raises(HpodError) as caught:
            _tcp_call(address, method, {"study": sid})
        assert caught.value.code is ErrorCode.METHOD_NOT_FOUND
    with pytest.raises(HpodError) as caught:
        _tcp_call(
            address,
            "trial.report",
            {"study": sid, "trial": 0, "token": "0" * 32, "metrics": {"step": 2, "loss": 0.5}},
        )
    assert caught.value.code is ErrorCode.BAD_TOKEN
    assert call(d.socket, "ping")["pong"] is True


@e2e
def test_setting_trial_tcp_advertise(daemon_factory: Any) -> None:
    d = serve(daemon_factory, trial_tcp="0.0.0.0:0", trial_tcp_advertise="trials.example:7787")
    _, advertised = _tcp_bound(d)
    # What a Slurm job's HPOD_SOCKET says (tests/e2e/test_slurm.py runs one).
    assert advertised == "tcp://trials.example:7787"
    e = serve(daemon_factory, trial_tcp="0.0.0.0:0")
    bound, advertised = _tcp_bound(e)
    # A wildcard host is replaced by this machine's name.
    assert advertised == f"tcp://{socket.getfqdn()}:{bound.rpartition(':')[2]}"


def _certificate(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@e2e
def test_setting_trial_tls_cert(daemon_factory: Any) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hpod"))
    try:
        cert, key = _certificate(folder)
        d = serve(
            daemon_factory,
            trial_tcp="127.0.0.1:0",
            trial_tls_cert=str(cert),
            trial_tls_key=str(key),
        )
        bound, advertised = _tcp_bound(d)
        assert advertised == f"tls://{bound}"
        # The trial checks the daemon against the certificate.
        sid = _submit_tcp(d, f"tls://{bound}", cert)
        assert [t["state"] for t in d.ctl_json("trials", sid)] == ["completed"]
        # Plain TCP is not spoken there, and a client that does not trust the certificate
        # does not get through.
        with pytest.raises((HpodError, OSError)):
            _tcp_call(f"tcp://{bound}", "trial.oom", {})
        with pytest.raises(HpodError) as untrusted:
            _tcp_call(f"tls://{bound}", "trial.oom", {})
        assert "not trusted" in untrusted.value.message
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@e2e
def test_setting_trial_tls_key(daemon_factory: Any) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hpod"))
    try:
        cert, key = _certificate(folder)
        d: DaemonHandle = daemon_factory(start=False)
        # A certificate without its key (or the key without TLS's endpoint) does not start.
        for text in (
            f'trial_tcp = "127.0.0.1:0"\ntrial_tls_cert = "{cert}"\n',
            f'trial_tls_key = "{key}"\ntrial_tls_cert = "{cert}"\n',
            f'trial_tcp = "127.0.0.1:0"\ntrial_tls_cert = "{cert}"\n'
            f'trial_tls_key = "{folder / "none.pem"}"\n',
        ):
            config = d.root / "bad.toml"
            config.write_text(text)
            bad = subprocess.run(
                [sys.executable, "-m", "hpod", "serve", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert bad.returncode != 0
            assert "trial_tls_key" in bad.stderr or "trial_tcp" in bad.stderr, bad.stderr
        # With both, the endpoint is up and answers a trusting client's hello.
        e = serve(
            daemon_factory,
            trial_tcp="127.0.0.1:0",
            trial_tls_cert=str(cert),
            trial_tls_key=str(key),
        )
        bound, _ = _tcp_bound(e)
        with pytest.raises(HpodError) as caught:
            _tcp_call(
                f"tls://{bound}",
                "trial.oom",
                {"study": "x", "trial": 0, "token": "t"},
                cafile=str(cert),
            )
        assert caught.value.code in (ErrorCode.BAD_TOKEN, ErrorCode.NOT_FOUND)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- every key has its test ----------------------------------------------------------------------


def _etc_keys() -> list[str]:
    raw = tomllib.loads(uncommented_etc())
    gpu = raw.pop("gpu")
    return [*raw, *(f"gpu_{key}" for key in gpu)]


# Settings whose test lives beside the feature it switches: named here so none is forgotten.
_ELSEWHERE = {"read_access": "tests.e2e.test_read_access", "report_plots": "tests.e2e.test_curves"}


@pytest.mark.parametrize("key", _etc_keys())
def test_every_key_has_a_test(key: str) -> None:
    import importlib

    where = globals() if key not in _ELSEWHERE else vars(importlib.import_module(_ELSEWHERE[key]))
    assert callable(where.get(f"test_setting_{key}")), f"no test_setting_{key} for {key}"
