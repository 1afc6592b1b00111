"""A full disk: the state dir on a small tmpfs, filled by a trial's stdout, by its checkpoints or
by a file written from outside, leaves the daemon serving, its study held with the reason, no
acknowledged report lost, and the study going on by itself once space is freed, across a restart
of the daemon while the disk is full too. Root only (the tmpfs is mounted by the test).

Before the fix, on a 32 MiB tmpfs: the checkpoints and the outside file ended the daemon with
exit 1 within half a second (``sqlite3.OperationalError: database or disk is full`` out of
``update_trial`` in ``Trials._after_exit``, and out of ``_begin``), and its restart on the full
disk exited 1 the same way (it relaunched the interrupted trial); the daemon the stdout filled
stayed up, but failed the next trials (``could not start: OSError: [Errno 28] No space left on
device``) and declared the study completed.

The log cap (``[report] log_limit``) is tested without root: ``hpod.daemon.logcap`` on a file,
and a real daemon whose trial prints past its limit.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod.core.sizes import format_size
from hpod.daemon.disk import RESERVE_NAME, Disk, release_reserve, reserve_size
from hpod.daemon.logcap import cut_logs, cut_to_tail, cut_trial_logs
from hpod.daemon.store import Store, disk_full, update_study_op
from hpod.errors import StoreFull
from tests.daemon.test_report_kept import fill
from tests.e2e.conftest import DaemonHandle
from tests.e2e.conftest import daemon_factory as daemon_factory  # the fixture, for this module
from tests.e2e.specs import spec
from tests.e2e.test_settings import call, events, serve, trial_dir, wait_for

e2e = pytest.mark.e2e

MIN_FREE = "8MiB"

# Reports steps 1-3 (from where its run resumes), each until it is stored: a report answered with
# an error was not stored, and is sent again (a line in `refused` with the error's code); one
# answered with a decision is acknowledged (a line in `acked`). Its notes go next to the script,
# off the full disk. Trial 0 of a first run first fills the disk (FILL: its stdout, or 4 MiB
# checkpoints, until ENOSPC; "outside": the test does it) and waits for the test's `go` after
# step 1. A trial refused for ~2 s gives up with status 1, as a trial would whose checkpoint write
# failed: dying while the disk is full, it is put back (interrupted), not failed.
TRIAL = """
import os, pathlib, sys, time
from hpod import trial
from hpod.errors import HpodError

HERE = pathlib.Path(__file__).resolve().parent
FILL = {fill!r}
TID = trial.trial_id()


def note(name, line):
    with open(HERE / name, "a") as f:
        f.write(line + "\\n")


def fill():
    marker = HERE / "filled"
    if TID != 0 or marker.exists():
        return
    try:
        if FILL == "stdout":
            while True:
                os.write(1, b"x" * (1 << 20))
        if FILL == "checkpoints":
            folder = pathlib.Path(os.environ["HPOD_CHECKPOINT_DIR"])
            n = 0
            while True:
                with open(folder / f"ck{{n}}.bin", "wb") as f:
                    f.write(b"c" * (4 << 20))
                n += 1
    except OSError as exc:
        marker.write_text(str(exc))


def report(step):
    for _ in range(20):
        try:
            trial.report(step=step, loss=1.0 / (step + TID))
        except HpodError as exc:
            note("refused", f"{{TID}} {{step}} {{exc.code.name}}")
            time.sleep(0.1)
        else:
            note("acked", f"{{TID}} {{step}}")
            return
    sys.exit(1)


fill()
for step in range(int(trial.resume_from()) + 1, 4):
    report(step)
    if step == 1 and TID == 0:
        while not (HERE / "go").exists():
            time.sleep(0.02)
"""


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs_daemon(daemon_factory: Any) -> Iterator[Callable[..., DaemonHandle]]:
    """``make()``: an `hpod serve --config` whose state dir is a 32 MiB tmpfs of its own, with
    min_free_disk = 8 MiB; stopped (exit 0, checked) and unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as the state dir needs root")
    handles: list[DaemonHandle] = []
    mounts: list[Path] = []

    def make() -> DaemonHandle:
        d: DaemonHandle = daemon_factory(start=False)
        d.state_dir.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(d.state_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        mounts.append(d.state_dir)
        config = d.root / "hpod.toml"
        settings = {
            "socket": d.socket,
            "state_dir": str(d.state_dir),
            "cpu_slots": 1,
            "log_format": "json",
            "min_free_disk": MIN_FREE,
        }
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
        d.command = [*d.command[:4], "--config", str(config)]
        handles.append(d)
        d.start()
        return d

    yield make
    try:
        for d in handles:
            if d.proc is not None:
                rc = d.stop()
                assert rc == 0, f"daemon exited {rc} at teardown:\n{d.output()[-3000:]}"
    finally:
        for path in mounts:
            subprocess.run(["umount", "-l", str(path)], check=False)


def submit(d: DaemonHandle, fill: str) -> tuple[str, Path]:
    """A study of two trials of TRIAL, one at a time; its id and the script's folder."""
    text = spec("full", steps=3, limits="max_trials = 2", script="full.py")
    path = d.write_spec("full", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "full.py").write_text(TRIAL.format(fill=fill))
    return str(d.ctl_json("submit", str(path))["study"]), path.parent


def summary(d: DaemonHandle, sid: str) -> dict[str, Any]:
    return next(s for s in d.ctl_json("ls") if s["study"] == sid)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def stored_reports(d: DaemonHandle, sid: str) -> set[tuple[int, int]]:
    """(trial, step) of every report the store holds for the study."""
    db = sqlite3.connect(f"file:{d.state_dir / 'hpod.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT trial_id, metrics FROM reports WHERE study_id = ?", (sid,))
        return {(int(t), int(json.loads(m)["step"])) for t, m in rows}
    finally:
        db.close()


def assert_held_and_serving(d: DaemonHandle, sid: str) -> dict[str, Any]:
    """The study is held with the reason, and ping, ls and show answer."""
    wait_for("the study held", lambda: summary(d, sid)["held"] is not None)
    assert d.proc is not None
    assert d.proc.poll() is None
    held = summary(d, sid)["held"]
    assert held.startswith("disk full: ")
    assert "free of the state dir" in held
    assert call(d.socket, "ping")["pong"] is True
    detail = d.ctl_json("show", sid)
    assert detail["held"] == held or detail["held"].startswith("disk full: ")
    assert detail["state"] == "running"
    shown = d.ctl("show", sid, check=True).stdout
    assert "held      disk full: " in shown
    listed = d.ctl("ls", check=True).stdout
    assert "held" in listed
    return dict(detail)


def assert_no_launch_while_held(d: DaemonHandle, sid: str) -> None:
    """Once nothing runs, nothing starts while the hold lasts (watched for a second)."""
    wait_for("no trial running", lambda: not d.ctl_json("show", sid)["running"], timeout=30)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        detail = d.ctl_json("show", sid)
        assert detail["held"] is not None
        assert detail["running"] == [], detail["running"]
        assert detail["total_trials"] == 1
        time.sleep(0.05)


def assert_completed_and_nothing_lost(d: DaemonHandle, sid: str, folder: Path) -> None:
    done = d.ctl_json("wait", sid)
    assert done["state"] == "completed", done
    assert done["held"] is None
    trials = d.ctl_json("trials", sid)
    assert [t["state"] for t in trials] == ["completed", "completed"], trials
    acked = {(int(t), int(s)) for t, s in (line.split() for line in lines(folder / "acked"))}
    assert {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)} <= acked
    # Every report a trial was answered a decision for is in the store.
    assert acked <= stored_reports(d, sid)
    # Every refusal said why: the disk is full, not an internal error.
    assert {line.split()[2] for line in lines(folder / "refused")} <= {"STORE_FULL"}
    out = d.output()
    assert "Traceback" not in out
    kinds = {e["event"] for e in events(d)}
    assert "disk_full_hold" in kinds
    assert "disk_full_lifted" in kinds


# -- the three ways to fill it -------------------------------------------------------------------


def cut_its_log(folder: Path) -> None:
    # What an admin does about a runaway log (the trial writes with O_APPEND: it goes on at 0).
    os.truncate(folder / "stdout.log", 0)


def delete_its_checkpoints(folder: Path) -> None:
    for checkpoint in (folder / "checkpoint").glob("ck*.bin"):
        checkpoint.unlink()


@e2e
@pytest.mark.parametrize(
    ("fill", "free"),
    [("stdout", cut_its_log), ("checkpoints", delete_its_checkpoints)],
    ids=["printing to stdout", "writing 4 MiB checkpoints"],
)
def test_a_trial_that_fills_the_disk_holds_its_study_until_space_is_freed(
    tmpfs_daemon: Callable[..., DaemonHandle], fill: str, free: Callable[[Path], None]
) -> None:
    d = tmpfs_daemon()
    sid, folder = submit(d, fill)
    wait_for("the disk full", (folder / "filled").exists)
    assert_held_and_serving(d, sid)
    (folder / "go").touch()
    assert_no_launch_while_held(d, sid)
    free(trial_dir(d, sid, 0))
    assert_completed_and_nothing_lost(d, sid, folder)


@e2e
@pytest.mark.parametrize("restart", [False, True], ids=["serving", "restarted while full"])
def test_a_disk_filled_from_outside_holds_the_study_until_the_file_goes(
    tmpfs_daemon: Callable[..., DaemonHandle], restart: bool
) -> None:
    d = tmpfs_daemon()
    sid, folder = submit(d, "outside")
    wait_for("the first report", lambda: "0 1" in lines(folder / "acked"))
    filler = fill(d.state_dir)  # a file that takes every free page
    assert_held_and_serving(d, sid)
    if restart:
        assert d.stop() == 0  # its trial interrupted, with the disk still full
        d.start()
        # Up on the full disk (the reserve made room to open the store), held, and the trial
        # it interrupted is not relaunched into it.
        detail = assert_held_and_serving(d, sid)
        assert [t["state"] for t in d.ctl_json("trials", sid)] == ["interrupted"], detail
        assert_no_launch_while_held(d, sid)
    (folder / "go").touch()
    if not restart:
        assert_no_launch_while_held(d, sid)
    filler.unlink()
    assert_completed_and_nothing_lost(d, sid, folder)
    if restart:
        started = [e for e in events(d) if e["event"] == "disk_reserve_released"]
        assert started, "the restart opened its store in the reserve's room"


# -- the pieces, without root --------------------------------------------------------------------


def test_a_log_past_its_limit_keeps_its_last_half_behind_a_line_that_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stdout.log"
    text = b"".join(b"line %06d\n" % i for i in range(20_000))  # 12 bytes a line
    path.write_bytes(text)
    trial = os.open(path, os.O_WRONLY | os.O_APPEND)  # what the trial writes through
    fd = os.open(path, os.O_RDWR)  # the daemon's own (pwrite ignores its offset with O_APPEND)
    try:
        assert cut_to_tail(fd, len(text)) == 0  # at the limit: untouched
        dropped = cut_to_tail(fd, 100_000)
        os.write(trial, b"after the cut\n")  # O_APPEND: the trial goes on at the new end
    finally:
        os.close(fd)
        os.close(trial)
    data = path.read_bytes()
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"=== hpod cut ")
    assert b"log_limit of 97.7 KiB" in first
    assert rest.endswith(b"line 019999\nafter the cut\n")
    kept = rest[: -len(b"after the cut\n")]
    assert kept.startswith(b"line ")  # the tail starts at a whole line
    assert len(kept) <= 50_000
    assert text.endswith(kept)
    assert dropped == len(text) - len(kept)


def test_a_log_that_is_a_link_or_not_the_owners_is_never_cut(tmp_path: Path) -> None:
    top = tmp_path / "studies"
    folder = top / "s-1" / "trials" / "0"
    folder.mkdir(parents=True)
    target = tmp_path / "precious"
    target.write_bytes(b"p" * 200_000)
    (folder / "stdout.log").symlink_to(target)
    (folder / "stderr.log").write_bytes(b"e" * 200_000)
    os.link(folder / "stderr.log", tmp_path / "elsewhere")  # two links: someone else's too
    assert cut_trial_logs(top, folder, None, 100_000, ("stdout", "stderr")) == {}
    assert target.stat().st_size == 200_000
    assert (folder / "stderr.log").stat().st_size == 200_000


def test_one_call_cuts_every_trials_logs_past_their_limit_and_only_those(tmp_path: Path) -> None:
    top = tmp_path / "studies"
    short, long, gone = (top / "s-1" / "trials" / str(i) for i in range(3))
    for folder in (short, long):
        folder.mkdir(parents=True)
    (short / "stdout.log").write_bytes(b"short\n" * 100)
    (long / "stderr.log").write_bytes(b"long line\n" * 30_000)
    out = cut_logs(
        [(top, short, None, 100_000), (top, long, None, 100_000), (top, gone, None, 100_000)],
        ("stdout", "stderr"),
    )
    assert out[0] == {}
    assert out[2] == {}
    assert set(out[1]) == {"stderr"}
    assert out[1]["stderr"] > 200_000
    assert (short / "stdout.log").stat().st_size == 600
    assert (long / "stderr.log").stat().st_size < 100_000


@e2e
def test_a_trial_printing_past_its_log_limit_keeps_the_tail_of_its_log(
    daemon_factory: Any,
) -> None:
    # Prints 1 MiB past a 256 KiB limit, reports, then waits until the daemon has cut the log
    # under its limit: a poll that came while it was still printing cut it once already, and
    # the next one cuts what it printed after that.
    script = """
import os, pathlib, time
from hpod import trial
folder = pathlib.Path(os.environ["HPOD_TRIAL_DIR"])
for i in range(16384):
    print(f"progress {i:08d} " + "." * 40)
print("the last line")
trial.report(step=1, loss=1.0)
deadline = time.monotonic() + 60
while (folder / "stdout.log").stat().st_size > 256 * 1024 and time.monotonic() < deadline:
    time.sleep(0.05)
print("after the cut")
"""
    d = serve(daemon_factory, log_format="json")
    text = spec(
        "chatty",
        steps=1,
        limits="max_trials = 1",
        script="chatty.py",
        report='log_limit = "256KiB"',
    )
    path = d.write_spec("chatty", text.replace('type = "grid"', 'type = "random"'))
    (path.parent / "chatty.py").write_text(script)
    sid = str(d.ctl_json("submit", str(path), "--wait")["study"])
    log = (trial_dir(d, sid) / "stdout.log").read_bytes()
    assert len(log) <= 256 * 1024
    assert log.startswith(b"=== hpod cut ")
    assert log.endswith(b"the last line\nafter the cut\n")
    assert d.ctl("logs", sid, "0", "--stdout", check=True).stdout.strip().endswith("after the cut")
    cuts = [e for e in events(d) if e["event"] == "trial_log_cut"]
    assert cuts
    assert sum(c["cut"]["stdout"] for c in cuts) > 512 * 1024


@pytest.mark.anyio
async def test_a_write_the_full_disk_refuses_is_kept_and_stored_once_there_is_room(
    tmp_path: Path,
) -> None:
    # The store's own seam: a write that fails like a full disk's, then succeeds.
    store = Store.open(tmp_path)
    try:
        disk = Disk(store, tmp_path, 0)
        assert disk.held is None
        real = store.write
        failing = [True]

        async def write(*ops: Any) -> None:
            if failing[0]:
                raise StoreFull("the disk is full")
            await real(*ops)

        store.write = write  # type: ignore[method-assign]
        assert not await disk.update_study("nope", elapsed=1.0)
        assert disk.held is not None
        assert len(disk.kept) == 1
        # Queued behind it, in order, however the store is doing now.
        failing[0] = False
        assert not await disk.update_study("nope", elapsed=2.0)
        await disk.poll()  # both rows are missing: each is dropped, with a log line
        assert disk.kept == []
        assert disk.held is None
    finally:
        store.close()
    assert disk_full(sqlite3.OperationalError("database or disk is full")) is False
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert disk_full(full)
    assert disk_full(OSError(28, "No space left on device"))
    assert update_study_op("x", elapsed=1.0).must_change


def test_the_reserve_is_a_quarter_of_min_free_disk_and_goes_when_the_disk_is_short(
    tmp_path: Path,
) -> None:
    assert reserve_size(0) == 0
    assert reserve_size(8 * 1024**2) == 2 * 1024**2
    assert reserve_size(256 * 1024**2) == 4 * 1024**2
    (tmp_path / RESERVE_NAME).write_bytes(b"r")
    assert not release_reserve(tmp_path, 1024)  # room enough: kept
    assert release_reserve(tmp_path, 2**62)  # more than any disk has free: released
    assert not (tmp_path / RESERVE_NAME).exists()
    assert format_size(2**20) == "1 MiB"
