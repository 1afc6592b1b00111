"""Ask/tell end to end (issue 14, item 6): a study whose trials the test launches itself.

The daemon hands a trial out (`ask`); the test starts it as a process of its own
(subprocess.Popen, with the handed environment) running a real trial script that reports with
hpod.trial, and tells its end (`tell(final=True)`). One trial is abandoned after its first
report: its lease runs out, it is recorded interrupted and handed out again, resumed. One is
told only a final value, with no process at all. A handed-out trial survives a daemon restart
(SIGTERM and SIGKILL): the new daemon takes its reports, and its token, as the old one did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpod import Client
from hpod.errors import BadState, HpodError, InvalidParams, TokenRejected
from tests.e2e.conftest import HERE, DaemonHandle

e2e = pytest.mark.e2e

SPEC = """
name = "{name}"
reconnect_timeout = "60s"
stop_grace_period = "5s"

[executor]
type = "external"
lease = "{lease}"

[objective]
metric = "loss"
mode = "min"
resource = "epoch"

[space]
x = {{ param_type = "quniform", range = [0.0, 0.6, 0.1] }}

[scheduler]
type = "fifo"
max_resource = {steps}

[searcher]
type = "random"
seed = 3

[limits]
max_trials = {trials}
max_concurrent = 2
"""

LOCAL_SPEC = """
name = "local"
command = ["python", "trial_quad.py"]

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = { param_type = "uniform", range = [0.0, 1.0] }

[scheduler]
type = "fifo"
max_resource = 1
"""


def _submit(daemon: DaemonHandle, client: Client, name: str, **knobs: Any) -> str:
    values = {"name": name, "lease": "1m", "steps": 3, "trials": 4, **knobs}
    path = daemon.write_spec(name, SPEC.format(**values))
    return str(client.submit(path)["study"])


def _launch(handed: dict[str, Any], mode: str = "normal") -> subprocess.Popen[bytes]:
    """The trial, started here as the caller likes: the handed env over this process's own."""
    env = {**os.environ, **handed["env"]}
    return subprocess.Popen(
        [sys.executable, str(HERE / "trial_external.py"), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")


def _trial(client: Client, study: str, tid: int) -> dict[str, Any]:
    return next(t for t in client.trials(study) if t["trial"] == tid)


def _poll(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _generation(daemon: DaemonHandle) -> str | None:
    """The generation of the daemon answering on the socket; None while none answers."""
    try:
        with Client(daemon.socket, timeout=5) as client:
            return str(client.ping()["generation"])
    except HpodError:
        return None


def _log(daemon: DaemonHandle, study: str, tid: int) -> list[dict[str, Any]]:
    path = daemon.state_dir / "studies" / study / "trials" / str(tid) / "external.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


@e2e
@pytest.mark.timeout(180)
def test_ask_tell_study_with_an_abandoned_trial_and_a_told_value(daemon_factory: Any) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        sid = _submit(daemon, client, "ext", lease="4s")
        first = client.ask(sid)
        assert first is not None
        assert first["trial"] == 0
        assert first["resume_from"] == 0
        assert first["max_resource"] == 3
        env = first["env"]
        assert env["HPOD_STUDY"] == sid
        assert env["HPOD_TRIAL"] == "0"
        assert env["HPOD_TOKEN"] == first["token"]
        assert json.loads(env["HPOD_CONFIG"]) == first["config"]
        assert env["HPOD_RESUME_FROM"] == "0"
        assert env["HPOD_MAX_RESOURCE"] == "3"
        assert env["HPOD_RECONNECT_TIMEOUT"] == "60"
        assert Path(env["HPOD_CHECKPOINT_DIR"]).is_dir()  # made, the submitter's, as a launch
        assert set(env) == {
            "HPOD_SOCKET",
            "HPOD_STUDY",
            "HPOD_TRIAL",
            "HPOD_TOKEN",
            "HPOD_CONFIG",
            "HPOD_CHECKPOINT_DIR",
            "HPOD_TRIAL_DIR",
            "HPOD_RESUME_FROM",
            "HPOD_MAX_RESOURCE",
            "HPOD_RECONNECT_TIMEOUT",
        }
        # One CPU slot in the daemon, and none taken: two trials out at once (max_concurrent).
        normal = _launch(first)
        second = client.ask(sid)
        assert second is not None
        assert second["trial"] == 1
        abandoned = _launch(second, "abandon")
        assert client.ask(sid) is None  # max_concurrent = 2 trials are out
        assert client.ping()["free_slots"] == 1
        assert client.study(sid)["devices"]["kind"] == "external"

        _finish(abandoned)  # reported epoch 1, then its caller forgot it
        _finish(normal)
        assert client.tell(sid, 0, first["token"], final=True) == {"decision": None, "final": True}
        done = _trial(client, sid, 0)
        assert done["state"] == "completed"
        assert done["resource"] == 3
        with pytest.raises(TokenRejected):  # its run has ended: the token is spent
            client.tell(sid, 0, first["token"], {"epoch": 3, "loss": 1.0})

        # Only a final value: no process, no report before it.
        third = client.ask(sid)
        assert third is not None
        assert third["trial"] == 2
        told = client.tell(sid, 2, third["token"], {"loss": 0.125}, final=True)
        assert told == {
            "decision": "STOP",
            "final": True,
        }  # at max_resource (3), where the trial ends
        value = _trial(client, sid, 2)
        assert value["state"] == "completed"
        assert value["resource"] == 3
        assert value["objective"] == 0.125

        # The abandoned one: its lease (4 s: longer than a python start on a loaded machine)
        # runs out, it is taken back and handed out again.
        taken = _poll(
            "the abandoned trial's lease to run out",
            lambda: _trial(client, sid, 1)["state"] == "interrupted",
        )
        assert taken
        again = _poll("trial 1 handed out again", lambda: client.ask(sid))
        assert again["trial"] == 1
        assert again["resume_from"] == 1
        assert again["token"] != second["token"]
        with pytest.raises(TokenRejected):  # the forgotten run's token no longer reports
            client.tell(sid, 1, second["token"], {"epoch": 2, "loss": 0.5})
        resumed = _launch(again)
        fourth = client.ask(sid)
        assert fourth is not None
        assert fourth["trial"] == 3
        last = _launch(fourth)
        _finish(resumed)
        _finish(last)
        client.tell(sid, 1, again["token"], final=True)
        client.tell(sid, 3, fourth["token"], final=True)

        summary = client.wait(sid, timeout=30)
        assert summary["state"] == "completed", summary
        assert client.ask(sid) is None  # the study is over
        trials = {t["trial"]: t for t in client.trials(sid)}
        assert [trials[i]["state"] for i in range(4)] == ["completed"] * 4
        assert trials[1]["runs"] == 2
        assert trials[1]["resource"] == 3
        # The resumed run trained epochs 2 and 3 only; epoch 1 was trained once, by the first.
        trained = [e["epoch"] for e in _log(daemon, sid, 1) if e["event"] == "trained"]
        assert trained == [1, 2, 3]
        best = client.best(sid)
        assert best["objective"] == min(
            t["objective"] for t in trials.values() if t["objective"] is not None
        )


@e2e
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP], ids=["sigterm", "sigkill", "sighup"]
)
@pytest.mark.timeout(180)
def test_a_handed_out_trial_survives_a_daemon_restart(daemon_factory: Any, sig: int) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        sid = _submit(daemon, client, "keep", steps=4, trials=1)
        handed = client.ask(sid)
        assert handed is not None
    proc = _launch(handed, "gated")
    folder = Path(handed["env"]["HPOD_TRIAL_DIR"])
    with Client(daemon.socket) as client:
        _poll("the first report", lambda: _trial(client, sid, 0)["resource"] == 1)
        before = client.ping()["generation"]
    if sig == signal.SIGHUP:  # re-executed in place: the same pid, a new image
        assert daemon.proc is not None
        daemon.proc.send_signal(sig)
        _poll("the re-executed daemon", lambda: _generation(daemon) not in (None, before))
    else:
        daemon.stop(sig)
        daemon.start()
    (folder / "go").touch()  # its next reports go to the new daemon
    with Client(daemon.socket) as client:
        shown = client.study(sid)
        assert shown["adopted"] == [0]
        assert shown["running"] == [0]
        _finish(proc)
        client.tell(sid, 0, handed["token"], final=True)
        summary = client.wait(sid, timeout=30)
        assert summary["state"] == "completed", summary
        rec = _trial(client, sid, 0)
        assert rec["state"] == "completed"
        assert rec["runs"] == 1
        assert rec["resource"] == 4
    events = _log(daemon, sid, 0)
    assert [e["epoch"] for e in events if e["event"] == "trained"] == [1, 2, 3, 4]
    assert [e["decision"] for e in events if e["event"] == "answer"] == [
        "CONTINUE",
        "CONTINUE",
        "CONTINUE",
        "STOP",
    ]
    assert len({e["pid"] for e in events}) == 1  # one process: never relaunched


@e2e
def test_ask_and_tell_refuse_what_is_not_theirs(daemon_factory: Any) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        local = str(client.submit(daemon.write_spec("local", LOCAL_SPEC))["study"])
        with pytest.raises(BadState, match="executor local"):
            client.ask(local)
        sid = _submit(daemon, client, "ext")
        handed = client.ask(sid)
        assert handed is not None
        with pytest.raises(InvalidParams, match="final"):
            client.call("tell", {"study": sid, "trial": 0, "token": handed["token"]})
        with pytest.raises(TokenRejected):
            client.tell(sid, 0, "0" * 32, {"epoch": 1, "loss": 1.0})
        assert client.tell(sid, 0, handed["token"], {"epoch": 1, "loss": 1.0}) == {
            "decision": "CONTINUE"
        }
        # An empty metrics object with final is a final tell alone (a caller that always sends it).
        told = client.call(
            "tell",
            {"study": sid, "trial": 0, "token": handed["token"], "metrics": {}, "final": True},
        )
        assert told == {"decision": None, "final": True}
        assert _trial(client, sid, 0)["state"] == "completed"
        client.stop(sid)


ASHA_SPEC = """
name = "rungs"
stop_grace_period = "1s"

[executor]
type = "external"

[objective]
metric = "loss"
mode = "min"
resource = "epoch"

[space]
x = { param_type = "uniform", range = [0.0, 1.0] }

[scheduler]
type = "asha"
min_resource = 1
max_resource = 9
reduction_factor = 3
rung_type = "promotion"

[searcher]
type = "random"
seed = 5

[limits]
max_trials = 9
max_concurrent = 3
"""


def _loss(config: dict[str, Any], level: float) -> float:
    return (float(config["x"]) - 0.3) ** 2 + 1.0 / level


@e2e
@pytest.mark.timeout(120)
def test_paused_trials_are_handed_out_again_when_promoted(daemon_factory: Any) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        sid = str(client.submit(daemon.write_spec("rungs", ASHA_SPEC))["study"])
        # A report that reaches its rung is answered PAUSE; told nothing more, the run ends
        # when its grace period (1 s) is over, and the trial is paused there.
        first = client.ask(sid)
        assert first is not None
        assert first["max_resource"] == 1
        answer = client.tell(
            sid, 0, first["token"], {"epoch": 1, "loss": _loss(first["config"], 1)}
        )
        assert answer["decision"] in ("PAUSE", "STOP")
        _poll(
            "trial 0 ended by its grace period",
            lambda: _trial(client, sid, 0)["state"] != "running",
        )
        handed: list[dict[str, Any]] = []
        while (got := client.ask(sid)) is not None:
            handed.append(got)
            level = got["max_resource"]
            # Only final values: each at the level it was handed out for.
            client.tell(
                sid, got["trial"], got["token"], {"loss": _loss(got["config"], level)}, final=True
            )
        summary = client.wait(sid, timeout=30)
        assert summary["state"] == "completed", summary
        promoted = [h for h in handed if h["resume_from"] > 0]
        assert promoted, "no trial was promoted"
        assert {h["max_resource"] for h in promoted} <= {3, 9}
        assert all(h["resume_from"] in (1, 3) for h in promoted)
        trials = client.trials(sid)
        assert len(trials) == 9
        assert max(t["runs"] for t in trials) > 1
        assert any(t["resource"] == 9 and t["state"] == "completed" for t in trials)
        assert client.best(sid)["objective"] == min(
            t["objective"] for t in trials if t["objective"] is not None
        )


@e2e
@pytest.mark.timeout(60)
def test_a_stopped_study_answers_stop_and_its_trial_ends_at_its_final_tell(
    daemon_factory: Any,
) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        sid = _submit(daemon, client, "halt", steps=10)
        handed = client.ask(sid)
        assert handed is not None
        token = handed["token"]
        assert client.tell(sid, 0, token, {"epoch": 1, "loss": 1.0})["decision"] == "CONTINUE"
        stopped: dict[str, Any] = {}

        def stop() -> None:
            with Client(daemon.socket) as other:
                started = time.monotonic()
                stopped.update(other.stop(sid), seconds=time.monotonic() - started)

        stopper = threading.Thread(target=stop)
        stopper.start()
        # The stop waits for the run (stop_grace_period is 5 s); its reports are answered STOP.
        _poll("the study to be stopped", lambda: client.study(sid)["state"] == "stopped")
        # (The study's state changes a moment before its runs are told: a report in between is
        # answered by the scheduler, as a local trial's is.)
        epochs = iter(range(2, 10))
        _poll(
            "a report answered STOP",
            lambda: (
                client.tell(sid, 0, token, {"epoch": next(epochs), "loss": 0.9})["decision"]
                == "STOP"
            ),
        )
        assert client.tell(sid, 0, token, final=True) == {"decision": None, "final": True}
        stopper.join(timeout=30)
        assert stopped["state"] == "stopped"
        assert stopped["seconds"] < 4.0  # ended by the final tell, not by the grace period
        assert _trial(client, sid, 0)["state"] == "stopped"
        assert client.ask(sid) is None


@e2e
@pytest.mark.timeout(60)
def test_each_report_pushes_the_lease_back(daemon_factory: Any) -> None:
    daemon: DaemonHandle = daemon_factory(slots=1)
    with Client(daemon.socket) as client:
        sid = _submit(daemon, client, "alive", lease="1s", steps=5, trials=1)
        handed = client.ask(sid)
        assert handed is not None
        started = time.monotonic()
        for epoch in range(1, 6):  # 5 reports 0.4 s apart: 2 s, twice the lease
            time.sleep(0.4)
            answer = client.tell(sid, 0, handed["token"], {"epoch": epoch, "loss": 1.0 / epoch})
            assert answer["decision"] == ("CONTINUE" if epoch < 5 else "STOP")
        assert time.monotonic() - started > 1.9
        assert client.tell(sid, 0, handed["token"], final=True)["final"] is True
        rec = _trial(client, sid, 0)
        assert rec["state"] == "completed"
        assert rec["runs"] == 1
