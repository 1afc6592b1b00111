"""A daemon's shutdown answers PAUSE, and the trial so told is resumed (issue 13, part 5); a report
sent again with the same sender and seq is answered, not counted, twice (part 2). Real daemons,
real trials, the store read back with sqlite3."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

# Reports each step; in step 3 of its first run it says so (the file `in_epoch`) and works on
# until SIGTERM comes, then finishes the step and reports it, as a training loop would. Every
# answer is logged (fsynced) with the level the run started from.
TRIAL = """
import os, signal, sys, time
from hpod import trial

term = []
signal.signal(signal.SIGTERM, lambda *_: term.append(1))
folder = trial.trial_dir()
start = trial.resume_from()

def log(line):
    with open(folder / "answers.log", "a") as f:
        f.write(line + "\\n")
        f.flush()
        os.fsync(f.fileno())

log(f"start {start}")
for step in range(start + 1, trial.max_resource() + 1):
    if step == 3 and start == 0:
        (folder / "in_epoch").write_text("3")
        deadline = time.monotonic() + 60
        while not term and time.monotonic() < deadline:
            time.sleep(0.01)  # the epoch's work, until the daemon's SIGTERM
    decision = trial.report(step=step, loss=1.0 / step)
    log(f"{step} {decision.value}")
    if decision is not trial.CONTINUE:
        (trial.checkpoint_dir() / "step").write_text(str(step))
        sys.exit(0)
"""

# Sends one report twice with the same sender and seq, as hpod.trial does after a lost answer,
# and logs both answers; then reports on to the end as usual.
RESEND = """
import json, os
from hpod import trial, wire

ident = {
    "study": os.environ["HPOD_STUDY"],
    "trial": int(os.environ["HPOD_TRIAL"]),
    "token": os.environ["HPOD_TOKEN"],
}
params = {**ident, "metrics": {"step": 1, "loss": 0.5}, "sender": "4242-0badcafe", "seq": 1}
with wire.SyncConnection(os.environ["HPOD_SOCKET"], client="test") as conn:
    answers = [conn.call("trial.report", params) for _ in range(2)]
(trial.trial_dir() / "answers.json").write_text(json.dumps(answers))
for step in range(2, trial.max_resource() + 1):
    if trial.report(step=step, loss=1.0 / step) is not trial.CONTINUE:
        break
"""

SPEC = """
name = "{name}"
command = ["python", "{script}"]
stop_grace_period = "20s"
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = {{ param_type = "choice", range = [1] }}
[scheduler]
type = "fifo"
max_resource = 5
[limits]
max_trials = 1
"""


def _study(daemon: Any, name: str, script: str) -> tuple[str, Path]:
    folder = daemon.root / name
    folder.mkdir()
    (folder / f"{name}.py").write_text(script)
    spec = folder / "study.toml"
    spec.write_text(SPEC.format(name=name, script=f"{name}.py"))
    sid = daemon.ctl_json("submit", str(spec))["study"]
    return sid, daemon.state_dir / "studies" / sid / "trials" / "0"


def _wait_for(path: Path, daemon: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared:\n{daemon.output()}")
        time.sleep(0.02)


def _reports(daemon: Any, sid: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    try:
        return list(
            db.execute(
                "SELECT run, resource, decision, interrupting FROM reports "
                "WHERE study_id = ? AND trial_id = 0 ORDER BY id",
                (sid,),
            )
        )
    finally:
        db.close()


@pytest.mark.timeout(240)
def test_a_report_during_a_shutdown_is_answered_pause_and_the_trial_resumes_there(
    daemon: Any,
) -> None:
    sid, folder = _study(daemon, "pause", TRIAL)
    _wait_for(folder / "in_epoch", daemon)  # steps 1 and 2 answered, step 3 under way
    assert daemon.stop(signal.SIGTERM) == 0
    assert (folder / "answers.log").read_text().splitlines() == [
        "start 0",
        "1 CONTINUE",
        "2 CONTINUE",
        "3 PAUSE",  # "save and exit, you will be resumed"
    ]
    assert (folder / "checkpoint" / "step").read_text() == "3"
    assert _reports(daemon, sid)[-1] == (1, 3.0, "PAUSE", 1)  # recorded as interrupting

    daemon.start()
    final = daemon.ctl_json("wait", sid, timeout=120)
    assert final["state"] == "completed", final
    assert (folder / "answers.log").read_text().splitlines()[4:] == [
        "start 3",  # resumed from the epoch the shutdown's PAUSE answered
        "4 CONTINUE",
        "5 STOP",
    ]
    [record] = daemon.ctl_json("trials", sid)
    assert (record["state"], record["runs"], record["resource"]) == ("completed", 2, 5)
    assert [(run, res) for run, res, _, _ in _reports(daemon, sid)] == [
        (1, 1.0),
        (1, 2.0),
        (1, 3.0),
        (2, 4.0),
        (2, 5.0),
    ]


@pytest.mark.timeout(120)
def test_a_report_sent_again_with_its_seq_is_answered_the_same_and_stored_once(
    daemon: Any,
) -> None:
    sid, folder = _study(daemon, "resend", RESEND)
    final = daemon.ctl_json("wait", sid, timeout=90)
    assert final["state"] == "completed", final
    first, again = json.loads((folder / "answers.json").read_text())
    assert first == {"decision": "CONTINUE"}
    assert again == {"decision": "CONTINUE", "repeat": True}
    assert [res for _, res, _, _ in _reports(daemon, sid)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    db = sqlite3.connect(daemon.state_dir / "hpod.sqlite3")
    try:
        stamps = list(
            db.execute(
                "SELECT sender, seq FROM reports WHERE study_id = ? ORDER BY id LIMIT 1", (sid,)
            )
        )
    finally:
        db.close()
    assert stamps == [("4242-0badcafe", 1)]
