"""End to end: a real `hpod serve`, real trial subprocesses, a real store and socket."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hpod import wire
from hpod.errors import ErrorCode, SpecError, TokenRejected
from tests.e2e.specs import spec

pytestmark = pytest.mark.e2e


def grid(extra: str = "", steps: int = 3, points: str = "") -> str:
    return spec(
        "grid",
        extra=extra,
        steps=steps,
        points=points,
        limits="max_concurrent = 2",
        grace="10s",
    )


def test_grid_study_finds_the_known_optimum(daemon: Any) -> None:
    spec = daemon.write_spec("grid", grid())
    submitted = daemon.ctl_json("submit", str(spec), "--wait")
    sid = submitted["study"]
    assert submitted["state"] == "completed"
    best = daemon.ctl_json("best", sid)
    # x in {-0.1, 0.1, 0.3, 0.5}, y in {-0.6, -0.2, 0.2}: the optimum (0.3, -0.2) is a grid point.
    assert best["study"] == sid
    assert best["config"] == {"x": pytest.approx(0.3), "y": -0.2}
    # Its loss is 1/step there: ranked by the mean of its reports (1, 1/2, 1/3), the last beside.
    assert best["objective"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert best["last"] == pytest.approx(1 / 3)
    assert best["window"] == 3
    trials = daemon.ctl_json("trials", sid)
    assert len(trials) == 12
    assert {t["state"] for t in trials} == {"completed"}
    mine = next(t for t in trials if t["trial"] == best["trial"])
    assert (mine["objective"], mine["last"]) == (best["objective"], best["last"])
    human = daemon.ctl("best", sid, check=True).stdout
    assert "objective  0.611111 (mean of its last 3 reports)\n" in human
    assert "last       0.333333 (its last report)\n" in human
    assert "0.3" in human
    assert "-0.2" in human


def test_failing_trial_is_recorded_and_the_study_goes_on(daemon: Any) -> None:
    spec = daemon.write_spec(
        "crash", grid(extra='crash = { param_type = "choice", range = [false, true] }', steps=2)
    )
    sid = daemon.ctl_json("submit", str(spec), "--wait")["study"]
    trials = daemon.ctl_json("trials", sid)
    failed = [t for t in trials if t["state"] == "failed"]
    done = [t for t in trials if t["state"] == "completed"]
    assert len(failed) == 12
    assert len(done) == 12
    assert all(t["config"]["crash"] for t in failed)
    assert "status 3" in failed[0]["error"]
    show = daemon.ctl("show", sid, check=True).stdout
    assert "boom: deliberate failure for the tests" in show
    detail = daemon.ctl_json("show", sid)
    assert detail["state"] == "completed"
    assert "boom" in detail["failures"][0]["stderr_tail"]
    logs = daemon.ctl("logs", sid, str(failed[0]["trial"]), check=True).stdout
    assert "boom" in logs


def test_bad_spec_names_every_mistake_and_creates_nothing(daemon: Any) -> None:
    bad = grid().replace('mode = "min"', 'mode = "minimum"')
    bad = bad.replace("range = [-0.1, 0.5, 0.2]", "range = [0.5, -0.1, 0.2]")
    bad = bad.replace("max_concurrent = 2", "max_concurrent = -2")
    spec = daemon.write_spec("bad", bad)
    res = daemon.ctl("submit", str(spec))
    assert res.returncode == ErrorCode.INVALID_SPEC.exit_status
    assert "3 problems" in res.stderr
    for path in ("objective.mode", "space.x.range", "limits.max_concurrent"):
        assert path in res.stderr, res.stderr
    # The daemon checks again for clients that skip the local check.
    with wire.SyncConnection(daemon.socket, client="test") as conn:
        with pytest.raises(SpecError) as info:
            conn.call("submit", {"spec": bad, "base_dir": str(spec.parent)})
        assert len(info.value.problems) == 3
        assert conn.call("studies") == []
    assert not (daemon.state_dir / "studies").exists() or not any(
        (daemon.state_dir / "studies").iterdir()
    )


def _raw(path: str) -> tuple[socket.socket, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock, sock.makefile("rb")


def _ask(sock: socket.socket, reader: Any, payload: bytes) -> dict[str, Any]:
    sock.sendall(payload)
    line = reader.readline()
    assert line, "the daemon closed the connection"
    obj: dict[str, Any] = json.loads(line)
    return obj


def test_garbage_and_overlong_lines_get_errors_and_the_daemon_keeps_serving(daemon: Any) -> None:
    sock, reader = _raw(daemon.socket)
    hello = wire.Request(1, "hello", {"protocol": 1, "client": "test"}).line()
    assert "result" in _ask(sock, reader, hello)
    garbage = _ask(sock, reader, b"this is not json\n")
    assert garbage["error"]["code"] == ErrorCode.PARSE_ERROR
    not_rpc = _ask(sock, reader, b'{"hello": 1}\n')
    assert not_rpc["error"]["code"] == ErrorCode.INVALID_REQUEST
    bad_utf8 = _ask(sock, reader, b'{"jsonrpc": "2.0", "id": 3, "method": "\xff"}\n')
    assert bad_utf8["error"]["code"] == ErrorCode.PARSE_ERROR
    # A line over the 1 MiB cap: answered once, discarded, and the connection goes on.
    huge = (
        b'{"jsonrpc":"2.0","id":4,"method":"ping","params":{"pad":"' + b"x" * (2 << 20) + b'"}}\n'
    )
    too_long = _ask(sock, reader, huge)
    assert too_long["error"]["code"] == ErrorCode.LINE_TOO_LONG
    after = _ask(sock, reader, wire.Request(5, "ping", {}).line())
    assert after["id"] == 5
    assert after["result"]["pong"] is True
    # Meanwhile another client is served as usual.
    assert daemon.ctl_json("ping")["pong"] is True
    sock.close()


def test_calls_before_hello_are_refused(daemon: Any) -> None:
    sock, reader = _raw(daemon.socket)
    early = _ask(sock, reader, wire.Request(1, "studies", {}).line())
    assert early["error"]["code"] == ErrorCode.HELLO_REQUIRED
    sock.close()


def test_report_with_a_wrong_token_is_refused_and_not_stored(daemon: Any) -> None:
    spec = daemon.write_spec(
        "tok",
        grid(steps=60, points="points_to_evaluate = [{ x = 0.3, y = -0.2, delay = 0.05 }]").replace(
            "[space]", '[space]\ndelay = { param_type = "choice", range = [0.05] }'
        ),
    )
    sid = daemon.ctl_json("submit", str(spec))["study"]
    # Wait for the first trial's first acknowledged report: then it is running with a token.
    acked = daemon.state_dir / "studies" / sid / "trials" / "0" / "acked.log"
    with wire.SyncConnection(daemon.socket, client="test", timeout=30) as conn:
        conn.call("wait", {"study": sid, "timeout": 0.5})
        while not acked.exists():
            conn.call("wait", {"study": sid, "timeout": 0.2})
        for token in ("0" * 32, "", None):
            with pytest.raises(TokenRejected):
                conn.call(
                    "trial.report",
                    {
                        "study": sid,
                        "trial": 0,
                        "token": token,
                        "metrics": {"step": 1000, "loss": -1e9},
                    },
                )
        conn.call("stop", {"study": sid})
    db = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    forged = db.execute("SELECT COUNT(*) FROM reports WHERE resource >= 1000").fetchone()[0]
    db.close()
    assert forged == 0


def test_hpodctl_without_a_daemon_says_how_to_start_one(daemon_factory: Any) -> None:
    handle = daemon_factory(start=False)
    res = handle.ctl("ls")
    assert res.returncode == ErrorCode.UNAVAILABLE.exit_status
    assert "hpod serve --socket" in res.stderr


def _acked(root: Path) -> set[tuple[str, int, int]]:
    out = set()
    for log in root.glob("studies/*/trials/*/acked.log"):
        for line in log.read_text().splitlines():
            sid, tid, step = line.split()
            out.add((sid, int(tid), int(step)))
    return out


def test_sigterm_mid_study_then_restart_finishes_and_loses_no_report(daemon: Any) -> None:
    spec = daemon.write_spec(
        "restart",
        grid(steps=8).replace(
            "[space]", '[space]\ndelay = { param_type = "choice", range = [0.05] }'
        ),
    )
    sid = daemon.ctl_json("submit", str(spec))["study"]
    # Let it get partway: wait until some trial has finished.
    while True:
        # Not completed yet: `wait` exits 9 with the summary so far.
        summary = json.loads(daemon.ctl("wait", sid, "--timeout", "0.3", "--json").stdout)
        if summary["trials"].get("completed", 0) >= 3:
            break
    assert daemon.stop() == 0
    db = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    states = dict(db.execute("SELECT trial_id, state FROM trials WHERE study_id = ?", (sid,)))
    db.close()
    assert "interrupted" in states.values(), states
    assert "running" not in states.values()
    before = _acked(daemon.state_dir)

    daemon.start()
    final = daemon.ctl_json("wait", sid, timeout=120)
    assert final["state"] == "completed"
    trials = daemon.ctl_json("trials", sid)
    assert len(trials) == 12
    assert {t["state"] for t in trials} == {"completed"}
    resumed = [t for t in trials if t["runs"] > 1]
    assert resumed, "an interrupted trial should have been run again"
    assert all(t["resource"] == 8 for t in trials)

    db = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    stored = {
        (s, t, int(r)) for s, t, r in db.execute("SELECT study_id, trial_id, resource FROM reports")
    }
    db.close()
    after = _acked(daemon.state_dir)
    assert before <= after
    assert after <= stored, f"acknowledged but not stored: {sorted(after - stored)[:5]}"
