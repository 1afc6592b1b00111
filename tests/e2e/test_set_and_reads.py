"""End to end (issue 14, items 2 and 3): a running study changed with `set`, and the reads a
controller needs (`top`, `trial`, `show --json` limits_detail and deadline), against a real daemon
and checked against its store."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from hpod.client import Client
from hpod.errors import BadState, InvalidParams
from tests.e2e.specs import spec

pytestmark = pytest.mark.e2e


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def running(client: Client, sid: str) -> int:
    return sum(1 for t in client.trials(sid) if t["state"] == "running")


def store_rows(daemon: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def test_a_shortened_optimization_time_ends_the_study_at_the_new_limit(
    daemon_factory: Any,
) -> None:
    d = daemon_factory(slots=2)
    path = d.write_spec(
        "short", spec("short", steps=1000, delay=0.2, limits='optimization_time = "1h"', grace="2s")
    )
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        until(lambda: running(c, sid) == 2, 30, "two running trials")
        result = c.set(sid, optimization_time="6s")
        assert result["changes"][-1]["key"] == "optimization_time"
        assert result["changes"][-1]["value"] == 6.0
        assert result["changes"][-1]["from"] == 3600.0
        detail = c.study(sid)
        assert detail["limits_detail"]["optimization_time"]["limit"] == 6.0
        assert 0.0 < detail["limits_detail"]["optimization_time"]["used"] < 6.0
        summary = c.wait(sid, timeout=60)
    detail = d.ctl_json("show", sid)
    took = detail["ended"] - detail["created"]
    print(f"shortened to 6s: the study ended after {took:.2f}s (limit 6s + grace 2s + 1s)")
    assert summary["state"] == "completed"
    assert detail["end_reason"] == "optimization_time limit of 6s reached"
    assert detail["elapsed"] >= 6.0
    assert took <= 6.0 + 2.0 + 1.0
    shown = d.ctl("show", sid, check=True).stdout
    assert "optimization_time 1h00m -> 6s" in shown
    # An ended study takes no more changes.
    with Client(d.socket) as c, pytest.raises(BadState, match="has ended"):
        c.set(sid, optimization_time="1h")


def test_a_raised_max_concurrent_takes_effect_at_once(daemon_factory: Any) -> None:
    d = daemon_factory(slots=3)
    path = d.write_spec(
        "conc", spec("conc", steps=1000, delay=0.2, limits="max_concurrent = 1", grace="1s")
    )
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        until(lambda: running(c, sid) == 1, 30, "one running trial")
        d.ctl("set", sid, "max_concurrent=3", check=True)
        until(lambda: running(c, sid) == 3, 10, "three running trials")
        assert c.study(sid)["spec"]["limits"]["max_concurrent"] == 3
        # The report period (1m in the spec) shortened: report.json is due at once, not in 1m.
        report = d.state_dir / "studies" / sid / "report.json"
        assert not report.exists()
        c.set(sid, report_period="1s")
        first = until(lambda: report.exists() and report.stat().st_mtime_ns, 5, "a report")
        until(lambda: report.stat().st_mtime_ns > first, 5, "the next report, 1 s later")
        c.stop(sid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_change_survives_a_restart(daemon_factory: Any, sig: signal.Signals) -> None:
    d = daemon_factory(slots=2)
    path = d.write_spec(
        "keep",
        spec(
            "keep",
            steps=1000,
            delay=0.2,
            limits='optimization_time = "1h"\nmax_concurrent = 1',
            grace="1s",
        ),
    )
    deadline = time.time() + 3600
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        until(lambda: running(c, sid) == 1, 30, "one running trial")
        c.set(
            sid,
            optimization_time="30m",
            max_concurrent=2,
            priority=3,
            report_period="5s",
            max_trials=50,
            deadline=deadline,
        )
        before = c.study(sid)
    d.stop(sig)
    stored = json.loads(store_rows(d, "SELECT changes FROM studies WHERE id = ?", sid)[0][0])
    assert [ch["key"] for ch in stored] == [
        "optimization_time",
        "max_concurrent",
        "priority",
        "report_period",
        "max_trials",
        "deadline",
    ]
    # The change is an event of the study's stream too, stored with it.
    (told,) = store_rows(
        d, "SELECT data FROM events WHERE study_id = ? AND kind = 'study_changed'", sid
    )
    assert [ch["key"] for ch in json.loads(told[0])["changes"]] == [ch["key"] for ch in stored]
    d.start()
    with Client(d.socket) as c:
        after = c.study(sid)
        assert after["spec"]["limits"] == before["spec"]["limits"]
        assert after["spec"]["limits"]["max_concurrent"] == 2
        assert after["spec"]["limits"]["optimization_time"] == 1800.0
        assert after["spec"]["limits"]["max_trials"] == 50
        assert after["spec"]["priority"] == 3
        assert after["spec"]["report"]["period"] == 5.0
        assert after["deadline"] == pytest.approx(deadline)
        assert after["changes"] == before["changes"]
        until(lambda: running(c, sid) == 2, 30, "two running trials after the restart")
        c.stop(sid)


def test_a_deadline_in_the_past_ends_a_running_study(daemon_factory: Any) -> None:
    d = daemon_factory(slots=1)
    path = d.write_spec("dl", spec("dl", steps=1000, delay=0.2, grace="1s"))
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        until(lambda: running(c, sid) == 1, 30, "a running trial")
        with pytest.raises(InvalidParams, match="max_trials"):
            c.set(sid, max_trials=0)
        c.set(sid, deadline="2020-01-01T00:00:00+00:00")
        summary = c.wait(sid, timeout=30)
    assert summary["state"] == "completed"
    assert summary["end_reason"].startswith("deadline of 2020-01-01")


def test_top_and_trial_match_the_store(daemon_factory: Any) -> None:
    d = daemon_factory(slots=2)
    path = d.write_spec("reads", spec("reads", steps=3))
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        c.wait(sid, timeout=90)
        trials = c.trials(sid)
        top = c.top(sid, k=100, all_metrics=True)
        top2 = c.top(sid, k=2, only_completed=True)
        one = c.trial(sid, top[0]["trial"], curve=True)
        plain = c.trial(sid, top[0]["trial"])
        with pytest.raises(InvalidParams, match="'k'"):
            c.top(sid, k=0)
    assert len(top) == len(trials) == 12
    assert [t["rank"] for t in top] == list(range(1, 13))
    values = [t["objective"] for t in top]
    assert values == sorted(values)
    assert [t["trial"] for t in top2] == [t["trial"] for t in top[:2]]
    assert all(t["state"] == "completed" for t in top2)
    best = d.ctl_json("best", sid)
    assert top[0]["trial"] == best["trial"]
    assert top[0]["objective"] == best["objective"]
    rows = store_rows(
        d, "SELECT trial_id, metrics, resource FROM reports WHERE study_id = ? ORDER BY id", sid
    )
    last: dict[int, dict[str, Any]] = {}
    curves: dict[int, list[tuple[float, float]]] = {}
    for tid, text, resource in rows:
        metrics = json.loads(text)
        last[tid] = metrics
        curves.setdefault(tid, []).append((resource, metrics["loss"]))
    for t in top:
        assert t["metrics"] == last[t["trial"]]
    tid = top[0]["trial"]
    losses = [v for _, v in curves[tid]]
    assert one["metrics"]["loss"]["last"] == losses[-1]
    assert one["metrics"]["loss"]["min"] == min(losses)
    assert one["metrics"]["loss"]["max"] == max(losses)
    assert [tuple(p) for p in one["metrics"]["loss"]["curve"]] == curves[tid]
    assert one["metrics"]["step"]["max"] == 3
    assert "curve" not in plain["metrics"]["loss"]
    assert math.isclose(plain["objective"], top[0]["objective"])
    out = d.ctl("best", sid, "-k", "3", "--completed", check=True).stdout
    assert out.splitlines()[0].split()[:3] == ["RANK", "TRIAL", "OBJECTIVE"]
    assert len(out.splitlines()) == 4
