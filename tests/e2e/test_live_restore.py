"""Live restore end to end: a daemon killed with -9, or re-executed by SIGHUP, costs its running
trials nothing. The same processes train on, every epoch is trained and counted once, and the
study ends as it would have."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DaemonHandle
from tests.e2e.specs import spec

e2e = pytest.mark.e2e

# Trains `steps` epochs of `delay` seconds each, from its checkpoint, and writes down each one
# (its pid and the epoch, fsynced) before reporting it.
TRIAL = """
import json, os, time
from hpod import trial
cfg = trial.config({"x": 0.0, "y": 0.0, "delay": 0.2})
folder = trial.trial_dir()
for epoch in range(trial.resume_from() + 1, trial.max_resource() + 1):
    time.sleep(cfg["delay"])
    with open(os.path.join(folder, "epochs.log"), "a") as f:
        f.write(f"{os.getpid()} {epoch}\\n")
        f.flush()
        os.fsync(f.fileno())
    loss = (cfg["x"] - 0.3) ** 2 + (cfg["y"] + 0.2) ** 2 + 1 / epoch
    answer = trial.report(step=epoch, loss=loss)
    if answer is not trial.CONTINUE:
        break
"""

STEPS = 10


def _study(daemon: DaemonHandle, name: str, trials: int, delay: float = 0.25) -> str:
    spec_path = daemon.write_spec(
        name,
        spec(
            name,
            steps=STEPS,
            delay=delay,
            script="trial_live.py",
            points="partial_grid = true",
            limits=f"max_trials = {trials}\nmax_concurrent = {trials}",
        ),
    )
    (spec_path.parent / "trial_live.py").write_text(TRIAL)
    submitted: dict[str, Any] = daemon.ctl_json("submit", str(spec_path))
    return str(submitted["study"])


def _epochs(daemon: DaemonHandle, sid: str) -> dict[int, list[tuple[int, int]]]:
    """Each trial's (pid, epoch) lines, as its processes wrote them."""
    out: dict[int, list[tuple[int, int]]] = {}
    trials = daemon.state_dir / "studies" / sid / "trials"
    for folder in trials.iterdir() if trials.is_dir() else ():
        log = folder / "epochs.log"
        if log.exists():
            lines = log.read_text().split()
            out[int(folder.name)] = [
                (int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines), 2)
            ]
    return out


def _until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    """Running (a zombie is not: an orphan's may wait for a PID 1 that does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _counted_steps(daemon: DaemonHandle, sid: str) -> dict[int, list[float]]:
    conn = sqlite3.connect(f"file:{daemon.state_dir / 'hpod.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT trial_id, resource FROM reports WHERE study_id = ? AND counted = 1 ORDER BY id",
            (sid,),
        ).fetchall()
    finally:
        conn.close()
    out: dict[int, list[float]] = {}
    for tid, resource in rows:
        out.setdefault(int(tid), []).append(float(resource))
    return out


def _assert_nothing_trained_twice(daemon: DaemonHandle, sid: str, trials: int) -> None:
    final = daemon.ctl_json("wait", sid, "--timeout", "60")
    assert final["state"] == "completed", final
    epochs = _epochs(daemon, sid)
    rows = daemon.ctl_json("trials", sid)
    assert len(rows) == trials
    for row in rows:
        tid = row["trial"]
        assert row["state"] == "completed", row
        # One run, one process: never relaunched, so no epoch trained twice.
        assert row["runs"] == 1, row
        assert len({pid for pid, _ in epochs[tid]}) == 1, epochs[tid]
        assert [e for _, e in epochs[tid]] == list(range(1, STEPS + 1)), epochs[tid]
    # Every epoch counted once (a report re-sent after the kill is answered, not counted).
    counted = _counted_steps(daemon, sid)
    for tid in range(trials):
        assert counted[tid] == [float(e) for e in range(1, STEPS + 1)], counted[tid]


@e2e
@pytest.mark.timeout(120)
def test_a_daemon_killed_with_9_is_restarted_and_its_trials_train_on_unharmed(
    daemon: DaemonHandle,
) -> None:
    sid = _study(daemon, "kill9", trials=2)

    def two_epochs_each() -> dict[int, list[tuple[int, int]]] | None:
        got = _epochs(daemon, sid)
        return got if len(got) == 2 and all(len(v) >= 2 for v in got.values()) else None

    seen = _until("both trials to train two epochs", two_epochs_each)
    pids = {tid: lines[0][0] for tid, lines in seen.items()}
    daemon.stop(signal.SIGKILL)
    # No daemon: the trials are not touched, and keep training (their reports wait).
    assert all(_alive(pid) for pid in pids.values())
    daemon.start()
    shown = daemon.ctl_json("show", sid)
    assert shown["adopted"] == [0, 1], shown  # running on, with epochs left to train
    assert shown["containment"]["kind"] in ("cgroup", "subreaper")
    assert "adopted after a restart" in daemon.ctl("show", sid, check=True).stdout
    _assert_nothing_trained_twice(daemon, sid, trials=2)
    assert not any(_alive(pid) for pid in pids.values())
    assert "trial_adopted" in daemon.output()


@e2e
@pytest.mark.timeout(120)
def test_sighup_re_executes_the_daemon_in_place_and_the_trials_never_notice(
    daemon: DaemonHandle,
) -> None:
    before = daemon.ctl_json("ping")
    sid = _study(daemon, "hup", trials=2)
    _until(
        "both trials to train an epoch",
        lambda: (e := _epochs(daemon, sid)) and len(e) == 2,
    )
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    def re_executed() -> dict[str, Any] | None:
        res = daemon.ctl("ping", "--json")
        if res.returncode != 0:
            return None  # between the exec and the new image's socket
        pong: dict[str, Any] = json.loads(res.stdout)
        return pong if pong["generation"] != before["generation"] else None

    after = _until("the re-executed daemon to answer", re_executed)
    # The same process (systemd's MAINPID stays right), a new image.
    assert after["pid"] == before["pid"] == daemon.proc.pid
    assert daemon.proc.poll() is None
    _assert_nothing_trained_twice(daemon, sid, trials=2)
    assert "reexec" in daemon.output()


# Reports once, then works on without reporting and exits with the code its config says.
LAST_WORDS = """
import os, time
from hpod import trial
cfg = trial.config({"x": 0.0, "y": 0.0, "rc": 0})
trial.report(step=1, loss=1.0)
with open(os.path.join(trial.trial_dir(), "reported"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(1.0)
raise SystemExit(cfg["rc"])
"""


def _last_words_study(daemon: DaemonHandle, name: str, rc: int) -> tuple[str, Path]:
    text = spec(
        name,
        steps=5,  # so the report is answered CONTINUE: the exit is the trial's own doing
        script="trial_last.py",
        points="partial_grid = true",
        limits="max_trials = 1",
        extra=f'rc = {{ param_type = "choice", range = [{rc}] }}',
    )
    spec_path = daemon.write_spec(name, text)
    (spec_path.parent / "trial_last.py").write_text(LAST_WORDS)
    sid = str(daemon.ctl_json("submit", str(spec_path))["study"])
    folder = daemon.state_dir / "studies" / sid / "trials" / "0"
    return sid, folder


@e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("rc", "state"), [(0, "completed"), (3, "failed")])
def test_a_trial_that_ends_while_no_daemon_runs_is_recorded_as_it_ended(
    daemon: DaemonHandle, rc: int, state: str
) -> None:
    sid, folder = _last_words_study(daemon, f"away{rc}", rc)
    pid = int(
        _until(
            "the trial's report",
            lambda: (folder / "reported").exists() and (folder / "reported").read_text(),
        )
    )
    daemon.stop(signal.SIGKILL)
    _until("the trial to exit on its own", lambda: not _alive(pid))
    daemon.start()
    # Exit 9 for a study that ended but did not complete (the failed one).
    final = json.loads(daemon.ctl("wait", sid, "--timeout", "30", "--json").stdout)
    (row,) = daemon.ctl_json("trials", sid)
    # Recorded from the status its shim wrote: not resumed, not run again.
    assert (row["state"], row["runs"]) == (state, 1), row
    if rc:
        assert row["error"].startswith(f"exited with status {rc}"), row
        assert final["state"] == "failed"
    else:
        assert final["state"] == "completed"


@e2e
@pytest.mark.timeout(120)
def test_a_run_whose_process_died_with_its_daemon_is_resumed_from_its_checkpoint(
    daemon: DaemonHandle,
) -> None:
    sid = _study(daemon, "gone", trials=1)
    seen = _until(
        "two epochs", lambda: (e := _epochs(daemon, sid)) and len(e.get(0, ())) >= 2 and e
    )
    trial_pid = seen[0][0][0]
    daemon.stop(signal.SIGKILL)
    # The trial and its shim die too (an OOM kill, a reboot's worth): nothing left to adopt.
    shim = int(Path(f"/proc/{trial_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    # The shim first: killed after the trial, it could still write the trial's -9 (a trial
    # killed while no daemon ran is recorded failed, as a live daemon would record it).
    os.kill(shim, signal.SIGKILL)
    os.killpg(trial_pid, signal.SIGKILL)
    _until("the run's processes gone", lambda: not _alive(trial_pid) and not _alive(shim))
    daemon.start()
    final = daemon.ctl_json("wait", sid, "--timeout", "60")
    assert final["state"] == "completed", final
    (row,) = daemon.ctl_json("trials", sid)
    assert row["runs"] == 2, row  # resumed, in a new run
    epochs = _epochs(daemon, sid)[0]
    assert len({p for p, _ in epochs}) == 2
    assert sorted({e for _, e in epochs}) == list(range(1, STEPS + 1))
