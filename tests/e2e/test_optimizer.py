"""hpod.Optimizer against a real daemon (issue 14, "Done when" 1 and 2): ClearML's flow (start
with a callback, top while it runs, set_time_limit shortened mid-run, wait, stop), the callback
checked against the store; start_locally() with no daemon running, leaving nothing behind."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpod import Optimizer
from hpod.core import answer
from hpod.core.objective import Objective, ObjectiveMode
from tests.e2e.conftest import HERE, DaemonHandle
from tests.e2e.specs import spec

GRACE_S = 1.0


class Calls:
    """What the callback was given, and on which thread."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.rows: list[tuple[int, float | None, float | None, dict[str, Any], int | None]] = []
        self.threads: set[str] = set()
        self.first = threading.Event()
        self.fail_on = fail_on

    def __call__(
        self,
        trial: int,
        objective: float | None,
        iteration: float | None,
        config: dict[str, Any],
        best: int | None,
    ) -> None:
        self.rows.append((trial, objective, iteration, config, best))
        self.threads.add(threading.current_thread().name)
        self.first.set()
        if trial == self.fail_on:
            raise RuntimeError(f"deliberate callback failure for trial {trial}")


def _db(state_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state_dir / 'hpod.sqlite3'}?mode=ro", uri=True)


def _check_against_store(state_dir: Path, study: str, calls: Calls) -> None:
    """Once per ended trial, in the order their ends were stored, with the stored values; the
    best so far is a trial whose value then was the best value then."""
    db = _db(state_dir)
    try:
        ends = db.execute(
            "SELECT trial_id, at FROM events WHERE study_id = ? AND kind = 'trial_ended'"
            " ORDER BY id",
            (study,),
        ).fetchall()
        final = {
            tid
            for (tid,) in db.execute(
                "SELECT trial_id FROM trials WHERE study_id = ? AND runs > 0"
                " AND state IN ('completed', 'stopped', 'failed')",
                (study,),
            )
        }
        configs = {
            tid: json.loads(cfg)
            for tid, cfg in db.execute(
                "SELECT trial_id, config FROM trials WHERE study_id = ?", (study,)
            )
        }
        reports = db.execute(
            "SELECT trial_id, resource, metrics, at FROM reports WHERE study_id = ? AND counted"
            " ORDER BY id",
            (study,),
        ).fetchall()
    finally:
        db.close()
    assert [tid for tid, _ in ends] == [row[0] for row in calls.rows]
    assert sorted(final) == sorted(row[0] for row in calls.rows)
    for (tid, ended_at), (trial, objective, iteration, config, best) in zip(
        ends, calls.rows, strict=True
    ):
        assert trial == tid
        assert config == configs[tid]
        mine = [(res, json.loads(m)["loss"]) for t, res, m, _ in reports if t == tid]
        assert mine, f"trial {tid} ended without a report"
        assert iteration == mine[-1][0]
        # Its estimate (mode min: the mean of its last reports, docs/answer.md).
        loss = Objective("loss", ObjectiveMode.MIN)
        assert objective == pytest.approx(answer.value(loss, dict(sorted(mine))), rel=1e-12)
        # The best so far, by the same estimate, from the reports stored by then.
        curves: dict[int, dict[float, float]] = {}
        for t, res, m, at in reports:
            if at <= ended_at:
                curves.setdefault(t, {})[res] = json.loads(m)["loss"]
        assert best is not None
        values = {t: answer.value(loss, dict(sorted(c.items()))) for t, c in curves.items()}
        assert values[best] == pytest.approx(min(values.values()), rel=1e-12)


@pytest.mark.timeout(180)
def test_clearml_flow(daemon_factory: Any) -> None:
    daemon: DaemonHandle = daemon_factory(slots=2)
    # 12 grid points of 2 s each, two at a time: about 12 s without a limit, 10 minutes allowed.
    path = daemon.write_spec(
        "flow",
        spec(
            "flow",
            steps=20,
            delay=0.1,
            grace=f"{GRACE_S:g}s",
            limits='max_concurrent = 2\noptimization_time = "10m"',
        ),
    )
    calls = Calls()
    opt = Optimizer.from_file(path, socket_path=daemon.socket)
    with opt:
        study = opt.start(on_trial_end=calls)
        assert opt.is_active()
        assert calls.first.wait(60), "no trial ended within 60 s"
        # top while it runs: ClearML's get_top_experiments_details shape.
        rows = opt.top(3, all_metrics=True)
        assert 1 <= len(rows) <= 3
        for row in rows:
            assert set(row) >= {"task_id", "hyper_parameters", "metrics"}
            assert "loss" in row["metrics"]
            assert "step" in row["metrics"] or "loss" in row["metrics"]
        assert [r["task_id"] for r in opt.top(3, only_completed=True)]
        assert opt.active(), "nothing runs mid-study"
        assert opt.elapsed() > 0
        # Shortened mid-run: 2 s from now instead of 10 minutes.
        opt.set_time_limit(minutes=2.0 / 60.0)
        deadline = time.time() + 2.0
        limit = opt.get_time_limit()
        assert limit is not None
        assert abs(limit.timestamp() - deadline) < 1.0
        assert opt.wait(timeout=60)
        summary = opt.summary()
        assert summary["state"] == "completed", summary
        assert summary["ended"] <= deadline + GRACE_S + 1.0, (summary["ended"] - deadline, summary)
        assert summary["ended"] >= deadline - 1.0, (summary["ended"] - deadline, summary)
        assert opt.reached_time_limit(), summary["end_reason"]
        assert not opt.is_active()
        assert summary["total_trials"] < 12, "the study ran to its end: the limit did nothing"
        opt.stop(timeout=10)
    assert calls.threads
    assert threading.current_thread().name not in calls.threads
    assert opt.callback_errors == []
    _check_against_store(daemon.state_dir, study, calls)


@pytest.mark.timeout(180)
def test_callback_across_a_daemon_restart(daemon_factory: Any) -> None:
    """The daemon stopped (its trials interrupted) and started again under a running optimizer:
    every trial's callback once, in order, none lost, none twice."""
    daemon: DaemonHandle = daemon_factory(slots=2)
    path = daemon.write_spec(
        "restart", spec("restart", steps=8, delay=0.1, grace="1s", limits="max_concurrent = 2")
    )
    calls = Calls()
    with Optimizer.from_file(path, socket_path=daemon.socket) as opt:
        study = opt.start(on_trial_end=calls)
        assert calls.first.wait(60), "no trial ended within 60 s"
        daemon.stop()
        daemon.start()
        assert opt.wait(timeout=120)
        assert opt.summary()["state"] == "completed"
    assert opt.callback_errors == []
    assert sorted(row[0] for row in calls.rows) == list(range(12))
    _check_against_store(daemon.state_dir, study, calls)


@pytest.mark.timeout(120)
def test_ask_tell_through_the_optimizer(daemon_factory: Any) -> None:
    """An external study driven by Optimizer.ask/tell: one trial run as a process of the test's
    own that reports with hpod.trial, the others told their final value; the callback hears
    each one's end."""
    daemon: DaemonHandle = daemon_factory(slots=2)
    limits = "max_trials = 3\nmax_concurrent = 1"
    text = spec("ext", steps=2, limits=limits, points="partial_grid = true").replace(
        "[scheduler]", '[executor]\ntype = "external"\n\n[scheduler]'
    )
    calls = Calls()
    with Optimizer.from_toml(text, daemon.root, socket_path=daemon.socket) as opt:
        opt.start(on_trial_end=calls)
        asked = opt.ask()
        assert asked is not None
        assert opt.ask() is None, "max_concurrent = 1: a second one handed out"
        # Run by this test, not the daemon: it reports with hpod.trial through its env.
        shutil.copy(HERE / "trial_quad.py", daemon.root / "trial_quad.py")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
        subprocess.run(
            [sys.executable, str(daemon.root / "trial_quad.py")],
            env={**env, **asked["env"]},
            check=True,
            timeout=60,
        )
        opt.tell(asked, final=True)
        told: list[int] = []
        deadline = time.monotonic() + 30
        while len(told) < 2:
            assert time.monotonic() < deadline, "no trial handed out"
            nxt = opt.ask()
            if nxt is None:
                continue
            told.append(int(nxt["trial"]))
            x, y = float(nxt["config"]["x"]), float(nxt["config"]["y"])
            opt.tell(nxt, {"step": 2, "loss": (x - 0.3) ** 2 + (y + 0.2) ** 2}, final=True)
        assert opt.wait(timeout=60)
    assert [row[0] for row in calls.rows] == [int(asked["trial"]), *told]
    assert all(row[1] is not None for row in calls.rows)
    assert opt.callback_errors == []


def _proc_mentions(needle: str) -> list[str]:
    """Processes whose command line or environment name ``needle`` (root reads every one)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path("/proc", pid, part).read_bytes()
            except OSError:
                continue
            if needle.encode() in data:
                found.append(f"{pid}: {data[:200]!r}")
                break
    return found


def _local_optimizer(folder: Path, delay: float = 0.0) -> Optimizer:
    shutil.copy(HERE / "trial_quad.py", folder / "trial_quad.py")
    space: dict[str, Any] = {"x": ("quniform", -0.1, 0.5, 0.2), "y": [-0.6, -0.2, 0.2]}
    if delay:
        space["delay"] = [delay]
    return Optimizer(
        command=["python", "trial_quad.py"],
        workdir=folder,
        name="local",
        space=space,
        metric="loss",
        mode="min",
        resource="step",
        max_resource=3,
        # Every trial to the end, so each ends with a callback (the default, Hyperband, leaves
        # the ones it did not promote paused).
        scheduler="fifo",
        searcher="grid",
        max_concurrent=2,
        extra={"stop_grace_period": "1s"},
    )


@pytest.mark.timeout(120)
def test_start_locally_runs_to_best_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    state_home = tempfile.mkdtemp(prefix="hpod")
    # No daemon anywhere it could find: the default socket is in a folder of this test's own.
    monkeypatch.delenv("HPOD_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", state_home)
    folder = Path(state_home) / "study"
    folder.mkdir()
    calls = Calls(fail_on=0)
    try:
        opt = _local_optimizer(folder)
        opt.start_locally(on_trial_end=calls)
        local = opt._local
        assert local is not None
        root, pid = local.root, local.proc.pid
        assert opt.socket_path.startswith(root)
        assert opt.wait(timeout=90)
        assert opt.best()["config"] == {"x": pytest.approx(0.3), "y": pytest.approx(-0.2)}
        # The callback raised for trial 0: reported, kept, and the other 11 still came.
        assert sorted(row[0] for row in calls.rows) == list(range(12))
        assert [e.trial for e in opt.callback_errors] == [0]
        assert isinstance(opt.callback_errors[0].error, RuntimeError)
        assert "deliberate callback failure for trial 0" in capfd.readouterr().err
        opt.stop()
        assert not os.path.exists(root)
        assert not Path("/proc", str(pid)).exists()
        assert _proc_mentions(root) == []
    finally:
        shutil.rmtree(state_home, ignore_errors=True)


@pytest.mark.timeout(120)
def test_start_locally_garbage_collected_mid_study() -> None:
    """Dropped while trials run: the daemon stops them and goes, and its folder with it."""
    folder = Path(tempfile.mkdtemp(prefix="hpod"))
    try:
        opt = _local_optimizer(folder, delay=0.5)
        opt.start_locally()
        local = opt._local
        assert local is not None
        root, pid = local.root, local.proc.pid
        deadline = time.monotonic() + 30
        while not opt.active():
            assert time.monotonic() < deadline, "no trial started"
        del opt, local
        gc.collect()
        assert not os.path.exists(root)
        assert not Path("/proc", str(pid)).exists()
        assert _proc_mentions(root) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(120)
def test_the_example_script_runs_end_to_end() -> None:
    """examples/python-api/run.py as a user runs it: no daemon, a study to its best config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    script = HERE.parent.parent / "examples" / "python-api" / "run.py"
    res = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=100
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert sum(" ended at epoch " in line for line in lines) == 24
    assert lines[-1].startswith("best: trial ")
    assert "'opt': 'adam'" in lines[-1]
