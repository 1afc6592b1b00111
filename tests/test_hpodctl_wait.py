"""`hpodctl wait` and `submit --wait`: the progress line on a terminal, plain lines elsewhere,
`--timeout`'s message and exit status, and what Ctrl-C says (against tests/wire_server.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod.cli import waiting
from hpod.cli.hpodctl import main
from hpod.errors import EXIT_WAIT_TIMED_OUT
from tests.wire_server import WireServer

pytestmark = pytest.mark.usefixtures("clean_trial_env")

REPO = Path(__file__).resolve().parent.parent


def _detail(done: int, *, state: str = "running") -> dict[str, Any]:
    return {
        "study": "s1",
        "name": "quad",
        "state": state,
        "owner": 0,
        "created": 0.0,
        "ended": None,
        "end_reason": None,
        "trials": {"completed": done, "running": 5 - done} if done < 5 else {"completed": 5},
        "total_trials": 5,
        "max_trials": 5,
        "best": {"trial": 0, "objective": 1.0 / (done + 1)} if done else None,
        "elapsed": 10.0 * done,
        "limits_detail": {"max_trials": {"limit": 5.0, "used": 5.0, "share": 1.0}},
        "deadline": None,
    }


class Study:
    """A study that finishes a trial each time its detail is read, up to three; the daemon's
    `wait` answers once the third has been read twice (so shown), or at its timeout."""

    def __init__(self) -> None:
        self.reads = 0
        self.done = threading.Event()
        self.release = threading.Event()

    def study(self, params: dict[str, Any]) -> Any:
        self.reads += 1
        if self.reads >= 4:
            self.done.set()
        return _detail(min(self.reads, 3))

    def wait(self, params: dict[str, Any]) -> Any:
        timeout = params.get("timeout")
        if timeout is not None:
            self.release.wait(timeout)
            return _detail(1)
        self.done.wait(30)
        return _detail(5, state="completed")

    def events(self, params: dict[str, Any]) -> Any:
        self.release.wait(min(float(params.get("timeout", 0)), 0.1))
        return {"events": [], "cursor": params.get("after", 0)}


@pytest.fixture
def study() -> Iterator[Study]:
    yield (s := Study())
    s.done.set()
    s.release.set()


@pytest.fixture
def server(study: Study) -> Iterator[WireServer]:
    methods = {"study": study.study, "wait": study.wait, "events": study.events}
    with WireServer(methods) as srv:
        yield srv
        study.done.set()  # no handler left waiting: the server joins them on close
        study.release.set()


def test_a_terminal_gets_one_line_redrawn(
    server: WireServer, study: Study, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setattr(waiting, "is_tty", lambda out: True)
    monkeypatch.setattr(waiting, "TTY_EVERY_S", 0.02)
    assert main(["--socket", server.path, "wait", "s1"]) == 0
    captured = capsys.readouterr()
    assert "\n" not in captured.err  # one line, redrawn in place
    frames = captured.err.split("\r\x1b[K")
    assert frames[-1] == ""  # wiped before the summary
    assert "s1: 1/5 trials done, 4 running, best 0.5 (trial 0), 10s elapsed, ~40s left" in frames
    assert any(f.startswith("s1: 3/5 trials done, 2 running, best 0.25 (trial 0)") for f in frames)
    assert "state     completed" in captured.out


def test_elsewhere_a_plain_line_each_time_it_moves(
    server: WireServer, study: Study, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setattr(waiting, "is_tty", lambda out: False)
    monkeypatch.setattr(waiting, "PLAIN_EVERY_S", 0.02)
    assert main(["--socket", server.path, "wait", "s1"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert lines[0] == "s1: 1/5 trials done, 4 running, best 0.5 (trial 0), 10s elapsed, ~40s left"
    assert lines[1].startswith("s1: 2/5 trials done")
    assert lines[2].startswith("s1: 3/5 trials done")
    assert len(lines) == 3  # the same state twice is not a line again


def test_wait_timeout_says_it_timed_out(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", server.path, "wait", "s1", "--timeout", "0.2", "--json"]) == 19
    assert EXIT_WAIT_TIMED_OUT == 19
    err = capsys.readouterr().err
    assert "hpodctl: timed out after 0s: study s1 is still running" in err
    assert "`hpodctl wait s1` waits again" in err


@pytest.mark.parametrize(
    ("detail", "left"),
    [
        (_detail(0), None),  # no pace yet, no time limit
        (_detail(2), "~30s"),  # 2 of 5 in 20 s: 3 more in about 30 s
        (
            {
                **_detail(2),
                "limits_detail": {"optimization_time": {"limit": 25.0, "used": 20.0, "share": 0.8}},
            },
            "5s",
        ),  # the time limit is nearer than the pace says
        ({**_detail(2), "deadline": 1000.0 + 12}, "12s"),
    ],
)
def test_time_left(detail: dict[str, Any], left: str | None) -> None:
    done = sum(v for k, v in detail["trials"].items() if k == "completed")
    assert waiting.time_left(detail, done, now=1000.0) == left


SPEC = """
name = "quad"
command = ["python", "trial.py"]
[objective]
metric = "loss"
mode = "min"
[space]
x = { param_type = "uniform", range = [-1.0, 1.0] }
"""


@pytest.mark.parametrize("command", ["wait", "submit"])
def test_ctrl_c_says_the_study_goes_on(server: WireServer, tmp_path: Path, command: str) -> None:
    server.methods["submit"] = {"study": "s1", "name": "quad"}
    spec = tmp_path / "study.toml"
    spec.write_text(SPEC)
    argv = ["wait", "s1"] if command == "wait" else ["submit", str(spec), "--wait"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", server.path, *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not server.calls("wait"):  # it is waiting
            assert time.monotonic() < deadline, "hpodctl never called wait"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "stopped waiting; study s1 goes on in the daemon" in err
    assert "`hpodctl stop s1` stops it" in err
    assert out == ""
