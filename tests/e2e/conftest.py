"""A real daemon process for end-to-end tests, ready when it says READY=1 over $NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
READY_TIMEOUT = 30.0


class DaemonHandle:
    """One `hpod serve` process; may be stopped and started again on the same state folder."""

    def __init__(self, root: Path, slots: int) -> None:
        self.root = root
        self.socket = str(root / "s")
        self.state_dir = root / "state"
        self.slots = slots
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        bin_dir = str(Path(sys.executable).parent)
        self.env = dict(os.environ)
        # Trials run `python`: make it this interpreter, the one with hpod installed.
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.env.pop("HPOD_SOCKET", None)
        # What `start` runs before its own arguments; a test may replace it (a config file in
        # place of the flags, `taskset` in front).
        self.command = [
            sys.executable,
            "-m",
            "hpod",
            "serve",
            "--socket",
            self.socket,
            "--state-dir",
            str(self.state_dir),
            "--cpu-slots",
            str(slots),
            "--log-format",
            "json",
        ]
        # $NOTIFY_SOCKET of the running daemon, open until `stop`: what it says after READY=1.
        self.notify: socket.socket | None = None

    def start(self, *extra: str) -> None:
        if self.notify is not None:  # started again without `stop`
            self.notify.close()
            self.notify = None
        notify_path = str(self.root / f"n{self.starts}")
        self.starts += 1
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ready.bind(notify_path)
        ready.settimeout(READY_TIMEOUT)
        env = dict(self.env, NOTIFY_SOCKET=notify_path)
        self.log = open(self.root / f"daemon{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.command, *extra],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            while True:
                msg = ready.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    self.notify = ready
                    return
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon never said READY=1:\n{self.output()}") from None
        finally:
            if self.notify is not ready:
                ready.close()

    def output(self) -> str:
        return (self.root / f"daemon{self.starts}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self.proc = None
        return rc

    def ctl(
        self, *args: str, check: bool = False, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"hpodctl {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
            )
        return res

    def ctl_json(self, *args: str, timeout: float = 90.0) -> Any:
        res = self.ctl(*args, "--json", check=True, timeout=timeout)
        return json.loads(res.stdout)

    def write_spec(self, name: str, text: str) -> Path:
        """A spec file in a folder of its own, with the test trial beside it."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        shutil.copy(HERE / "trial_quad.py", folder / "trial_quad.py")
        path = folder / "study.toml"
        path.write_text(text)
        return path


@pytest.fixture
def daemon_factory() -> Iterator[Any]:
    handles: list[DaemonHandle] = []
    roots: list[str] = []

    def make(slots: int = 2, start: bool = True) -> DaemonHandle:
        root = tempfile.mkdtemp(prefix="hpod")
        roots.append(root)
        handle = DaemonHandle(Path(root), slots)
        handles.append(handle)
        if start:
            handle.start()
        return handle

    yield make
    for handle in handles:
        if handle.proc is not None:
            rc = handle.stop()
            assert rc == 0, f"daemon exited {rc} at teardown:\n{handle.output()}"
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonHandle:
    handle: DaemonHandle = daemon_factory()
    return handle


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """A real single-node Slurm (munged, slurmctld, slurmd) on localhost for the session, as
    tests/slurm_cluster.py starts it; skipped, with the reason, where it cannot be."""
    from tests import slurm_cluster

    why = slurm_cluster.why_not()
    if why is not None:
        pytest.skip(why)
    cluster = slurm_cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
