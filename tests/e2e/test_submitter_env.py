"""A study's trials run in the submitter's environment, not the daemon's (issue 12, finding 7).

A system daemon's ``PATH`` finds the system's ``python``: a user's trials all failed until she
wrote the absolute path of her venv's. Here the submitter's ``PATH`` starts with a folder whose
``python`` is a script that records that it ran (and what it saw) and then runs the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpod import wire
from tests.e2e.specs import spec

VENV = "/home/someone/venvs/exp"
WAIT_S = 60.0
HPODCTL = (sys.executable, "-m", "hpod.cli.hpodctl")

FAKE_PYTHON = """#!/bin/sh
printf '%s %s %s\\n' "$VIRTUAL_ENV" "${{DAEMON_ONLY_MARK-unset}}" "$HPOD_RESUME_FROM" \\
    >> "$HPOD_TRIAL_DIR/fake-python.log"
exec {real} "$@"
"""


def _submitter(daemon: Any) -> dict[str, str]:
    """The submitter's shell: a PATH whose first folder holds the fake python, and a venv."""
    bin_dir = daemon.root / "submitter-bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON.format(real=sys.executable))
    fake.chmod(0o755)
    env = {k: v for k, v in daemon.env.items() if k != "DAEMON_ONLY_MARK"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = VENV
    return env


def _submit(daemon: Any, path: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        [*HPODCTL, "--socket", daemon.socket, "submit", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    sid: str = json.loads(res.stdout)["study"]
    return sid


def _lines(path: Path, count: int) -> list[str]:
    """The first ``count`` lines of ``path``, once a trial has written them (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} never had {count} lines")


def test_a_studys_trials_run_the_submitters_python_with_its_venv_also_after_a_restart(
    daemon_factory: Any,
) -> None:
    daemon = daemon_factory(start=False)
    daemon.env["DAEMON_ONLY_MARK"] = "1"  # in the daemon's environment only
    daemon.start()
    # One trial that waits for a `go` file before it reports: it is running at the restart.
    path = daemon.write_spec(
        "envs",
        spec(
            "envs",
            steps=2,
            grace="1s",
            extra='gate = { param_type = "choice", range = [0] }',
            limits="max_trials = 1",
            points="partial_grid = true",
        ),
    )
    sid = _submit(daemon, path, _submitter(daemon))
    study_dir = daemon.state_dir / "studies" / sid
    ran = study_dir / "trials" / "0" / "fake-python.log"
    assert _lines(ran, 1) == [f"{VENV} unset 0"]

    detail = daemon.ctl_json("show", sid)
    assert detail["environment"]["from"] == "submitter"
    assert {"PATH", "VIRTUAL_ENV"} <= set(detail["environment"]["names"])
    assert "DAEMON_ONLY_MARK" not in detail["environment"]["names"]
    shown = daemon.ctl("show", sid, check=True).stdout
    assert "environment: the submitter's (" in shown

    assert daemon.stop() == 0  # the trial is interrupted; the restart resumes it
    daemon.start()
    assert _lines(ran, 2) == [f"{VENV} unset 0", f"{VENV} unset 0"]
    (study_dir / "go").touch()
    done = daemon.ctl_json("wait", sid)
    assert done["state"] == "completed", done
    (trial,) = daemon.ctl_json("trials", sid)
    assert trial["state"] == "completed"
    # The real python behind the fake one reported both steps through hpod.trial.
    assert (study_dir / "trials" / "0" / "acked.log").read_text().split("\n")[:2] == [
        f"{sid} 0 1",
        f"{sid} 0 2",
    ]


def test_a_submit_without_env_from_an_old_client_runs_its_trials_in_the_daemons_environment(
    daemon_factory: Any,
) -> None:
    daemon = daemon_factory(start=False)
    daemon.env["DAEMON_ONLY_MARK"] = "1"
    daemon.start()
    submitter = _submitter(daemon)
    text = spec("old", steps=1, limits="max_trials = 1", points="partial_grid = true")
    # The daemon's PATH has no fake python: the old client's trials get what they always did.
    text = text.replace(
        'command = ["python", "trial_quad.py"]',
        'command = ["sh", "-c", "echo \\"$DAEMON_ONLY_MARK\\" > mark; exec python trial_quad.py"]',
    )
    path = daemon.write_spec("old", text)
    with wire.SyncConnection(daemon.socket, client="an old hpod.Client") as conn:
        old = conn.call("submit", {"spec": text, "base_dir": str(path.parent)})["study"]
    assert daemon.ctl_json("wait", old)["state"] == "completed"
    assert (path.parent / "mark").read_text() == "1\n"
    detail = daemon.ctl_json("show", old)
    assert detail["environment"] == {"from": "daemon", "names": []}

    new = _submit(daemon, daemon.write_spec("new", text.replace('"old"', '"new"')), submitter)
    assert daemon.ctl_json("wait", new)["state"] == "completed"
    assert (daemon.root / "new" / "mark").read_text() == "\n"  # not the daemon's
    assert (daemon.state_dir / "studies" / new / "trials" / "0" / "fake-python.log").exists()
