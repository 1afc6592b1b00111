"""End to end: the event stream and the decision records (issue 14, items 1 and 4).

A real daemon, real trials, real restarts (SIGTERM and SIGKILL on the same state dir): the stream
loses and repeats nothing across a client reconnect and a daemon restart, ``hpodctl events -f``
prints as things happen, and the decision counts in ``show`` are the same after a restart.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpod.client import Client
from tests.e2e.specs import spec
from tests.e2e.test_promotion import ASHA

pytestmark = pytest.mark.e2e


def stored_events(daemon: Any, sid: str | None = None) -> list[tuple[int, str, int | None]]:
    """(id, kind, trial) of every stored event (of one study), read from the store itself."""
    with sqlite3.connect(Path(daemon.state_dir) / "hpod.sqlite3") as db:
        if sid is None:
            rows = db.execute("SELECT id, kind, trial_id FROM events ORDER BY id").fetchall()
        else:
            rows = db.execute(
                "SELECT id, kind, trial_id FROM events WHERE study_id = ? ORDER BY id", (sid,)
            ).fetchall()
    return [(int(i), str(k), None if t is None else int(t)) for i, k, t in rows]


def decision_rows(daemon: Any, sid: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(Path(daemon.state_dir) / "hpod.sqlite3") as db:
        rows = db.execute(
            "SELECT kind, trial_id, level FROM decisions WHERE study_id = ? ORDER BY id", (sid,)
        ).fetchall()
    return [(str(k), int(t), float(lv)) for k, t, lv in rows]


def launch_counts(detail: dict[str, Any]) -> dict[str, int]:
    d = detail["decisions"]
    return {
        k: d[k] for k in ("asha_promotions", "model_promotions", "random_starts", "model_starts")
    }


@pytest.mark.timeout(240)
def test_decision_counts_survive_sigterm_and_sigkill_restarts(daemon: Any) -> None:
    path = daemon.write_spec("asha", ASHA)
    submitted = daemon.ctl_json("submit", str(path), "--wait")
    sid = submitted["study"]
    assert submitted["state"] == "completed"
    before = launch_counts(daemon.ctl_json("show", sid))
    assert before["asha_promotions"] >= 3
    assert before["random_starts"] == 9
    # One stored record per decision: the launches' counts and the PAUSE / STOP answers.
    rows = decision_rows(daemon, sid)
    kinds = [k for k, _, _ in rows]
    assert {k: kinds.count(k) for k in before if kinds.count(k)} == {
        k: n for k, n in before.items() if n
    }
    assert "pause" in kinds
    listed = daemon.ctl_json("decisions", sid)
    assert [(r["kind"], r["trial"], r["level"]) for r in listed] == rows
    text = daemon.ctl("decisions", sid, check=True).stdout
    assert "asha_promotions" in text
    assert "pause" in text
    for sig in (signal.SIGTERM, signal.SIGKILL):
        daemon.stop(sig)
        daemon.start()
        assert launch_counts(daemon.ctl_json("show", sid)) == before, sig
        assert decision_rows(daemon, sid) == rows


@pytest.mark.timeout(240)
def test_kinds_of_a_study_with_pauses_and_promotions(daemon: Any) -> None:
    path = daemon.write_spec("asha", ASHA)
    sid = daemon.ctl_json("submit", str(path), "--wait")["study"]
    with Client(daemon.socket) as client:
        events = list(client.events(sid, follow=False))
    assert [(e["id"], e["kind"], e["trial"]) for e in events] == stored_events(daemon, sid)
    kinds = {e["kind"] for e in events}
    assert {
        "study_submitted",
        "trial_started",
        "trial_reported",
        "trial_paused",
        "trial_resumed",
        "trial_ended",
        "new_best",
        "limit_reached",
        "study_ended",
    } <= kinds
    assert events[-1]["kind"] == "study_ended"
    assert events[-1]["data"]["state"] == "completed"
    assert events[-2]["kind"] == "limit_reached"
    assert "max_trials" in events[-2]["data"]["reason"]
    trials = {t["trial"]: t for t in daemon.ctl_json("trials", sid)}
    ended = [e for e in events if e["kind"] == "trial_ended"]
    for e in ended:
        t = trials[e["trial"]]
        assert e["data"]["state"] == t["state"]
        assert e["data"]["objective"] == pytest.approx(t["objective"])
        assert e["data"]["resource"] == t["resource"]
        assert e["data"]["returncode"] == 0
    # The last new_best is the study's best.
    best = daemon.ctl_json("best", sid)
    last_best = [e for e in events if e["kind"] == "new_best"][-1]["data"]
    assert (last_best["trial"], last_best["config"]) == (best["trial"], best["config"])
    assert last_best["objective"] == pytest.approx(best["objective"])
    # A promotion resumes the trial from its rung; each trial starts once.
    started = [e["trial"] for e in events if e["kind"] == "trial_started"]
    assert sorted(started) == list(range(9))
    resumed = [e for e in events if e["kind"] == "trial_resumed"]
    assert len(resumed) == launch_counts(daemon.ctl_json("show", sid))["asha_promotions"]
    assert all(e["data"]["resume_from"] > 0 for e in resumed)


@pytest.mark.timeout(120)
def test_trial_reported_is_rate_limited(daemon: Any) -> None:
    text = spec(
        "fast", steps=200, delay=0.01, limits="max_trials = 1", points="partial_grid = true"
    )
    sid = daemon.ctl_json("submit", str(daemon.write_spec("fast", text)), "--wait")["study"]
    with Client(daemon.socket) as client:
        events = list(client.events(sid, follow=False))
    reported = [e["at"] for e in events if e["kind"] == "trial_reported"]
    # 200 reports over about 2 s: a handful of events, at least 0.5 s apart.
    assert 2 <= len(reported) <= 10, len(reported)
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(reported))


@pytest.mark.timeout(240)
def test_stream_loses_and_repeats_nothing_across_reconnect_and_sigkill(daemon: Any) -> None:
    # 9 trials of 6 steps, 0.1 s each, two at a time: about 3 s of events to kill the daemon in.
    text = spec("stream", steps=6, delay=0.1)
    sid = daemon.ctl_json("submit", str(daemon.write_spec("stream", text)))["study"]
    client = Client(daemon.socket)
    # A client reconnect: a stream closed after a few events, a new one from its cursor.
    first = client.events(sid)
    head = [next(first) for _ in range(5)]
    first.close()
    seen: list[dict[str, Any]] = list(head)
    errors: list[BaseException] = []
    got_some = threading.Event()

    def follow() -> None:
        try:
            for event in client.events(sid, after=head[-1]["id"]):
                seen.append(event)
                if sum(e["kind"] == "trial_ended" for e in seen) >= 2:
                    got_some.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            got_some.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert got_some.wait(60)
    # Mid-stream: the daemon killed, then started again on the same state dir.
    daemon.stop(signal.SIGKILL)
    killed_at = len(seen)
    daemon.start()
    thread.join(120)
    assert not thread.is_alive()
    assert not errors, errors
    assert len(seen) > killed_at  # it went on after the restart
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids))  # none twice, in order
    assert [(e["id"], e["kind"], e["trial"]) for e in seen] == stored_events(daemon, sid)
    assert seen[-1]["kind"] == "study_ended"
    trials = daemon.ctl_json("trials", sid)
    assert sum(e["kind"] == "trial_ended" for e in seen) == len(trials) == 12
    client.close()


@pytest.mark.timeout(120)
def test_hpodctl_events_follow_prints_as_they_happen(daemon: Any) -> None:
    # Trials 0 and up wait for the file `go`: the study cannot end before the test opens it.
    text = spec("gated", extra='gate = { param_type = "choice", range = [0] }')
    sid = daemon.ctl_json("submit", str(daemon.write_spec("gated", text)))["study"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", daemon.socket, "events", sid, "-f"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        # Printed while the trials are still held at the gate.
        assert "study_submitted" in lines[0]
        assert all("trial_started" in line for line in lines[1:]), lines
        assert daemon.ctl_json("show", sid)["state"] == "running"
        (Path(daemon.state_dir) / "studies" / sid / "go").touch()
        rest = proc.stdout.read()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    out = rest.splitlines()
    assert "study_ended" in out[-1]
    assert "state=completed" in out[-1]
    assert sum("trial_ended" in line for line in lines + out) == 12


@pytest.mark.timeout(60)
def test_events_wire_method_long_polls_and_checks_its_params(daemon: Any) -> None:
    text = spec("poll", extra='gate = { param_type = "choice", range = [0] }')
    sid = daemon.ctl_json("submit", str(daemon.write_spec("poll", text)))["study"]
    with Client(daemon.socket) as client:
        page = client.call("events", {"study": sid})
        assert page["events"][0]["kind"] == "study_submitted"
        cursor = page["cursor"]
        assert cursor == page["events"][-1]["id"]
        # Nothing new: a timeout of 0 answers at once, a long poll at its end.
        started = time.monotonic()
        assert client.call("events", {"study": sid, "after": cursor, "timeout": 0.3}) == {
            "events": [],
            "cursor": cursor,
            "next": None,  # not a full page: nothing more to read at once
        }
        assert time.monotonic() - started >= 0.3
        everyone = client.call("events", {"after": 0, "limit": 1})
        assert len(everyone["events"]) == 1
        for bad in ({"after": -1}, {"after": "x"}, {"limit": 0}, {"timeout": -1}):
            with pytest.raises(Exception, match="parameter"):
                client.call("events", {"study": sid, **bad})
        (Path(daemon.state_dir) / "studies" / sid / "go").touch()
        client.wait(sid, timeout=60)


# A trial that is told STOP at its only step, then hangs (SIGTERM ignored) until killed.
TOLD_THEN_HANG = """
import os, signal, time
from pathlib import Path
from hpod import trial
signal.signal(signal.SIGTERM, signal.SIG_IGN)
decision = trial.report(step=1, loss=0.25)
Path(os.environ["HPOD_TRIAL_DIR"], "told").write_text(f"{decision.value} {os.getpid()}")
while True:
    time.sleep(1)
"""


@pytest.mark.timeout(120)
def test_a_run_that_died_with_its_daemon_after_its_stop_is_told_ended_once(daemon: Any) -> None:
    text = spec("dies", steps=1, grace="60s", limits="max_trials = 1", points="partial_grid = true")
    path = daemon.write_spec("dies", text.replace("trial_quad.py", "hang.py"))
    (path.parent / "hang.py").write_text(TOLD_THEN_HANG)
    sid = daemon.ctl_json("submit", str(path))["study"]
    told = Path(daemon.state_dir) / "studies" / sid / "trials" / "0" / "told"
    deadline = time.monotonic() + 30
    while not (told.exists() and told.read_text()):
        assert time.monotonic() < deadline, "the trial was never told"
        time.sleep(0.02)
    decision, pid = told.read_text().split()
    assert decision == "STOP"
    # The daemon, the trial and its shim killed before the trial's exit was recorded.
    daemon.stop(signal.SIGKILL)
    shim = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.killpg(int(pid), signal.SIGKILL)
    os.kill(shim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in (pid, shim)):  # reaped, not zombies
        assert time.monotonic() < deadline, "the run's processes never went"
        time.sleep(0.02)
    daemon.start()
    assert daemon.ctl_json("wait", sid, "--timeout", "60")["state"] == "completed"
    # The restart ended it as its STOP says, and told the stream so: once, also after another.
    daemon.stop()
    daemon.start()
    kinds = [k for _, k, t in stored_events(daemon, sid) if t == 0]
    assert kinds == ["trial_started", "trial_reported", "new_best", "trial_ended"]
    with Client(daemon.socket) as client:
        ended = [e for e in client.events(sid, follow=False) if e["kind"] == "trial_ended"]
    assert ended[0]["data"]["state"] == "completed"
    assert ended[0]["data"]["returncode"] is None
