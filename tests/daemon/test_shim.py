"""The per-trial shim alone (hpod/daemon/shim.py), run as the daemon runs it: a real process,
a real pipe for its one line, a real status file."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpod.daemon.runner import shim_command


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Shim:
    proc: subprocess.Popen[bytes]
    line: dict[str, Any]
    status_path: Path
    folder: Path

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_path.read_text())

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    path.rmdir()


def start_shim(
    folder: Path, code: str, *, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> Shim:
    """The shim with ``env`` as its own environment (the trial inherits it: no "env" argument)."""
    read_fd, write_fd = os.pipe()
    args_read, args_write = os.pipe()
    status_path = folder / "status.json"
    args = {
        "argv": argv if argv is not None else [sys.executable, "-c", textwrap.dedent(code)],
        "cwd": str(folder),
        "status_path": str(status_path),
        "cgroup": None,
    }
    os.write(args_write, json.dumps(args).encode())  # well under a pipe's buffer
    os.close(args_write)
    try:
        proc = subprocess.Popen(
            shim_command("t.0.1", args_read, write_fd),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(args_read, write_fd),
            env=env if env is not None else dict(os.environ),
        )
    finally:
        os.close(write_fd)
        os.close(args_read)
    try:
        ready, _, _ = select.select([read_fd], [], [], 20.0)
        assert ready, "the shim said nothing in 20 s"
        data = b""
        while chunk := os.read(read_fd, 4096):
            data += chunk
    finally:
        os.close(read_fd)
    return Shim(proc, json.loads(data) if data else {}, status_path, folder)


def test_the_exit_status_is_written_and_the_shim_exits_0(folder: Path) -> None:
    shim = start_shim(folder, "import sys; sys.exit(3)")
    assert shim.line["trial_pid"] > 0
    assert shim.line["trial_pid"] != shim.proc.pid
    assert isinstance(shim.line["trial_start_ticks"], int)
    assert shim.wait() == 0
    status = shim.status()
    assert status["returncode"] == 3
    assert abs(status["ended_at"] - time.time()) < 30
    assert (shim.status_path.stat().st_mode & 0o777) == 0o600
    assert not Path(f"{shim.status_path}.tmp").exists()


def test_a_shim_whose_daemon_died_before_sending_its_arguments_starts_nothing(
    folder: Path,
) -> None:
    """The daemon stores the shim's identity, then sends what to start: killed in between, it
    leaves a shim that reads the end of its pipe and exits, so the restart's resumed run never
    races a copy of itself (docs/live-restore.md)."""
    read_fd, write_fd = os.pipe()
    args_read, args_write = os.pipe()
    os.close(args_write)  # the daemon's end, closed by its death with nothing written
    try:
        proc = subprocess.Popen(
            shim_command("t.0.1", args_read, write_fd),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(args_read, write_fd),
        )
    finally:
        os.close(write_fd)
        os.close(args_read)
    try:
        _, err = proc.communicate(timeout=20)
        said = os.read(read_fd, 4096)
    finally:
        os.close(read_fd)
    assert proc.returncode == 0
    assert err == b""  # no traceback in the trial's log
    assert said == b""  # no trial pid: nothing started
    assert list(folder.iterdir()) == []


def test_a_trial_killed_by_a_signal_is_negative(folder: Path) -> None:
    shim = start_shim(folder, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert shim.wait() == 0
    assert shim.status()["returncode"] == -signal.SIGKILL


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_to_the_trials_group(folder: Path, sig: int) -> None:
    ready = folder / "ready"
    code = f"""
    import os, signal, subprocess, sys, time
    # A member of the trial's group besides the leader: it hears the signal too.
    helper = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time; signal.signal({int(sig)}, lambda *a: sys.exit(0)); "
        "open({str(folder / "helper-up")!r}, 'w').close(); time.sleep(60)"])
    while not os.path.exists({str(folder / "helper-up")!r}):
        time.sleep(0.01)
    def on(signum, frame):
        helper.wait()
        sys.exit(40 + signum)
    signal.signal({int(sig)}, on)
    os.rename(open({str(ready)!r} + ".tmp", "w").name, {str(ready)!r})
    while True:
        signal.pause()
    """
    shim = start_shim(folder, code)
    wait_until(ready.exists, what="the trial's handler")
    shim.proc.send_signal(sig)
    assert shim.wait() == 0
    assert shim.status()["returncode"] == 40 + sig


def test_sigusr1_kills_the_group_and_every_descendant(folder: Path) -> None:
    pids = folder / "pids"
    code = f"""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # One in the group that ignores SIGTERM, one that left it for a session of its own.
    stay = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    away = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)
    with open({str(pids)!r} + ".tmp", "w") as f:
        f.write(f"{{stay.pid}} {{away.pid}}")
    os.rename({str(pids)!r} + ".tmp", {str(pids)!r})
    time.sleep(120)
    """
    shim = start_shim(folder, code)
    wait_until(pids.exists, what="the trial's children")
    stay, away = (int(p) for p in pids.read_text().split())
    shim.proc.send_signal(signal.SIGTERM)  # ignored by all of them
    time.sleep(0.2)  # time to act on it, were it forwarded wrongly: nothing must die of it
    for pid in (stay, away, shim.line["trial_pid"]):
        assert is_alive(pid)
    shim.proc.send_signal(signal.SIGUSR1)
    assert shim.wait() == 0
    assert shim.status()["returncode"] == -signal.SIGKILL
    for pid in (stay, away, shim.line["trial_pid"]):
        assert not is_alive(pid)


@pytest.mark.parametrize("escape", ["setsid", "setpgid", "double_fork"])
def test_what_the_trial_leaves_is_killed_when_it_exits(folder: Path, escape: str) -> None:
    pid_file = folder / "child"
    leave = {
        "setsid": "os.setsid()",
        "setpgid": "os.setpgid(0, 0)",
        # A classic daemon: fork, setsid, fork again; the middle one exits at once.
        "double_fork": "os.setsid()\nif os.fork(): os._exit(0)",
    }[escape]
    child = f"""
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
{leave}
with open({str(pid_file)!r} + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
time.sleep(120)
"""
    code = f"""
    import os, subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", {child!r}])
    while not os.path.exists({str(pid_file)!r}):
        time.sleep(0.01)
    """
    shim = start_shim(folder, code)
    assert shim.wait() == 0
    assert shim.status()["returncode"] == 0
    left = int(pid_file.read_text())
    assert not is_alive(left)


def test_a_command_that_cannot_start_is_one_error_line(folder: Path) -> None:
    shim = start_shim(folder, "", argv=[str(folder / "no-such-program")])
    assert shim.line == {
        "errno": errno.ENOENT,
        "strerror": os.strerror(errno.ENOENT),
        "exc": "FileNotFoundError",
    }
    assert shim.wait() == 1
    assert not shim.status_path.exists()


def test_the_users_pythonpath_never_reaches_the_shim(folder: Path) -> None:
    # A module on PYTHONPATH that shadows one the shim imports, and a sitecustomize:
    # the shim runs with -I -S, so neither is imported; the trial itself still sees PYTHONPATH.
    evil = folder / "evil"
    evil.mkdir()
    (evil / "json.py").write_text("raise SystemExit('shim imported the user json')\n")
    (evil / "sitecustomize.py").write_text("raise SystemExit('shim ran sitecustomize')\n")
    seen = folder / "seen"
    code = f"""
    import os
    open({str(seen)!r}, "w").write(os.environ.get("PYTHONPATH", ""))
    """
    env = {**os.environ, "PYTHONPATH": str(evil)}
    # The trial is started with -I too, or it would import the evil json itself.
    argv = [sys.executable, "-I", "-c", textwrap.dedent(code)]
    shim = start_shim(folder, "", env=env, argv=argv)
    assert "trial_pid" in shim.line
    assert shim.wait() == 0
    assert shim.status()["returncode"] == 0
    assert seen.read_text() == str(evil)


def test_the_shim_imports_only_what_it_needs() -> None:
    # Lean on purpose (it starts once per run) and nothing of hpod (it runs as a script,
    # possibly as root, with a user's environment): a few modules of the standard library.
    import ast

    import hpod.daemon.shim as shim_module

    tree = ast.parse(Path(shim_module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    # json only for arguments written by hand (the daemon sends marshal); no subprocess, no
    # signal (its enum classes alone were a third of the shim's start).
    allowed = {"__future__", "_signal", "ctypes", "json", "marshal", "os", "sys", "time"}
    # typing (and signal's names) only for the type checker, under `if TYPE_CHECKING:`, which
    # is False when it runs.
    assert names - allowed == {"typing", "collections.abc", "signal"}
    checked = [n for n in tree.body if isinstance(n, ast.If)]
    assert any(
        isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
        for n in checked
        if any(isinstance(b, ast.ImportFrom) and b.module == "typing" for b in n.body)
    )


@pytest.mark.anyio
async def test_the_trials_environment_and_token_reach_the_trial_only(folder: Path) -> None:
    # The shim may be root: a submitter's LD_LIBRARY_PATH or LD_PRELOAD in its environment would
    # have root's interpreter load that user's libraries, and its command line is world-readable.
    # The trial's environment reaches the trial, not the shim's environment or command line.
    import anyio

    from hpod.daemon.runner import TrialLaunch, TrialProcess

    ready = folder / "ready"
    code = f"import os, time; os.rename(open({str(ready)!r} + '.t', 'w').name, {str(ready)!r}); "
    code += "time.sleep(60)"
    tdir = folder / "trials" / "0"
    launch = TrialLaunch(
        study_id="e1",
        trial_id=0,
        command=(sys.executable, "-c", code),
        config={"lr": 0.5},
        workdir=folder,
        trial_dir=tdir,
        checkpoint_dir=tdir / "checkpoint",
        socket_path=str(folder / "s"),
        token="tok-SECRET-1234",
        resume_from=0.0,
        max_resource=1.0,
        extra_env={"STUDY_VAR": "x"},
    )
    base = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": str(folder / "evil-libs")}
    proc = await TrialProcess.start(launch, base_env=base)
    try:
        with anyio.fail_after(20):
            while not ready.exists():
                await anyio.sleep(0.01)
        shim_env = Path(f"/proc/{proc.pid}/environ").read_bytes()
        trial_env = Path(f"/proc/{proc.trial_pid}/environ").read_bytes()
        shim_cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for secret in (b"tok-SECRET-1234", b"LD_LIBRARY_PATH", b"STUDY_VAR", b"HPOD_TOKEN"):
            assert secret in trial_env
            assert secret not in shim_env
            assert secret not in shim_cmdline
    finally:
        await proc.stop(0.1)
