"""Containment: nothing a trial starts outlives its run (issue 13, part 4), and a run's process
is adopted only when provably the one started (part 1's process level).

Real processes throughout: shims started by TrialProcess.start (or by hand), this machine's real
cgroup v2 tree when root (skipped with a reason otherwise), the trials service with a real store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod.core.spec import StudySpec
from hpod.daemon.config import DaemonConfig
from hpod.daemon.containment import (
    Containment,
    ContainmentUnavailable,
    cgroup2_mount,
    own_cgroup,
    run_name,
)
from hpod.daemon.gpus import DevicePool
from hpod.daemon.procid import ProcessIdentity, boot_id, start_ticks
from hpod.daemon.runner import TrialLaunch, TrialProcess, shim_command
from hpod.daemon.store import Store
from hpod.daemon.trials import Trials, trial_dir
from tests.daemon.fakes import spec_toml
from tests.daemon.test_trials import Hooks, make_study
from tests.reach import skip_unless_others_reach_the_checkout

REPO = Path(__file__).resolve().parents[2]


def cgroups_here() -> str | None:
    """Why this machine's cgroup v2 tree cannot be used here; None when it can."""
    if os.geteuid() != 0:
        return "needs root to make cgroups"
    mounted = cgroup2_mount()
    if mounted is None:
        return "no cgroup v2 hierarchy is mounted"
    if not os.access(mounted[0], os.W_OK):
        return f"{mounted[0]} is not writable"
    return None


needs_cgroups = pytest.mark.skipif(cgroups_here() is not None, reason=str(cgroups_here()))


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def wait_until(what: str, condition: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    await wait_until(str(path), path.exists, timeout)
    return path.read_text()


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    (path / "status").mkdir(mode=0o700)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def cgroups(folder: Path) -> Iterator[Containment]:
    """This machine's real cgroups, in a subtree of this test's own (removed after)."""
    containment = Containment.discover("cgroup", folder / "state")
    assert containment.kind == "cgroup"
    yield containment
    assert containment.base is not None
    for entry in containment.base.iterdir():
        if entry.is_dir():
            containment.kill_and_remove(entry)
    containment.base.rmdir()


def launch_of(folder: Path, code: str, **overrides: Any) -> TrialLaunch:
    tdir = folder / "trials" / "0"
    fields: dict[str, Any] = {
        "study_id": "c1",
        "trial_id": 0,
        "command": (sys.executable, "-c", textwrap.dedent(code)),
        "config": {},
        "workdir": folder,
        "trial_dir": tdir,
        "checkpoint_dir": tdir / "checkpoint",
        "socket_path": str(folder / "s"),
        "token": "t",
        "resume_from": 0.0,
        "max_resource": 1.0,
        "run": 1,
        "status_dir": folder / "status",
    }
    fields.update(overrides)
    return TrialLaunch(**fields)


# A trial whose child leaves the trial's group (setsid: a session of its own; setpgid: a group
# of its own), ignores SIGTERM and sleeps; the trial notes the child's pid and its own cgroup,
# then exits (or waits, with WAIT set, for a SIGTERM it notes in `term`).
def escaping_trial(how: str, *, wait: bool = False) -> str:
    leave = {"setsid": "os.setsid()", "setpgid": "os.setpgid(0, 0)"}[how]
    child = f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); {leave}; "
    child += "time.sleep(300)"
    tail = ""
    if wait:
        tail = """
        signal.signal(signal.SIGTERM, lambda *a: (note("term", "1"), os._exit(5)))
        note("ready", "1")
        while True:
            signal.pause()
        """
    return f"""
        import os, signal, subprocess, sys
        folder = os.environ["HPOD_TRIAL_DIR"]
        def note(name, text):
            with open(os.path.join(folder, name + ".tmp"), "w") as f:
                f.write(text)
            os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
        note("cgroup", open("/proc/self/cgroup").read())
        child = subprocess.Popen([sys.executable, "-c", {child!r}])
        # Until the child has left the group: then it is an escapee, not a group member.
        while os.getpgid(child.pid) == os.getpgid(0):
            pass
        note("child", str(child.pid))
        {tail.strip()}
    """


def cgroup_line(tdir: Path) -> str:
    text = (tdir / "cgroup").read_text()
    return next(line for line in text.splitlines() if line.startswith("0::"))[3:]


# -- the setsid() child is gone when the trial ends -----------------------------------------------


@needs_cgroups
@pytest.mark.anyio
@pytest.mark.parametrize("how", ["setsid", "setpgid"])
async def test_a_child_that_escapes_is_gone_when_the_trial_ends_with_cgroups(
    folder: Path, cgroups: Containment, how: str
) -> None:
    path = cgroups.make(run_name("c1", 0, 1))
    launch = launch_of(folder, escaping_trial(how), cgroup=path)
    proc = await TrialProcess.start(launch)
    assert proc.identity.cgroup == str(path)
    with anyio.fail_after(20):
        assert await proc.wait() == 0
    child = int((launch.trial_dir / "child").read_text())
    assert not is_alive(child)
    # The trial ran in the run's own cgroup from its first instruction.
    assert cgroup_line(launch.trial_dir).endswith(f"/{path.name}")
    assert cgroups.kill_and_remove(path)
    assert not path.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["setsid", "setpgid"])
async def test_a_child_that_escapes_is_gone_when_the_trial_ends_with_the_subreaper(
    folder: Path, how: str
) -> None:
    containment = Containment.discover("subreaper", folder / "state")
    assert containment.describe() == {
        "kind": "subreaper",
        "base": None,
        "reason": 'containment = "subreaper" in the configuration',
    }
    launch = launch_of(folder, escaping_trial(how))
    proc = await TrialProcess.start(launch)
    with anyio.fail_after(20):
        assert await proc.wait() == 0
    child = int((launch.trial_dir / "child").read_text())
    assert not is_alive(child)
    assert cgroup_line(launch.trial_dir) == own_cgroup()  # no cgroup of its own


@needs_cgroups
@pytest.mark.anyio
async def test_the_cgroup_kills_what_a_killed_shim_left(folder: Path, cgroups: Containment) -> None:
    # The second net: a shim SIGKILLed (so its own clean-up never ran) leaves the trial's
    # escaped child reparented elsewhere; the run's cgroup still holds it, and its kill ends it.
    path = cgroups.make(run_name("c1", 0, 1))
    launch = launch_of(folder, escaping_trial("setsid", wait=True), cgroup=path)
    proc = await TrialProcess.start(launch)
    await wait_for_file(launch.trial_dir / "ready")
    child = int((launch.trial_dir / "child").read_text())
    os.kill(proc.pid, signal.SIGKILL)
    with anyio.fail_after(20):
        assert await proc.wait() == -signal.SIGKILL  # no status file: the shim's own end
    assert is_alive(child)  # nothing else would have killed it
    assert cgroups.kill_and_remove(path)
    await wait_until("the escaped child killed by the cgroup", lambda: not is_alive(child))
    assert not path.exists()


# -- discover / make / describe -------------------------------------------------------------------


@needs_cgroups
def test_discover_as_root_makes_a_subtree_of_this_state_dir(
    folder: Path, cgroups: Containment
) -> None:
    mounted = cgroup2_mount()
    assert mounted is not None
    assert cgroups.base is not None
    assert cgroups.base.parent == mounted[0] / "hpod"
    assert len(cgroups.base.name) == 12
    assert cgroups.base.stat().st_uid == 0
    assert cgroups.describe()["kind"] == "cgroup"
    assert str(cgroups.base) in cgroups.describe()["reason"]
    # The same state dir names the same subtree; "auto" finds it too.
    again = Containment.discover("auto", folder / "state")
    assert again == cgroups
    other = Containment.discover("auto", folder / "other")
    assert other.base != cgroups.base
    assert other.base is not None
    other.base.rmdir()
    # A name is one run's, and a cgroup with processes in it is never handed out again.
    with pytest.raises(ValueError, match="cannot name a cgroup"):
        cgroups.make("../x")
    path = cgroups.make("c1.0.1")
    assert cgroups.make("c1.0.1") == path  # an empty one is used again
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (path / "cgroup.procs").write_text(str(holder.pid))
        with pytest.raises(ContainmentUnavailable, match="already has processes"):
            cgroups.make("c1.0.1")
    finally:
        assert cgroups.kill_and_remove(path)
        holder.wait(10)
    assert holder.returncode == -signal.SIGKILL


def test_discover_without_root_falls_back_or_refuses(folder: Path) -> None:
    if os.geteuid() == 0:
        # As another user: the child reports what it found (nobody cannot write cgroups).
        import pwd

        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user 'nobody'")
        skip_unless_others_reach_the_checkout()
        folder.chmod(0o755)
        code = textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(REPO)!r})
            from hpod.daemon.containment import Containment, ContainmentUnavailable
            auto = Containment.discover("auto", __import__("pathlib").Path({str(folder)!r}))
            try:
                Containment.discover("cgroup", __import__("pathlib").Path({str(folder)!r}))
                refused = None
            except ContainmentUnavailable as exc:
                refused = [exc.message, int(exc.code)]
            print(json.dumps([auto.describe(), refused]))
            """
        )
        env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
        # The system's python: this one's virtualenv may lie where nobody cannot reach.
        python = Path("/usr/bin/python3")
        if not python.exists():
            pytest.skip("no /usr/bin/python3 for user nobody")
        out = subprocess.run(
            [str(python), "-c", code],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        auto, refused = json.loads(out.stdout)
    else:
        auto = Containment.discover("auto", folder).describe()
        try:
            Containment.discover("cgroup", folder)
            refused = None
        except ContainmentUnavailable as exc:
            refused = [exc.message, int(exc.code)]
    if os.environ.get("INVOCATION_ID"):
        pytest.skip("a systemd service may have a delegated cgroup")
    assert auto["kind"] == "subreaper"
    assert "not root" in auto["reason"] or "no cgroup" in auto["reason"]
    assert refused is not None
    assert refused[1] == -32060
    assert 'containment = "cgroup"' in refused[0]
    assert "Delegate=yes" in refused[0]


def test_parsing_mountinfo_and_proc_cgroup() -> None:
    hybrid = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(hybrid) == (Path("/sys/fs/cgroup/unified"), "/")
    unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    assert cgroup2_mount(unified) == (Path("/sys/fs/cgroup"), "/")
    spaced = "29 23 0:26 /x /mnt/c\\040g rw shared:4 - cgroup2 none rw\n"
    assert cgroup2_mount(spaced) == (Path("/mnt/c g"), "/x")
    assert cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n") is None
    assert own_cgroup("4:memory:/x\n0::/system.slice/hpod.service\n") == (
        "/system.slice/hpod.service"
    )
    assert own_cgroup("4:memory:/x\n") is None


# -- adoption at the process level ----------------------------------------------------------------


# A trial that notes each signal it is sent (file `got`) and exits 40 + the signal on SIGHUP.
NOTING_TRIAL = """
import os, signal, sys, time
folder = os.environ["HPOD_TRIAL_DIR"]
def note(name, text):
    with open(os.path.join(folder, name + ".tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
def on(signum, frame):
    note("got", str(signum))
    if signum == signal.SIGHUP:
        os._exit(40 + signum)
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, on)
note("ready", "1")
while True:
    time.sleep(60)
"""


def start_elsewhere(launch: TrialLaunch) -> ProcessIdentity:
    """Start a run as a daemon would, in another process that then dies at once (os._exit,
    as if SIGKILLed): its shim lives on, no longer anyone's child here."""
    code = textwrap.dedent(
        """
        import json, os, sys
        from pathlib import Path
        import anyio
        from hpod.daemon.runner import TrialLaunch, TrialProcess
        raw = json.loads(sys.argv[1])
        launch = TrialLaunch(
            study_id=raw["study_id"], trial_id=0, command=tuple(raw["command"]), config={},
            workdir=Path(raw["workdir"]), trial_dir=Path(raw["trial_dir"]),
            checkpoint_dir=Path(raw["trial_dir"]) / "checkpoint", socket_path="s", token="t",
            resume_from=0.0, max_resource=1.0, run=1, status_dir=Path(raw["status_dir"]),
        )
        async def main():
            proc = await TrialProcess.start(launch)
            print(json.dumps(proc.identity.to_json()), flush=True)
            os._exit(0)
        anyio.run(main)
        """
    )
    raw = {
        "study_id": launch.study_id,
        "command": list(launch.command),
        "workdir": str(launch.workdir),
        "trial_dir": str(launch.trial_dir),
        "status_dir": str(launch.status_dir),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(raw)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        check=True,
    )
    return ProcessIdentity.from_json(json.loads(out.stdout))


@pytest.mark.anyio
async def test_adopt_a_live_shim_another_process_started(folder: Path) -> None:
    launch = launch_of(folder, NOTING_TRIAL)
    identity = start_elsewhere(launch)
    await wait_for_file(launch.trial_dir / "ready")
    assert identity.matches()
    assert identity.trial_matches()
    assert identity == ProcessIdentity.from_json(json.loads(json.dumps(identity.to_json())))
    assert identity.boot_id == boot_id()
    proc = await TrialProcess.adopt(launch, identity)
    assert proc is not None
    assert (proc.pid, proc.trial_pid) == (identity.pid, identity.trial_pid)
    assert proc.returncode is None
    proc.send(signal.SIGHUP)  # forwarded by the shim to the trial's group
    with anyio.fail_after(20):
        assert await proc.wait() == 40 + signal.SIGHUP  # from the shim's status file
    assert proc.shim_returncode is None  # not our child: its own status is not ours to read
    assert not is_alive(identity.pid)  # gone, or a zombie its new parent has yet to reap
    proc.send(signal.SIGTERM)  # quietly nothing: its pidfd is closed, no pid is signalled


@pytest.mark.anyio
async def test_stop_an_adopted_run_that_ignores_sigterm(folder: Path) -> None:
    code = """
    import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(os.environ["HPOD_TRIAL_DIR"], "ready"), "w").close()
    time.sleep(300)
    """
    launch = launch_of(folder, code)
    identity = start_elsewhere(launch)
    await wait_for_file(launch.trial_dir / "ready")
    proc = await TrialProcess.adopt(launch, identity)
    assert proc is not None
    began = time.monotonic()
    with anyio.fail_after(20):
        assert await proc.stop(0.3) == -signal.SIGKILL
    assert time.monotonic() - began < 5
    assert not is_alive(identity.trial_pid)


@pytest.mark.anyio
async def test_adopt_of_an_identity_that_does_not_match_returns_none_and_sends_nothing(
    folder: Path,
) -> None:
    launch = launch_of(folder, NOTING_TRIAL)
    identity = start_elsewhere(launch)
    await wait_for_file(launch.trial_dir / "ready")
    wrong_start = replace(identity, start_ticks=identity.start_ticks + 1)
    wrong_boot = replace(identity, boot_id="00000000-0000-0000-0000-000000000000")
    gone = replace(identity, pid=2**22 + 1)  # past any pid_max: no such process
    for wrong in (wrong_start, wrong_boot, gone):
        assert not wrong.matches()
        assert await TrialProcess.adopt(launch, wrong) is None
    await anyio.sleep(0.2)  # time for a signal sent by mistake to arrive: none must
    assert not (launch.trial_dir / "got").exists()
    assert is_alive(identity.pid)
    assert is_alive(identity.trial_pid)
    # The right identity still adopts it (and ends it, for the clean-up).
    proc = await TrialProcess.adopt(launch, identity)
    assert proc is not None
    with anyio.fail_after(20):
        assert await proc.stop(0.2) in (-signal.SIGKILL, 40 + signal.SIGHUP, -signal.SIGTERM)


@pytest.mark.anyio
async def test_adopt_our_own_child_after_a_re_exec_reaps_it(folder: Path) -> None:
    # After a re-exec the shim is still this process's child: adopt() reaps it once it exits.
    launch = launch_of(folder, "import sys; sys.exit(4)")
    launch.trial_dir.mkdir(parents=True)
    read_fd, write_fd = os.pipe()
    args_read, args_write = os.pipe()
    os.set_inheritable(write_fd, True)
    os.set_inheritable(args_read, True)
    args = {
        "argv": list(launch.command),
        "cwd": str(folder),
        "env": dict(os.environ),
        "status_path": str(launch.status_path),
        "cgroup": None,
    }
    os.write(args_write, json.dumps(args).encode())
    os.close(args_write)
    argv = shim_command("c1.0.1", args_read, write_fd)
    pid = os.posix_spawn(argv[0], argv, {}, setsid=True)
    os.close(write_fd)
    os.close(args_read)
    with os.fdopen(read_fd, "rb") as pipe:
        line = json.loads(pipe.read())
    identity = ProcessIdentity.of_shim(
        pid,
        trial_pid=line["trial_pid"],
        trial_start_ticks=line["trial_start_ticks"],
        cgroup=None,
        status_path=str(launch.status_path),
    )
    proc = await TrialProcess.adopt(launch, identity)
    assert proc is not None
    with anyio.fail_after(20):
        assert await proc.wait() == 4
    assert proc.shim_returncode == 0  # reaped here, no zombie left
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_start_ticks_reads_past_a_name_with_parentheses(folder: Path) -> None:
    # A command name may hold ") (": the fields are counted after the last ')'.
    odd = folder / "a) (b"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        ticks = start_ticks(child.pid)
        assert isinstance(ticks, int)
        assert ticks > 0
        assert start_ticks(child.pid) == ticks
    finally:
        child.kill()
        child.wait()
    assert start_ticks(child.pid) is None


# -- the trials service: a run's cgroup goes when the run ends ------------------------------------


@needs_cgroups
@pytest.mark.anyio
async def test_a_runs_cgroup_is_removed_after_it_ends(
    store: Store, root: Path, cgroups: Containment
) -> None:
    code = escaping_trial("setsid")
    text = spec_toml(
        "t",
        command=json.dumps([sys.executable, "-c", textwrap.dedent(code)]),
        scheduler='type = "asha"\nmax_resource = 9',
        limits="max_trials = 1",
    )
    spec = StudySpec.from_toml(text, base_dir=root)
    study = await make_study(store, root, spec)
    trials = Trials(
        DaemonConfig.defaults(),
        DevicePool(1),
        store,
        {study.id: study},
        trial_socket=str(root / "s"),
        containment=cgroups,
    )
    hooks = Hooks(store)
    trials.hooks = hooks
    assert cgroups.base is not None
    async with anyio.create_task_group() as tg:
        trials.tg = tg
        tg.start_soon(trials.dispatch)
        await hooks.ends(1)
        tdir = trial_dir(study, 0)
        line = cgroup_line(tdir)
        name = line.rsplit("/", 1)[1]
        assert name == run_name(study.id, 0, 1)
        child = int((tdir / "child").read_text())
        await wait_until("the run's cgroup removed", lambda: not (cgroups.base / name).exists())
        assert not is_alive(child)
        trials.close()
        tg.cancel_scope.cancel()


@needs_cgroups
def test_discover_under_a_delegated_systemd_service(folder: Path) -> None:
    # No systemd here: a real cgroup named like a service's stands in for the one systemd would
    # delegate, and a process in it with INVOCATION_ID set runs discover as the daemon would.
    mounted = cgroup2_mount()
    assert mounted is not None
    service = mounted[0] / f"hpodtest-{os.getpid()}.service"
    service.mkdir()
    code = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        service = Path({str(service)!r})
        (service / "cgroup.procs").write_text(str(os.getpid()))
        os.environ["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
        from hpod.daemon.containment import Containment, own_cgroup
        first = Containment.discover("cgroup", Path({str(folder)!r}))
        moved = own_cgroup()
        again = Containment.discover("auto", Path({str(folder)!r}))  # as after a re-exec
        print(json.dumps([first.describe(), moved, again.describe(), own_cgroup()]))
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        first, moved, again, still = json.loads(out.stdout)
        assert first["kind"] == "cgroup"
        assert first["base"] == str(service / "trials")
        assert "Delegate=yes" in first["reason"]
        # The daemon left the service's own cgroup for its `daemon` child (no internal processes).
        assert moved == f"/{service.name}/daemon"
        assert again == first
        assert still == moved
        assert (service / "cgroup.procs").read_text() == ""
        assert (service / "daemon" / "cgroup.procs").read_text() == ""  # it has exited
    finally:
        for sub in ("trials", "daemon"):
            if (service / sub).exists():
                Containment.cgroups_in(service, "cleanup").kill_and_remove(service / sub)
        service.rmdir()


@pytest.mark.anyio
async def test_a_cgroup_the_shim_cannot_enter_is_a_start_error(folder: Path) -> None:
    from hpod.daemon.runner import TrialStartError

    ran = folder / "ran"
    launch = launch_of(folder, f"open({str(ran)!r}, 'w').close()", cgroup=folder / "no-cgroup")
    with pytest.raises(TrialStartError, match=r"could not put the trial in its cgroup .*no-cgroup"):
        await TrialProcess.start(launch)
    assert not ran.exists()  # the trial never ran outside its cgroup


@needs_cgroups
def test_release_removes_the_subtree_unless_a_run_is_in_it(folder: Path) -> None:
    containment = Containment.discover("cgroup", folder / "state")
    base = containment.base
    assert base is not None
    busy = containment.make("c1.0.1")
    containment.make("c1.1.1")  # empty: a run that never entered it
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (busy / "cgroup.procs").write_text(str(holder.pid))
        containment.release()
        # A run alive (one left for the next daemon to adopt) keeps its cgroup and the base.
        assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["c1.0.1"]
        assert containment.kill_and_remove(busy)
    finally:
        holder.kill()
        holder.wait(10)
    containment.release()
    assert not base.exists()
    # Made again, as the daemon's own, when a run needs it after all.
    again = containment.make("c1.2.1")
    assert again.parent == base
    assert containment.kill_and_remove(again)
    containment.release()
    assert not base.exists()


def test_a_tree_that_refuses_the_move_is_no_cgroup_tree(tmp_path: Path) -> None:
    """discover's probe: a folder that can be made is not enough; a process must really be
    movable into it, else every trial's shim would fail to start (auto falls back)."""
    from hpod.daemon.containment import _NoCgroup, _probe

    # A cgroup.procs that cannot be written (here: a folder in its place).
    (tmp_path / f"probe.{os.getpid()}" / "cgroup.procs").mkdir(parents=True)
    with pytest.raises(_NoCgroup, match="cannot move a process into a cgroup"):
        _probe(tmp_path)


@needs_cgroups
def test_the_probe_moves_a_process_and_leaves_nothing(cgroups: Containment) -> None:
    from hpod.daemon.containment import _probe

    assert cgroups.base is not None
    _probe(cgroups.base)
    assert not any(p.name.startswith("probe.") for p in cgroups.base.iterdir())
