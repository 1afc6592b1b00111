"""End to end: BO and DyHPO studies with real trial processes, their models fitted in the worker
process while the daemon serves, and a daemon that never imports torch."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SPEC = """
name = "{name}"
command = ["python", "trial_quad.py"]

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = {{ param_type = "uniform", range = [-1.0, 1.0] }}
y = {{ param_type = "uniform", range = [-1.0, 1.0] }}
gate = {{ param_type = "choice", range = [{gate}] }}

[scheduler]
{scheduler}
min_resource = 1
max_resource = 9
reduction_factor = 3

[searcher]
{searcher}
seed = 1

[limits]
max_trials = {trials}
max_concurrent = 2
"""


def run_study(
    daemon: Any, name: str, scheduler: str, searcher: str, trials: int, gate: int = 1000
) -> str:
    """Submit and wait for the end. With a gate, trials ``gate`` and up are held until the study
    has fitted a model, so that the rest of it is decided with one whatever the machine's speed."""
    text = SPEC.format(name=name, scheduler=scheduler, searcher=searcher, trials=trials, gate=gate)
    spec = daemon.write_spec(name, text)
    sid: str = daemon.ctl_json("submit", str(spec))["study"]
    if gate < trials:
        deadline = time.monotonic() + 90
        while daemon.ctl_json("show", sid)["decisions"]["fits"] < 1:
            assert time.monotonic() < deadline, f"no model fitted in 90 s:\n{daemon.output()}"
        (Path(daemon.state_dir) / "studies" / sid / "go").touch()
    done = daemon.ctl_json("wait", sid, timeout=150)
    assert done["state"] == "completed", daemon.output()
    return sid


def test_bo_with_asha_runs_to_completion_with_fits_off_the_loop(daemon: Any) -> None:
    searcher = 'type = "bo"\nnum_init_trials = 3\nacquisition = "ei"'
    sid = run_study(daemon, "bo", 'type = "asha"', searcher, 16, gate=5)
    decisions = daemon.ctl_json("show", sid)["decisions"]
    assert decisions["fits"] >= 1, decisions
    assert decisions["fit_errors"] == 0
    assert decisions["fit_yields_to_reports"] is False  # no fit running now
    assert decisions["random_starts"] + decisions["model_starts"] == 16
    assert decisions["model_starts"] >= 1
    assert decisions["asha_promotions"] >= 1
    assert decisions["fit_seconds"]["max"] >= decisions["fit_seconds"]["median"] > 0
    text = daemon.ctl("show", sid, check=True).stdout
    assert "decisions:" in text
    assert "model starts" in text
    assert "fits:" in text
    assert daemon.ctl_json("best", sid)["resource"] == 9
    # BO's fit is numpy and scipy: the daemon never imported torch.
    assert daemon.ctl_json("ping")["torch_loaded"] is False


def test_dyhpo_runs_to_completion_and_torch_stays_in_the_worker(daemon: Any) -> None:
    searcher = 'type = "dyhpo"\nnum_init_trials = 3'
    scheduler = 'type = "dyhpo"\noptions = { fit_iterations = 60 }'
    sid = run_study(daemon, "dyhpo", scheduler, searcher, 14, gate=5)
    decisions = daemon.ctl_json("show", sid)["decisions"]
    assert decisions["fit_errors"] == 0, decisions
    assert decisions["fits"] >= 1, decisions
    assert decisions["random_starts"] + decisions["model_starts"] == 14
    # After the gate opens the model decides (a quarter of the time the ASHA rule goes first).
    assert decisions["model_starts"] + decisions["model_promotions"] >= 1, decisions
    trials = daemon.ctl_json("trials", sid)
    assert len(trials) == 14
    assert {t["state"] for t in trials} <= {"paused", "completed"}
    assert any(t["resource"] == 9 for t in trials)
    ping = daemon.ctl_json("ping")
    # The DyHPO fit imports torch in the worker process; the daemon itself never does.
    assert ping["torch_loaded"] is False
    assert ping["fit_workers_started"] >= 1


def test_random_and_asha_studies_never_import_torch_or_start_a_worker(daemon: Any) -> None:
    run_study(daemon, "random", 'type = "fifo"', 'type = "random"', 3)
    run_study(daemon, "asha", 'type = "asha"', 'type = "random"', 6)
    ping = daemon.ctl_json("ping")
    assert ping["torch_loaded"] is False
    assert ping["fit_workers_started"] == 0


DURING_FIT = """
name = "during-fit"
command = ["python", "trial_quad.py"]

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = { param_type = "uniform", range = [-1.0, 1.0] }
y = { param_type = "uniform", range = [-1.0, 1.0] }
gate = { param_type = "choice", range = [4] }

[scheduler]
type = "dyhpo"
max_resource = 120
rung_levels = [60]

[scheduler.options]
fit_iterations = 5000   # a slow fit on purpose: reports must flow while it runs

[searcher]
type = "dyhpo"
num_init_trials = 2

[limits]
max_trials = 24
max_concurrent = 4
"""


def test_reports_are_answered_while_a_dyhpo_model_is_fitted(daemon_factory: Any) -> None:
    daemon = daemon_factory(slots=4)
    spec = daemon.write_spec("during-fit", DURING_FIT)
    sid = daemon.ctl_json("submit", str(spec))["study"]
    # Trials 4 and up wait at the gate until the first fit is under way; then 20 trials report
    # back to back, 4 at a time, while it runs.
    deadline = time.monotonic() + 90
    while not daemon.ctl_json("show", sid)["decisions"]["fitting"]:
        assert time.monotonic() < deadline, f"no fit started in 90 s:\n{daemon.output()}"
    (Path(daemon.state_dir) / "studies" / sid / "go").touch()
    done = daemon.ctl_json("wait", sid, timeout=150)
    assert done["state"] == "completed", daemon.output()
    events = [json.loads(line) for line in daemon.output().splitlines()]
    requested = [e["requested_at"] for e in events if e.get("event") == "fit_requested"]
    installed = [e["installed_at"] for e in events if e.get("event") == "model_fitted"]
    # A fit still running at the end has no end yet.
    windows = list(zip(requested, [*installed, *[math.inf] * len(requested)], strict=False))
    assert windows
    with contextlib.closing(sqlite3.connect(Path(daemon.state_dir) / "hpod.sqlite3")) as db:
        times = [at for (at,) in db.execute("SELECT at FROM reports WHERE study_id = ?", (sid,))]
    during = [t for t in times if any(a <= t <= b for a, b in windows)]
    assert len(during) >= 50, (len(during), windows)
    # Every report was answered: each trial logs a report once it has the answer, and every
    # report the store holds was logged by its trial (none is left hanging at the daemon).
    acked = sum(
        len(p.read_text().splitlines())
        for p in (Path(daemon.state_dir) / "studies" / sid / "trials").glob("*/acked.log")
    )
    assert acked == len(times)
