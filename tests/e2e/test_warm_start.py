"""Warm starts end to end (docs/warm-start.md): a real daemon forks each run of a study with
``[executor] warm_start = true`` from the study's fork server. The runs report, are paused at
rungs and resumed from their checkpoints, see the trial contract's environment, and are adopted
after the daemon is killed with -9, exactly as cold runs are."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DaemonHandle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Per run: one line of what it saw ("warm": colorsys was imported before the script ran, by the
# server only), then each step it trains from its checkpoint, reported.
TRIAL = """
import json, os, sys, time
warm = "colorsys" in sys.modules
from hpod import trial
folder = trial.trial_dir()
ckpt = trial.checkpoint_dir() / "step"
start = int(ckpt.read_text()) if ckpt.exists() else 0
env = {k: v for k, v in os.environ.items() if k.startswith(("HPOD_", "CUDA_", "KEEP"))}
with open(os.path.join(folder, "runs.log"), "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "warm": warm, "resume": trial.resume_from(),
                        "checkpoint": start, "uid": os.getuid(), "env": env}) + "\\n")
delay = float(trial.config().get("delay", 0.0))
for step in range(start + 1, int(trial.max_resource()) + 1):
    time.sleep(delay)
    with open(os.path.join(folder, "steps.log"), "a") as f:
        f.write(f"{os.getpid()} {step}\\n")
    answer = trial.report(step=step, loss=(trial.config()["x"] - 0.3) ** 2 + 1 / step)
    ckpt.write_text(str(step))
    if answer is not trial.CONTINUE:
        break
"""

ASHA = """
name = "{name}"
command = ["python", "trial_warm.py"]
env = {{ KEEP = "me" }}
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = {{ param_type = "choice", range = [0.9, -0.5, 0.1, 0.7, 0.3, -0.1] }}
delay = {{ param_type = "choice", range = [{delay}] }}
[scheduler]
type = "{scheduler}"
max_resource = 9
{rungs}
[searcher]
type = "grid"
partial_grid = true
[limits]
max_trials = {trials}
max_concurrent = {concurrent}
[executor]
warm_start = true
warm_imports = ["hpod.trial", "colorsys"]
"""


def submit(daemon: DaemonHandle, name: str, **kw: Any) -> str:
    fields = {
        "name": name,
        "delay": 0.0,
        "scheduler": "asha",
        "rungs": 'min_resource = 1\nreduction_factor = 3\nrung_type = "promotion"',
        "trials": 6,
        "concurrent": 2,
    }
    fields.update(kw)
    path = daemon.write_spec(name, ASHA.format(**fields))
    (path.parent / "trial_warm.py").write_text(TRIAL)
    return str(daemon.ctl_json("submit", str(path))["study"])


def runs_of(daemon: DaemonHandle, sid: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    trials = daemon.state_dir / "studies" / sid / "trials"
    for folder in trials.iterdir() if trials.is_dir() else ():
        log = folder / "runs.log"
        if log.exists():
            out[int(folder.name)] = [json.loads(x) for x in log.read_text().splitlines()]
    return out


def steps_of(daemon: DaemonHandle, sid: str, trial: int) -> list[tuple[int, int]]:
    log = daemon.state_dir / "studies" / sid / "trials" / str(trial) / "steps.log"
    if not log.exists():
        return []
    return [(int(p), int(s)) for p, s in (x.split() for x in log.read_text().splitlines())]


def test_warm_trials_report_pause_and_resume_from_their_checkpoints(daemon: DaemonHandle) -> None:
    sid = submit(daemon, "warm-asha")
    final = daemon.ctl_json("wait", sid, "--timeout", "120")
    assert final["state"] == "completed", final
    trials = {t["trial"]: t for t in daemon.ctl_json("trials", sid)}
    assert len(trials) == 6
    assert daemon.ctl_json("best", sid)["config"]["x"] == 0.3
    runs = runs_of(daemon, sid)
    resumed = 0
    for tid, seen in runs.items():
        for run in seen:
            assert run["warm"] is True, run  # forked from the server, every run
            assert run["uid"] == os.getuid()  # the study's owner (the submitter)
            assert run["env"]["HPOD_TRIAL"] == str(tid)
            assert run["env"]["HPOD_STUDY"] == sid
            assert run["env"]["KEEP"] == "me"
            assert run["env"]["CUDA_VISIBLE_DEVICES"] == ""
            # Resumed exactly from where it was paused: the checkpoint is the daemon's level.
            assert run["checkpoint"] == int(float(run["resume"])), run
            resumed += run["resume"] > 0
        # No step trained twice over the runs, each run its own process.
        steps = steps_of(daemon, sid, tid)
        assert [s for _, s in steps] == list(range(1, len(steps) + 1))
        assert len({r["pid"] for r in seen}) == len(seen)
    assert resumed >= 2  # promotions: rungs 1 and 3
    # One token per run: no two runs of a trial shared one.
    for seen in runs.values():
        tokens = [r["env"]["HPOD_TOKEN"] for r in seen]
        assert len(set(tokens)) == len(tokens)
    log = daemon.output()
    assert "warm_start_ready" in log
    assert "warm_start_unavailable" not in log


def test_warm_runs_are_adopted_after_the_daemon_is_killed(daemon: DaemonHandle) -> None:
    sid = submit(daemon, "warm-kill", scheduler="fifo", rungs="", trials=2, delay=0.3)

    def both_running() -> dict[int, list[dict[str, Any]]] | None:
        got = runs_of(daemon, sid)
        ready = len(got) == 2 and all(len(steps_of(daemon, sid, tid)) >= 2 for tid in got)
        return got if ready else None

    deadline = time.monotonic() + 60
    while (seen := both_running()) is None:
        assert time.monotonic() < deadline, "the warm trials never trained two steps"
        time.sleep(0.05)
    pids = {tid: runs[0]["pid"] for tid, runs in seen.items()}
    daemon.stop(signal.SIGKILL)
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
    daemon.start()
    shown = daemon.ctl_json("show", sid)
    assert shown["adopted"] == [0, 1], shown
    final = daemon.ctl_json("wait", sid, "--timeout", "60")
    assert final["state"] == "completed", final
    for row in daemon.ctl_json("trials", sid):
        assert row["state"] == "completed", row
        assert row["runs"] == 1, row  # never relaunched
        got = steps_of(daemon, sid, row["trial"])
        assert [s for _, s in got] == list(range(1, 10))
        assert {p for p, _ in got} == {pids[row["trial"]]}
