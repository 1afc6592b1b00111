"""End to end: a study with two objectives on real trials, ASHA with promotion: trials pause at
the rungs and are promoted by Pareto rank, and `hpodctl best` shows the front."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hpod.core.pareto import pareto_front, pareto_order

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
ETA = 3
LEVELS = (1.0, 3.0)  # the rungs; 9 is max_resource
XS = [0.1, 0.9, 0.5, 1.2, 0.3, 1.0, 0.7, 1.4, 0.0]

SPEC = f"""
name = "two"
command = ["python", "trial_two.py"]

[objective]
resource = "step"
[[objective.metrics]]
name = "err"
mode = "min"
[[objective.metrics]]
name = "lat"
mode = "min"

[space]
x = {{ param_type = "choice", range = {XS} }}

[scheduler]
type = "asha"
rung_type = "promotion"
min_resource = 1
max_resource = 9
reduction_factor = {ETA}

[searcher]
type = "grid"

[limits]
max_trials = 9
max_concurrent = 1
"""


def store_rows(daemon: Any, sid: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with sqlite3.connect(Path(daemon.state_dir) / "hpod.sqlite3") as db:
        reports = db.execute(
            "SELECT trial_id, resource, metrics, at FROM reports"
            " WHERE study_id = ? AND counted = 1 ORDER BY id",
            (sid,),
        ).fetchall()
        decisions = db.execute(
            "SELECT kind, trial_id, level, at FROM decisions WHERE study_id = ? ORDER BY id",
            (sid,),
        ).fetchall()
    return reports, decisions


def test_two_objectives_promote_by_pareto_rank_and_best_is_the_front(daemon: Any) -> None:
    folder = daemon.root / "two"
    folder.mkdir()
    shutil.copy(HERE / "trial_two.py", folder / "trial_two.py")
    (folder / "study.toml").write_text(SPEC)
    submitted = daemon.ctl_json("submit", str(folder / "study.toml"), "--wait", timeout=120)
    sid = submitted["study"]
    assert submitted["state"] == "completed"
    reports, decisions = store_rows(daemon, sid)
    trials = {t["trial"]: t for t in daemon.ctl_json("trials", sid)}
    assert len(trials) == 9
    # Every trial paused at rung 1 (max_resource 1 at first); the views carry each metric.
    assert all(set(t["values"]) == {"err", "lat"} for t in trials.values())
    assert {t["state"] for t in trials.values()} <= {"paused", "completed"}

    promotions = [d for d in decisions if d[0].endswith("_promotions")]
    assert promotions, decisions
    assert all(d[0] == "asha_promotions" for d in promotions)
    checked = 0
    for _kind, tid, to_level, at in promotions:
        rung = max(level for level in LEVELS if level < to_level)
        # What the study knew then: the counted reports stored before the decision (one trial
        # runs at a time, so nothing was in flight), at this rung.
        seen: dict[int, tuple[float, float]] = {}
        for r_tid, resource, metrics, r_at in reports:
            if r_at < at and resource == rung:
                m = json.loads(metrics)
                seen[r_tid] = (float(m["err"]), float(m["lat"]))
        started = sum(1 for d in decisions if d[0].endswith("_starts") and d[3] < at)
        promoted_before = {d[1] for d in promotions if d[3] < at and d[2] > rung}
        ids = sorted(seen)
        order = [ids[i] for i in pareto_order([seen[i] for i in ids], ids)]
        quota = math.floor(len(ids) / ETA + 1e-9)
        if started >= 9:  # no new trial can start: the best one goes on regardless
            quota = max(quota, 1)
        eligible = [i for i in order[:quota] if i not in promoted_before]
        assert eligible, (tid, to_level, order, quota)
        assert tid == eligible[0], (tid, to_level, order, quota, promoted_before)
        checked += 1
    assert checked >= 3

    # The front: every trial's values where it got to (its last counted report), non-dominated.
    last: dict[int, tuple[float, float]] = {}
    for r_tid, _resource, metrics, _at in reports:
        m = json.loads(metrics)
        last[r_tid] = (float(m["err"]), float(m["lat"]))
    ids = sorted(last)
    expected = {ids[i] for i in pareto_front([last[i] for i in ids])}
    front = daemon.ctl_json("best", sid)
    assert isinstance(front, list)
    assert {b["trial"] for b in front} == expected
    for b in front:
        assert (b["values"]["err"], b["values"]["lat"]) == last[b["trial"]]
        assert b["config"] == {"x": XS[b["trial"]]}
    # x past 0.8 is dominated by a trial nearer 0.8 wherever it stopped
    assert all(XS[b["trial"]] <= 0.9 for b in front)
    text = daemon.ctl("best", sid, check=True).stdout
    assert "Pareto front" in text
    header = next(line for line in text.splitlines() if line.startswith("TRIAL"))
    assert header.split()[:4] == ["TRIAL", "ERR", "LAT", "RESOURCE"]
    show = daemon.ctl("show", sid, check=True).stdout
    assert "objective min err, min lat over step" in show
    assert f"front     {len(front)} trials" in show
    report = daemon.ctl_json("report", sid)
    assert {b["trial"] for b in report["front"]} == expected
    assert report["top_k"][0]["front"] == 0
    top = daemon.ctl_json("best", sid, "-k", "9")
    assert [t["front"] for t in top] == sorted(t["front"] for t in top)
    assert {t["trial"] for t in top if t["front"] == 0} == expected
    text = daemon.ctl("best", sid, "-k", "9", check=True).stdout
    assert text.split()[:5] == ["RANK", "TRIAL", "FRONT", "ERR", "LAT"]
    text = daemon.ctl("trials", sid, check=True).stdout
    assert text.split()[:5] == ["TRIAL", "STATE", "RESOURCE", "ERR", "LAT"]
    # The Python library: the front, and top-k rows with each metric as ClearML's metrics.
    from hpod.optimizer import Optimizer

    with Optimizer.attach(sid, socket_path=daemon.socket) as opt:
        assert opt.front() == front
        assert opt.top(3)[0]["metrics"] == top[0]["values"]
    # A restarted daemon rebuilds every metric's values from the store: the same front.
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.ctl_json("best", sid) == front


def test_new_best_events_name_trials_joining_the_front(daemon: Any) -> None:
    folder = daemon.root / "two"
    folder.mkdir()
    shutil.copy(HERE / "trial_two.py", folder / "trial_two.py")
    (folder / "study.toml").write_text(SPEC.replace('type = "asha"', 'type = "fifo"'))
    sid = daemon.ctl_json("submit", str(folder / "study.toml"), "--wait", timeout=120)["study"]
    with sqlite3.connect(Path(daemon.state_dir) / "hpod.sqlite3") as db:
        rows = db.execute(
            "SELECT trial_id, data FROM events WHERE study_id = ? AND kind = 'new_best'", (sid,)
        ).fetchall()
    announced = {tid for tid, _ in rows}
    front = {b["trial"] for b in daemon.ctl_json("best", sid)}
    # every trial of the final front joined it with a new_best; x = 1.2, 1.0, 1.4 (trials 3,
    # 5, 7) never did: x = 0.9 (trial 1, run to the end before them) beats them on both
    assert front <= announced
    assert not announced & {3, 5, 7}
    assert all("values" in json.loads(data) for _, data in rows)
