"""`hpodctl top` in a real terminal (tmux) against a real daemon: the running trials and the best
appear, they change when a trial reports, and q and Ctrl-C quit and give the terminal back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

REPO = Path(__file__).resolve().parents[2]

# Each trial reports step 1 at once, then each later step once the test creates go<step> in the
# study's folder: the test says when a trial reports. loss = 1/step + trial/10.
STEPPER = """
import time
from pathlib import Path
from hpod import trial

for step in range(1, trial.max_resource() + 1):
    while step > 1 and not Path(f"go{step}").exists():
        time.sleep(0.02)
    trial.report(step=step, loss=1.0 / step + trial.trial_id() / 10)
"""

SPEC = """
name = "watched"
command = ["python", "stepper.py"]
workdir = "."

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = { param_type = "uniform", range = [0.0, 1.0] }

[scheduler]
type = "fifo"
max_resource = 3

[limits]
max_trials = 2
max_concurrent = 2
"""


class Pane:
    """One tmux session of its own (its own server socket) running a command at 80x30."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        # The server's socket in a folder of the test's own, removed with it.
        self.folder = tempfile.mkdtemp(prefix="hpod")
        self.server = os.path.join(self.folder, "tmux")
        self.env = env
        # The command's exit status goes to a file of the test's: tmux's own pane_dead_status is
        # empty where the server cannot collect it (a parent that ignores SIGCHLD).
        self.status_file = os.path.join(self.folder, "status")
        line = " ".join(_quote(a) for a in command)
        line = f"{line}; echo $? > {_quote(self.status_file + '.tmp')}"
        line += f" && mv {_quote(self.status_file + '.tmp')} {_quote(self.status_file)}"
        self.tmux("new-session", "-d", "-s", "t", "-x", "80", "-y", "30", line)
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        res = subprocess.run(
            ["tmux", "-S", self.server, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return res.stdout

    def screen(self, history: bool = False) -> str:
        """The pane's rows (with ``history``, those scrolled off the top too)."""
        more = ["-S", "-100"] if history else []
        return self.tmux("capture-pane", "-p", "-t", "t", *more)

    def wait_for(self, what: str, ok: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if ok(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the pane never showed {what}:\n{text}")
            time.sleep(0.05)

    def exit_status(self, timeout: float = 30.0) -> int:
        """Wait for the command to end; its exit status."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.status_file):
            if time.monotonic() > deadline:
                raise AssertionError(f"hpodctl top never ended:\n{self.screen()}")
            time.sleep(0.05)
        with open(self.status_file) as f:
            return int(f.read().strip())

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.server, "kill-server"], env=self.env, timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


@pytest.fixture
def hpodctl(daemon: Any) -> Iterator[Callable[..., Pane]]:
    """Start `hpodctl ARGS...` against the daemon in a tmux pane of its own."""
    panes: list[Pane] = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}
    env.pop("TMUX", None)

    def start(*args: str) -> Pane:
        pane = Pane(
            [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", daemon.socket, *args],
            env,
        )
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.close()


@pytest.fixture
def top(hpodctl: Callable[..., Pane]) -> Callable[..., Pane]:
    return lambda *args: hpodctl("top", *args)


def _row(screen: str, study: str, trial: int) -> list[str] | None:
    for line in screen.splitlines():
        cells = line.split()
        if cells[:2] == [study, str(trial)]:
            return cells
    return None


def test_top_shows_the_running_trials_and_the_best_and_follows_the_reports(
    daemon: Any, top: Callable[..., Pane]
) -> None:
    folder = daemon.write_spec("watched", SPEC).parent
    (folder / "stepper.py").write_text(STEPPER)
    sid = daemon.ctl_json("submit", str(folder / "study.toml"))["study"]
    pane = top()

    def at_step(step: int) -> Callable[[str], bool]:
        def ok(screen: str) -> bool:
            rows = [_row(screen, sid, t) for t in (0, 1)]
            return all(r is not None and r[2] == f"{step}/3" for r in rows)

        return ok

    screen = pane.wait_for("both trials at step 1", at_step(1))
    heads = ["STUDY", "TRIAL", "RESOURCE", "RATE", "OBJECTIVE", "DEVICE", "CONFIG"]
    assert heads in [line.split() for line in screen.splitlines()], screen
    row0, row1 = _row(screen, sid, 0), _row(screen, sid, 1)
    assert row0 is not None
    assert row1 is not None
    assert (row0[4], row0[5], row1[4]) == ("1", "cpu", "1.1"), screen
    assert "1 (trial 0)" in screen, screen  # the best, in the study's row
    assert all(len(line) <= 80 for line in screen.splitlines())

    # The daemon sends at most one trial_reported a trial every 0.5 s (docs/python-api.md):
    # step 2 comes after that window, so that its event, and with it a rate, is sent.
    lines = daemon.ctl("events", sid, "--json", check=True).stdout.splitlines()
    reported = [e["at"] for e in map(json.loads, lines) if e["kind"] == "trial_reported"]
    while time.time() < max(reported) + 0.6:
        time.sleep(0.05)
    (folder / "go2").touch()  # both trials report step 2
    # The study's best is the mean of its reports (1, 1/2: docs/answer.md); a running trial's
    # OBJECTIVE, its last report.
    screen = pane.wait_for(
        "step 2 and the new best", lambda s: at_step(2)(s) and "0.75 (trial 0)" in s
    )
    row1 = _row(screen, sid, 1)
    assert row1 is not None
    assert row1[4] == "0.6", screen
    assert row1[3].endswith(("/s", "/m", "/h")), screen  # a rate, from two reports

    pane.tmux("send-keys", "-t", "t", "q")
    assert pane.exit_status() == 0
    after = pane.screen()
    assert "Traceback" not in after
    assert "RESOURCE" not in after  # the terminal's own screen is back
    (folder / "go3").touch()
    assert daemon.ctl_json("wait", sid, timeout=60)["state"] == "completed"


def test_ctrl_c_quits_top_cleanly(daemon: Any, top: Callable[..., Pane]) -> None:
    pane = top()
    pane.wait_for("the head line", lambda s: "(q quits)" in s and "no studies" in s)
    pane.tmux("send-keys", "-t", "t", "C-c")
    assert pane.exit_status() == 0
    assert "Traceback" not in pane.screen()


def test_top_once_and_json_without_a_terminal(daemon: Any) -> None:
    folder = daemon.write_spec("watched", SPEC).parent
    (folder / "stepper.py").write_text(STEPPER)
    sid = daemon.ctl_json("submit", str(folder / "study.toml"))["study"]
    deadline = time.monotonic() + 60
    while True:
        snapshot = daemon.ctl_json("top")
        if len(snapshot["running"]) == 2 and all(t["resource"] == 1 for t in snapshot["running"]):
            break
        assert time.monotonic() < deadline, snapshot
        time.sleep(0.05)
    assert snapshot["studies"][0]["best"] == 1.0
    text = daemon.ctl("top", check=True).stdout  # stdout is a pipe: one frame, printed
    assert _row(text, sid, 0) is not None
    (folder / "go2").touch()
    (folder / "go3").touch()
    assert daemon.ctl_json("wait", sid, timeout=60)["state"] == "completed"


def test_wait_on_a_terminal_shows_one_line_that_moves(
    daemon: Any, hpodctl: Callable[..., Pane]
) -> None:
    folder = daemon.write_spec("watched", SPEC).parent
    (folder / "stepper.py").write_text(STEPPER)
    sid = daemon.ctl_json("submit", str(folder / "study.toml"))["study"]
    pane = hpodctl("wait", sid)
    pane.wait_for("the progress line", lambda s: f"{sid}: 0/2 trials done, 2 running" in s)
    (folder / "go2").touch()
    (folder / "go3").touch()
    assert pane.exit_status() == 0
    # With its history: tmux's "Pane is dead" line may push the first row off the top.
    screen = pane.screen(history=True)
    assert screen.startswith(f"study     {sid}\n"), screen
    assert "trials done" not in screen  # the line was wiped before the summary
    # The mean of trial 0's reports 1, 1/2, 1/3 (docs/answer.md).
    assert "best      0.611111 (trial 0)" in screen, screen
