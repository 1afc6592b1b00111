from __future__ import annotations

import json
import os
import pwd
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from hpod.daemon.runner import (
    TrialLaunch,
    TrialProcess,
    TrialStartError,
    log_tail,
    looks_like_oom,
    trial_environment,
)
from hpod.daemon.statetree import Ids
from hpod.errors import HpodError, InvalidParams


def make_launch(tmp_path: Path, command: list[str], **overrides: object) -> TrialLaunch:
    trial_dir = tmp_path / "trials" / "7"
    fields: dict[str, object] = {
        "study_id": "s1",
        "trial_id": 7,
        "command": tuple(command),
        "config": {"lr": 0.001, "width": 128, "opt": "adam", "bn": True},
        "workdir": tmp_path,
        "trial_dir": trial_dir,
        "checkpoint_dir": trial_dir / "checkpoint",
        "socket_path": str(tmp_path / "hpod.sock"),
        "token": "secret-token",
        "resume_from": 0.0,
        "max_resource": 9.0,
    }
    fields.update(overrides)
    return TrialLaunch(**fields)  # type: ignore[arg-type]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    """The child writes its signal files atomically (write + rename), so existence = complete."""
    with anyio.fail_after(timeout):
        while not path.exists():
            await anyio.sleep(0.01)
    return path.read_text()


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped is dead for our purposes


async def wait_dead(pid: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while is_alive(pid):
            await anyio.sleep(0.01)


# Helper the child scripts use to signal readiness without a partial read.
ATOMIC_WRITE = """
import os
def atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
"""


# --- environment ----------------------------------------------------------------------------


def test_trial_environment_contract_cpu_slot(tmp_path: Path) -> None:
    launch = make_launch(
        tmp_path,
        ["x"],
        resume_from=3.0,
        max_resource=9.0,
        extra_env={"FOO": "bar", "HPOD_TOKEN": "forged", "PYTHONUNBUFFERED": "0"},
    )
    base = {"PATH": "/usr/bin", "KEEP": "1", "NOTIFY_SOCKET": "/run/systemd/notify"}
    env = trial_environment(launch, base)
    assert env == {
        "PATH": "/usr/bin",
        "KEEP": "1",
        "FOO": "bar",
        "PYTHONUNBUFFERED": "0",  # the study may override this one
        "HPOD_SOCKET": str(tmp_path / "hpod.sock"),
        "HPOD_STUDY": "s1",
        "HPOD_TRIAL": "7",
        "HPOD_TOKEN": "secret-token",  # ...but never the contract
        "HPOD_CONFIG": json.dumps({"lr": 0.001, "width": 128, "opt": "adam", "bn": True}),
        "HPOD_CHECKPOINT_DIR": str(launch.checkpoint_dir),
        "HPOD_TRIAL_DIR": str(launch.trial_dir),
        "HPOD_RESUME_FROM": "3",
        "HPOD_MAX_RESOURCE": "9",
        "HPOD_RECONNECT_TIMEOUT": "120",  # the spec's reconnect_timeout, by default
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "",
    }
    assert json.loads(env["HPOD_CONFIG"])["lr"] == 0.001


def test_trial_environment_says_how_long_a_report_waits_for_the_daemon(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, ["x"], reconnect_timeout=0.5)
    assert trial_environment(launch, {})["HPOD_RECONNECT_TIMEOUT"] == "0.5"
    launch = make_launch(tmp_path, ["x"], reconnect_timeout=0.0)
    assert trial_environment(launch, {})["HPOD_RECONNECT_TIMEOUT"] == "0"


def test_trial_environment_gpus_and_fractional_resource(tmp_path: Path) -> None:
    launch = make_launch(
        tmp_path, ["x"], devices=("GPU-aaa", "GPU-bbb"), resume_from=0.5, max_resource=2.25
    )
    env = trial_environment(launch, {})
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert env["HPOD_RESUME_FROM"] == "0.5"
    assert env["HPOD_MAX_RESOURCE"] == "2.25"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_trial_environment_user_identity(tmp_path: Path) -> None:
    pw = pwd.getpwuid(os.getuid())
    env = trial_environment(make_launch(tmp_path, ["x"], user=os.getuid()), {"HOME": "/nowhere"})
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (pw.pw_dir, pw.pw_name, pw.pw_name)


@pytest.mark.anyio
async def test_real_child_sees_exactly_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    code = ATOMIC_WRITE + f"import json; atomic_write({str(out)!r}, json.dumps(dict(os.environ)))"
    launch = make_launch(tmp_path, py(code), devices=("GPU-1",), extra_env={"FOO": "bar"})
    base = {"PATH": os.environ.get("PATH", "/usr/bin"), "LC_ALL": "C.UTF-8"}
    proc = await TrialProcess.start(launch, base_env=base)
    assert await proc.wait() == 0
    seen = json.loads(out.read_text())
    assert seen == trial_environment(launch, base)


# --- running --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_logs_append_across_runs_and_checkpoint_dir_is_kept(tmp_path: Path) -> None:
    # No f-strings: braces in a command are placeholders (`{{` escapes them).
    code = """
        import os, sys
        ckpt = os.path.join(os.environ["HPOD_CHECKPOINT_DIR"], "state")
        before = "none"
        if os.path.exists(ckpt):
            with open(ckpt) as f:
                before = f.read()
        run = os.environ["HPOD_RESUME_FROM"]
        print("out run from %s saw %s" % (run, before))
        print("err run from %s" % run, file=sys.stderr)
        with open(ckpt, "w") as f:
            f.write("after " + run)
    """
    first = make_launch(tmp_path, py(code), resume_from=0.0, max_resource=3.0)
    proc = await TrialProcess.start(first)
    assert await proc.wait() == 0
    second = make_launch(tmp_path, py(code), resume_from=3.0, max_resource=9.0)
    proc = await TrialProcess.start(second)
    assert await proc.wait() == 0

    out = (first.trial_dir / "stdout.log").read_text().splitlines()
    err = (first.trial_dir / "stderr.log").read_text().splitlines()
    assert len(out) == 4
    assert len(err) == 4
    for lines in (out, err):
        assert lines[0].startswith("=== run started ")
        assert lines[0].endswith(" resume_from=0 max_resource=3 ===")
        assert lines[2].endswith(" resume_from=3 max_resource=9 ===")
    assert out[1] == "out run from 0 saw none"
    assert out[3] == "out run from 3 saw after 0"
    assert err[1] == "err run from 0"
    assert err[3] == "err run from 3"


@pytest.mark.anyio
async def test_exit_code_and_signal_are_recorded(tmp_path: Path) -> None:
    proc = await TrialProcess.start(make_launch(tmp_path, py("import sys; sys.exit(3)")))
    assert proc.pid > 0
    assert proc.started_at <= time.monotonic()
    assert await proc.wait() == 3
    assert proc.returncode == 3
    assert await proc.wait() == 3  # idempotent
    assert proc.stop_requested is False

    killed = py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    proc = await TrialProcess.start(make_launch(tmp_path, killed))
    assert await proc.wait() == -signal.SIGKILL


@pytest.mark.anyio
async def test_command_placeholders_reach_the_child(tmp_path: Path) -> None:
    code = "import sys; print(' '.join(sys.argv[1:]))"
    launch = make_launch(tmp_path, [*py(code), "--lr", "{lr}", "{width}", "{opt}", "{trial_id}"])
    proc = await TrialProcess.start(launch)
    assert await proc.wait() == 0
    assert log_tail(launch.trial_dir, "stdout", lines=1) == "--lr 0.001 128 adam 7"


@pytest.mark.anyio
async def test_send_signals_the_group(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        ATOMIC_WRITE
        + f"""
import signal, sys
signal.signal(signal.SIGHUP, lambda *_: sys.exit(7))
atomic_write({str(ready)!r}, "ready")
while True:
    signal.pause()
"""
    )
    proc = await TrialProcess.start(make_launch(tmp_path, py(code)))
    await wait_for_file(ready)
    # Through the shim, which forwards SIGTERM, SIGINT and SIGHUP to the trial's group (its
    # SIGUSR1 means "kill it all").
    proc.send(signal.SIGHUP)
    with anyio.fail_after(10):
        assert await proc.wait() == 7
    proc.send(signal.SIGHUP)  # gone: quietly nothing


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill_and_kills_the_group(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    grandchild = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(120)"
    )
    code = (
        ATOMIC_WRITE
        + f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {grandchild!r}], stdout=subprocess.PIPE)
assert child.stdout.readline() == b"up\\n"
atomic_write({str(ready)!r}, str(child.pid))
time.sleep(120)
"""
    )
    proc = await TrialProcess.start(make_launch(tmp_path, py(code)))
    grandchild_pid = int(await wait_for_file(ready))
    assert is_alive(grandchild_pid)

    grace = 0.5
    started = time.monotonic()
    returncode = await proc.stop(grace)
    elapsed = time.monotonic() - started
    assert returncode == -signal.SIGKILL
    assert grace <= elapsed < grace + 2.0
    assert proc.stop_requested is True
    await wait_dead(grandchild_pid)
    # Idempotent, and safe now that everything is gone.
    assert await proc.stop(grace) == -signal.SIGKILL
    assert await proc.wait() == -signal.SIGKILL


@pytest.mark.anyio
async def test_stop_lets_a_cooperating_trial_checkpoint(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        ATOMIC_WRITE
        + f"""
import signal, sys
def on_term(signum, frame):
    atomic_write(os.path.join(os.environ["HPOD_CHECKPOINT_DIR"], "ckpt.pt"), "weights")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
atomic_write({str(ready)!r}, "ready")
while True:
    signal.pause()
"""
    )
    launch = make_launch(tmp_path, py(code))
    proc = await TrialProcess.start(launch)
    await wait_for_file(ready)
    started = time.monotonic()
    assert await proc.stop(30.0) == 0
    assert time.monotonic() - started < 10.0  # well inside the grace: it exited by itself
    assert (launch.checkpoint_dir / "ckpt.pt").read_text() == "weights"


@pytest.mark.anyio
async def test_leftovers_are_killed_when_the_leader_exits(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        ATOMIC_WRITE
        + f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
atomic_write({str(ready)!r}, str(child.pid))
"""
    )
    proc = await TrialProcess.start(make_launch(tmp_path, py(code)))
    with anyio.fail_after(10):
        assert await proc.wait() == 0
    await wait_dead(int(ready.read_text()))


@pytest.mark.anyio
async def test_stop_after_exit_returns_the_exit_code(tmp_path: Path) -> None:
    proc = await TrialProcess.start(make_launch(tmp_path, py("import sys; sys.exit(5)")))
    assert await proc.wait() == 5
    assert await proc.stop(1.0) == 5
    assert await proc.stop(1.0) == 5


@pytest.mark.anyio
async def test_missing_command_is_a_clear_start_error(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, ["hpod-no-such-command-xyz", "{lr}"])
    with pytest.raises(
        TrialStartError, match=r"'hpod-no-such-command-xyz' not found on PATH.*`command`"
    ):
        await TrialProcess.start(launch, base_env={"PATH": "/usr/bin:/bin"})
    assert "could not start" in log_tail(launch.trial_dir, "stderr")


@pytest.mark.anyio
async def test_missing_workdir_is_a_clear_start_error(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, py("pass"), workdir=tmp_path / "nope")
    with pytest.raises(TrialStartError, match=r"workdir .*nope.* does not exist.*`workdir`"):
        await TrialProcess.start(launch)


@pytest.mark.anyio
async def test_not_executable_is_a_clear_start_error(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    launch = make_launch(tmp_path, ["./train.sh"])
    with pytest.raises(TrialStartError, match=r"'./train.sh' is not executable.*chmod \+x"):
        await TrialProcess.start(launch)


@pytest.mark.anyio
async def test_other_user_without_root_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may run trials as anyone")
    launch = make_launch(tmp_path, py("pass"), user=0)
    with pytest.raises(TrialStartError, match="cannot start a trial as uid 0"):
        await TrialProcess.start(launch)


@pytest.mark.anyio
async def test_root_runs_the_trial_as_its_owner() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    # pytest's tmp_path is private to root; the trial's user must be able to reach its workdir.
    root = Path(tempfile.mkdtemp(prefix="hpod"))
    try:
        root.chmod(0o755)
        # /bin/sh, not this interpreter: the virtualenv may sit where `nobody` cannot reach.
        code = 'echo "$(id -u) $(id -g) $USER"'
        launch = make_launch(root, ["/bin/sh", "-c", code], user=pw.pw_uid)
        proc = await TrialProcess.start(launch, base_env={"PATH": "/usr/bin:/bin"})
        assert await proc.wait() == 0
        # The log is the trial's owner's: read as theirs (root's own would be refused).
        ids = Ids(pw.pw_uid, pw.pw_gid)
        seen = log_tail(launch.trial_dir, "stdout", lines=1, ids=ids)
        assert seen == f"{pw.pw_uid} {pw.pw_gid} nobody"
        for folder in (launch.trial_dir, launch.checkpoint_dir):
            st = folder.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o700)
        for stream in ("stdout", "stderr"):
            st = (launch.trial_dir / f"{stream}.log").stat()
            assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o600)
    finally:
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        root.rmdir()


# --- log_tail and OOM -----------------------------------------------------------------------


def test_log_tail_reads_the_end(tmp_path: Path) -> None:
    (tmp_path / "stderr.log").write_text("".join(f"line {i}\n" for i in range(1000)))
    assert log_tail(tmp_path, "stderr", lines=3) == "line 997\nline 998\nline 999"
    # A window that starts mid-line drops the fragment instead of showing half a line.
    tail = log_tail(tmp_path, "stderr", lines=100, max_bytes=20)
    assert tail == "line 998\nline 999"
    assert log_tail(tmp_path, "stdout") == ""
    assert log_tail(tmp_path, "stderr", lines=0) == ""
    with pytest.raises(InvalidParams):
        log_tail(tmp_path, "../etc/passwd")


def test_log_tail_tolerates_bad_utf8(tmp_path: Path) -> None:
    (tmp_path / "stdout.log").write_bytes(b"ok\n\xff\xfe broken\n")
    assert log_tail(tmp_path, "stdout") == "ok\n\ufffd\ufffd broken"


@pytest.mark.parametrize(
    "text",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB",
        "torch.cuda.OutOfMemoryError: CUDA error",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "Traceback (most recent call last):\nMemoryError",
        "RuntimeError: CUDA error: out of memory",
    ],
)
def test_looks_like_oom(text: str) -> None:
    assert looks_like_oom(text)


@pytest.mark.parametrize(
    "text",
    ["", "ValueError: bad lr", "loss=nan at step 10", "KeyboardInterrupt", "MemoryErrorHandler ok"],
)
def test_not_oom(text: str) -> None:
    assert not looks_like_oom(text)


def test_start_error_is_an_hpod_error() -> None:
    assert issubclass(TrialStartError, HpodError)


@pytest.mark.anyio
async def test_trials_that_end_at_once_all_start(tmp_path: Path) -> None:
    # The shim exits right after its line when the trial ends at once, and the child watcher
    # may reap it at once: its pidfd and start time are taken before, never after. (Reading
    # them after the line raced with that reaping; this did not lose the race here, though.)
    async def one(i: int, results: list[int]) -> None:
        launch = make_launch(tmp_path / str(i), py("pass"), workdir=tmp_path, trial_id=i)
        proc = await TrialProcess.start(launch)
        results.append(await proc.wait())

    results: list[int] = []
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i, results)
    assert results == [0] * 24


@pytest.mark.anyio
async def test_a_large_environment_reaches_the_trial(tmp_path: Path) -> None:
    # The trial's environment goes to the shim through a pipe, past a pipe's 64 KiB buffer (in
    # values under the kernel's 128 KiB a string, as the submit's own caps keep them).
    big = {f"BIG{i}": str(i) * (100 * 1024) for i in range(4)}
    code = "import os, sys; sys.exit(0 if len(os.environ['BIG3']) == 100 * 1024 else 9)"
    launch = make_launch(tmp_path, py(code))
    proc = await TrialProcess.start(launch, base_env={"PATH": "/usr/bin:/bin", **big})
    with anyio.fail_after(20):
        assert await proc.wait() == 0
