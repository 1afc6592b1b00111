"""End to end: trials as Slurm jobs on a real single-node cluster (tests/slurm_cluster.py), the
daemon still the one scheduler (docs/slurm.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DaemonHandle
from tests.e2e.test_settings import serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
HERE = Path(__file__).parent

ASHA = """
name = "{name}"
command = ["python", "trial_slurm.py"]
stop_grace_period = "20s"

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = {{ param_type = "choice", range = [0.3, -0.5, 0.9] }}
y = {{ param_type = "choice", range = [-0.2, 0.6] }}
delay = {{ param_type = "choice", range = [{delay}] }}

[scheduler]
type = "{scheduler}"
min_resource = 1
max_resource = {steps}
reduction_factor = 3

[searcher]
type = "grid"
partial_grid = true

[limits]
max_trials = {trials}
max_concurrent = {concurrent}

[executor]
type = "slurm"
partition = "debug"
time_limit = "10m"
cpus = 1
memory = "64MiB"
poll = "0.2s"
checkpoint_root = "{root}"
setup = "export TEST_SETUP_RAN=1"
"""


def write(d: DaemonHandle, name: str, **knobs: Any) -> Path:
    folder = d.root / name
    folder.mkdir()
    shutil.copy(HERE / "trial_slurm.py", folder / "trial_slurm.py")
    values = {
        "name": name,
        "delay": 0.15,
        "scheduler": "asha",
        "steps": 9,
        "trials": 6,
        "concurrent": 3,
        "root": str(d.root / "shared"),
        **knobs,
    }
    path = folder / "study.toml"
    path.write_text(ASHA.format(**values))
    return path


def events(d: DaemonHandle, sid: str, trial: int) -> list[dict[str, Any]]:
    path = d.root / "shared" / sid / str(trial) / "events.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def logged(d: DaemonHandle, event: str) -> list[dict[str, Any]]:
    out = []
    for i in range(1, d.starts + 1):
        for line in (d.root / f"daemon{i}.log").read_text().splitlines():
            if line.startswith("{") and json.loads(line)["event"] == event:
                out.append(json.loads(line))
    return out


def wait_for(what: str, ready: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)
    return got


def daemon(daemon_factory: Any, cluster: Any, monkeypatch: pytest.MonkeyPatch) -> DaemonHandle:
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    # The jobs report over the trial endpoint on TCP, as on a cluster's other nodes; on a port
    # that stays the same across the restart (a job's HPOD_SOCKET names it).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return serve(daemon_factory, trial_tcp=f"127.0.0.1:{port}", cpu_slots=1)


def test_asha_runs_its_trials_as_slurm_jobs(
    daemon_factory: Any, slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(daemon_factory, slurm_cluster, monkeypatch)
    (d.root / "shared").mkdir()
    sid = str(d.ctl_json("submit", str(write(d, "asha")))["study"])
    # A restart in the middle: killed while jobs run, the next daemon adopts them by job id.
    wait_for(
        "a job running",
        lambda: any(j.get("state") == "RUNNING" for j in d.ctl_json("show", sid).get("jobs", [])),
    )
    jobs_before = {j["job"] for j in d.ctl_json("show", sid)["jobs"]}
    d.stop(signal.SIGKILL)
    d.start()
    adopted = [e for e in logged(d, "trial_adopted") if e.get("fate") == "slurm"]
    assert adopted, d.output()
    done = d.ctl_json("wait", sid, timeout=180)
    assert done["state"] == "completed", d.output()
    best = d.ctl_json("best", sid)
    assert (best["config"]["x"], best["config"]["y"]) == (0.3, -0.2)
    assert best["resource"] == 9
    detail = d.ctl_json("show", sid)
    jobs = detail["jobs"]
    # Every run was a job of its own, each with its id and Slurm's last word on it.
    assert len({j["job"] for j in jobs}) == len(jobs)
    assert jobs_before <= {j["job"] for j in jobs}
    assert {j["state"] for j in jobs} <= {"COMPLETED"}, jobs
    assert all(j["node"] == slurm_cluster.node for j in jobs)
    trials = {t["trial"]: t for t in d.ctl_json("trials", sid)}
    # Promotion: a paused trial resumed from its checkpoint in a new job, no step twice.
    resumed = 0
    for tid, t in trials.items():
        seen = events(d, sid, tid)
        starts = [e for e in seen if e["event"] == "start"]
        assert len(starts) == t["runs"]
        assert len({e["job"] for e in starts}) == len(starts)  # a job per run
        for e in starts[1:]:
            assert e["checkpoint"] == e["resume_from"] > 0
            resumed += 1
        steps = [e["step"] for e in seen if e["event"] == "step"]
        assert len(steps) == len(set(steps)), (tid, steps)
        assert all(e["socket"].startswith("tcp://") for e in starts)
    assert resumed >= 2
    winner = trials[best["trial"]]
    assert winner["state"] == "completed"
    assert winner["runs"] >= 3
    # The adopted jobs ran on: no step of theirs trained twice (checked above), and none was
    # submitted again for the same run.
    for e in adopted:
        runs = [j for j in jobs if j["trial"] == e["trial"] and j["run"] == e["run"]]
        assert len(runs) == 1


def test_a_run_killed_before_its_job_was_submitted_is_not_counted_as_run(
    daemon_factory: Any, slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed inside sbatch (its launch stored, no job submitted): after the restart the trial
    runs again under the same run number, so its runs are the jobs that started, no more."""
    d = daemon(daemon_factory, slurm_cluster, monkeypatch)
    (d.root / "shared").mkdir()
    # sbatch as the submitter's PATH finds it: the real one, until the hold file appears; then
    # one that never returns (and submits nothing), as an sbatch the daemon died inside.
    real = shutil.which("sbatch")
    assert real is not None
    bin_dir = d.root / "bin"
    bin_dir.mkdir()
    hold, held = d.root / "hold", d.root / "sbatch.pid"
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(
        f"#!/bin/sh\nif [ -e {hold} ]; then echo $$ >> {held}; exec sleep 600; fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    d.env["PATH"] = f"{bin_dir}{os.pathsep}{d.env['PATH']}"
    sid = str(d.ctl_json("submit", str(write(d, "lost", trials=4, concurrent=2)))["study"])
    wait_for(
        "a job running",
        lambda: any(j.get("state") == "RUNNING" for j in d.ctl_json("show", sid).get("jobs", [])),
    )
    hold.touch()
    wait_for("the daemon inside sbatch", lambda: held.exists() and held.read_text().strip())
    d.stop(signal.SIGKILL)
    for pid in held.read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    hold.unlink()
    d.start()
    done = d.ctl_json("wait", sid, timeout=180)
    assert done["state"] == "completed", d.output()
    trials = d.ctl_json("trials", sid)
    jobs = d.ctl_json("show", sid)["jobs"]
    for t in trials:
        starts = [e for e in events(d, sid, t["trial"]) if e["event"] == "start"]
        # Every run the trial shows is a job that started: the one never submitted is not one.
        assert len(starts) == t["runs"], (t, starts)
        assert len([j for j in jobs if j["trial"] == t["trial"]]) == t["runs"], (t, jobs)
    assert logged(d, "slurm_never_submitted"), d.output()


def test_stop_is_scancel_with_sigterm_then_the_grace_period(
    daemon_factory: Any, slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(daemon_factory, slurm_cluster, monkeypatch)
    (d.root / "shared").mkdir()
    # Steps of 1.5 s: the stop comes while the trial trains, not as it reports.
    path = write(d, "stop", scheduler="fifo", steps=200, trials=1, concurrent=1, delay=1.5)
    sid = str(d.ctl_json("submit", str(path))["study"])
    wait_for(
        "a step reported",
        lambda: (
            (d.root / "shared" / sid / "0" / "events.log").exists()
            and any(e["event"] == "answer" for e in events(d, sid, 0))
        ),
    )
    job = d.ctl_json("show", sid)["jobs"][0]["job"]
    d.ctl("stop", sid, check=True)
    done = json.loads(d.ctl("wait", sid, "--json", timeout=60).stdout)
    assert done["state"] == "stopped"
    seen = events(d, sid, 0)
    names = [e["event"] for e in seen]
    # scancel --signal=TERM reached the trial in its job; it saved and exited in its grace.
    assert "sigterm" in names, names
    assert names[-1] == "exit", names
    assert {e["job"] for e in seen} == {job}
    stops = logged(d, "slurm_stop")
    assert [s["job"] for s in stops] == [job]
    state = slurm_cluster.run(
        "squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"
    ).stdout.strip()
    assert state in ("COMPLETED", "CANCELLED"), state
