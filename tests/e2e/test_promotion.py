"""End to end: ASHA promotion with real processes: pause at rungs, resume from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ASHA = """
name = "asha"
command = ["python", "trial_quad.py"]

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = { param_type = "choice", range = [0.9, -0.5, 0.1, 0.7, 0.3, -0.1, 1.1, 0.5, -0.3] }

[scheduler]
type = "asha"
min_resource = 1
max_resource = 27
reduction_factor = 3

[searcher]
type = "grid"

[limits]
max_trials = 9
max_concurrent = 2
"""


def trained_log(daemon: Any, sid: str, trial: int) -> list[str]:
    path = Path(daemon.state_dir) / "studies" / sid / "trials" / str(trial) / "trained.log"
    return path.read_text().splitlines()


def test_asha_pauses_at_each_rung_and_resumes_from_the_checkpoint(daemon: Any) -> None:
    spec = daemon.write_spec("asha", ASHA)
    submitted = daemon.ctl_json("submit", str(spec), "--wait")
    sid = submitted["study"]
    assert submitted["state"] == "completed"
    trials = {t["trial"]: t for t in daemon.ctl_json("trials", sid)}
    assert len(trials) == 9
    best = daemon.ctl_json("best", sid)
    assert best["config"] == {"x": 0.3}
    assert best["resource"] == 27
    winner = best["trial"]
    assert trials[winner]["state"] == "completed"
    # Every trial paused at rung 1 at least once; the losers stay paused there or at rung 3.
    assert {t["state"] for i, t in trials.items() if i != winner} <= {"paused", "completed"}
    assert all(t["resource"] in (1, 3, 9, 27) for t in trials.values())
    assert sum(1 for t in trials.values() if t["resource"] >= 3) >= 3
    # The winner was paused at 1, 3 and 9 and each time resumed from its checkpoint, training
    # each step exactly once: the curve is continuous across the resumes.
    log = trained_log(daemon, sid, winner)
    assert [line for line in log if line.startswith("resume")] == [
        "resume 1 checkpoint 1",
        "resume 3 checkpoint 3",
        "resume 9 checkpoint 9",
    ]
    steps = [int(line.split()[1]) for line in log if line.startswith("step")]
    assert steps == list(range(1, 28))
    assert trials[winner]["runs"] == 4
    # Nobody trained a step twice; the whole study trained far less than fifo's 9 x 27.
    total = 0
    for i in trials:
        steps = [int(line.split()[1]) for line in trained_log(daemon, sid, i) if line[0] == "s"]
        assert steps == list(range(1, len(steps) + 1)), (i, steps)
        total += len(steps)
    assert total < 9 * 27 / 2
    show = daemon.ctl("show", sid, check=True).stdout
    assert "rungs:" in show
    detail = daemon.ctl_json("show", sid)
    rung1 = next(r for r in detail["rungs"] if r["level"] == 1)
    assert rung1["reached"] == 9
