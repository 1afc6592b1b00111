"""One daemon per state folder: a second `hpod serve` on it is refused, naming the first's pid.

Two daemons on one state dir each resumed the same interrupted trial, and two processes trained
in one trial folder (issue 12, finding 5).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hpod.errors import ErrorCode


def test_a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_first_ones_pid(
    daemon: Any,
) -> None:
    other_socket = str(Path(tempfile.mkdtemp(prefix="hpod")) / "s2")
    command = [
        sys.executable,
        "-m",
        "hpod",
        "serve",
        "--socket",
        other_socket,
        "--state-dir",
        str(daemon.state_dir),
        "--cpu-slots",
        "1",
    ]
    try:
        second = subprocess.run(command, env=daemon.env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            "the second daemon was still serving the same state dir after 20 s"
        ) from exc
    assert second.returncode == ErrorCode.BAD_STATE.exit_status, second.stderr
    first_pid = daemon.proc.pid
    assert f"another hpod (pid {first_pid}) is serving state dir {daemon.state_dir}" in (
        second.stderr
    ), second.stderr
    assert "stop it first" in second.stderr
    assert "Traceback" not in second.stderr
    assert not Path(other_socket).exists()  # it never listened
    # The first one never noticed.
    assert daemon.proc.poll() is None
    assert daemon.ctl_json("ping")["pong"] is True


def test_the_state_dir_is_free_again_once_its_daemon_has_stopped(daemon: Any) -> None:
    assert daemon.stop() == 0
    daemon.start()  # the same state dir, the lock taken anew
    assert daemon.ctl_json("ping")["pong"] is True
