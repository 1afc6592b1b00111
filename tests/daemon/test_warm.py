"""Warm starts (hpod.daemon.warm, hpod/daemon/forkserver.py): a run's shim forked from the study's
fork server, with real processes: the trial runs with the contract's environment, in its own
folder, group and cgroup, as the study's owner, and its exit is read as a cold run's is."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hpod.core.spec import StudySpec, warm_command_problem
from hpod.daemon import warm
from hpod.daemon.containment import Containment
from hpod.daemon.procid import ProcessIdentity, parent_pid
from hpod.daemon.runner import TrialLaunch, TrialProcess, trial_environment
from hpod.daemon.warm import (
    WarmServer,
    WarmUnavailable,
    plan_for,
    server_environment,
    start_server,
)
from hpod.errors import SpecError
from tests.reach import skip_unless_others_reach_the_checkout

pytestmark = pytest.mark.timeout(120)

TRIAL = """
import json, os, sys
print("hello from the trial", flush=True)
seen = {
    "warm": "colorsys" in sys.modules,  # imported by the server, not by this script
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "uid": os.getuid(),
    "gid": os.getgid(),
    "cwd": os.getcwd(),
    "argv": sys.argv,
    "path0": sys.path[0],
    "env": dict(os.environ),
    "cgroup": open("/proc/self/cgroup").read(),
}
with open(os.path.join(os.environ["HPOD_TRIAL_DIR"], "seen.json"), "w") as f:
    json.dump(seen, f)
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    path.chmod(0o755)  # the owner's trial (nobody) must reach its script
    yield path
    shutil.rmtree(path, ignore_errors=True)


def launch_in(folder: Path, **kw: object) -> TrialLaunch:
    (folder / "trial.py").write_text(textwrap.dedent(TRIAL))
    (folder / "trial.py").chmod(0o644)
    studies = folder / "studies"
    studies.mkdir(exist_ok=True)
    trial_dir = studies / "w" / "trials" / "1"
    status = folder / "runs"
    status.mkdir(mode=0o700, exist_ok=True)
    base = {
        "study_id": "w",
        "trial_id": 1,
        "command": ("python3", "trial.py", "--lr", "{lr}"),
        "config": {"lr": 0.5},
        "workdir": folder,
        "trial_dir": trial_dir,
        "checkpoint_dir": trial_dir / "checkpoint",
        "socket_path": "/nowhere/s",
        "token": "t0k3n",
        "resume_from": 0.0,
        "max_resource": 3.0,
        "within": studies,
        "run": 1,
        "status_dir": status,
    }
    base.update(kw)
    return TrialLaunch(**base)  # type: ignore[arg-type]


def system_env() -> dict[str, str]:
    # The system's python3 on PATH: the venv may lie where `nobody` cannot reach.
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "KEEP": "me"}


@pytest.fixture
async def server(folder: Path) -> AsyncIterator[WarmServer]:
    launch = launch_in(folder)
    env = server_environment(trial_environment(launch, system_env()))
    plan = plan_for("w", launch.command, folder, ("colorsys",), env, None)
    srv = await start_server(plan)
    yield srv
    await srv.reap()


@pytest.mark.anyio
async def test_a_warm_trial_runs_with_the_contracts_environment(
    folder: Path, server: WarmServer
) -> None:
    launch = launch_in(folder)
    stored: list[ProcessIdentity] = []

    async def on_shim(identity: ProcessIdentity) -> None:
        stored.append(identity)

    proc = await TrialProcess.start(launch, base_env=system_env(), on_shim=on_shim, warm=server)
    assert [s.pid for s in stored] == [proc.pid]  # stored before it was told what to start
    with anyio.fail_after(30):
        assert await proc.wait() == 0
    seen = json.loads((launch.trial_dir / "seen.json").read_text())
    assert seen["warm"] is True
    assert seen["pid"] == proc.trial_pid
    assert seen["pgid"] == proc.trial_pid  # it leads its own group
    assert seen["cwd"] == str(folder)
    assert seen["argv"] == ["trial.py", "--lr", "0.5"]
    assert seen["path0"] == str(folder.resolve())
    # Exactly what a cold run of the same launch gets: the submitter's, then the contract.
    assert seen["env"] == trial_environment(launch, system_env())
    assert seen["env"]["HPOD_TOKEN"] == "t0k3n"
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == ""
    out = (launch.trial_dir / "stdout.log").read_text()
    assert "=== run started" in out
    assert "hello from the trial" in out
    assert proc.returncode == 0
    # It imported nothing the server had not: no word about late imports.
    assert "hpod warm start" not in (launch.trial_dir / "stderr.log").read_text()


@pytest.mark.anyio
async def test_a_warm_trials_exit_status_is_its_own(folder: Path, server: WarmServer) -> None:
    launch = launch_in(folder, extra_env={"EXIT_WITH": "7"})
    proc = await TrialProcess.start(launch, base_env=system_env(), warm=server)
    with anyio.fail_after(30):
        assert await proc.wait() == 7
    assert not proc.status_missing


@pytest.mark.anyio
async def test_a_warm_trial_is_stopped_like_a_cold_one(folder: Path, server: WarmServer) -> None:
    slow = "import time, sys\nprint('up', flush=True)\ntime.sleep(60)\n"
    launch = launch_in(folder)
    (folder / "trial.py").write_text(slow)
    proc = await TrialProcess.start(launch, base_env=system_env(), warm=server)
    with anyio.fail_after(30):
        while "up" not in (launch.trial_dir / "stdout.log").read_text():
            await anyio.sleep(0.01)
        assert await proc.stop(5.0) == -signal.SIGTERM


@pytest.mark.anyio
async def test_a_warm_run_that_imports_much_after_its_fork_is_told_so(
    folder: Path, server: WarmServer
) -> None:
    """What each run imports again (not in warm_imports) is named on its stderr: the packages
    most of them are in."""
    package = folder / "bulky"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for i in range(60):
        (package / f"part{i}.py").write_text("")
    imports = "".join(f"import bulky.part{i}\n" for i in range(60))
    launch = launch_in(folder)
    (folder / "trial.py").write_text(f"import colorsys\n{imports}")
    proc = await TrialProcess.start(launch, base_env=system_env(), warm=server)
    with anyio.fail_after(30):
        assert await proc.wait() == 0
    err = (launch.trial_dir / "stderr.log").read_text()
    assert "this run imported 61 modules after its fork, most of them under bulky:" in err
    assert "warm_imports" in err


@pytest.mark.anyio
async def test_a_warm_run_leaves_the_servers_finalizers_to_the_server(folder: Path) -> None:
    """A finalizer the warm imports registered is not called at a run's exit (what it cleans up
    is shared by every fork); one the run registered is, as in any interpreter."""
    mark = "lambda name: open(os.path.join(os.environ['HPOD_TRIAL_DIR'], name), 'w').close()"
    (folder / "final.py").write_text(
        f"import os, weakref\nclass Held: pass\nheld = Held()\nmark = {mark}\n"
        "weakref.finalize(held, mark, 'server-finalizer')\n"
    )
    launch = launch_in(folder)
    (folder / "trial.py").write_text(
        f"import os, weakref\nclass Held: pass\nheld = Held()\nmark = {mark}\n"
        "weakref.finalize(held, mark, 'trial-finalizer')\n"
    )
    env = server_environment(trial_environment(launch, system_env()))
    srv = await start_server(plan_for("w", launch.command, folder, ("final",), env, None))
    try:
        proc = await TrialProcess.start(launch, base_env=system_env(), warm=srv)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        await srv.reap()
    assert (launch.trial_dir / "trial-finalizer").exists()
    assert not (launch.trial_dir / "server-finalizer").exists()


# Runs until the test says go: its shim and trial are there to look at meanwhile.
UNTIL_GO = "import os, time\nwhile not os.path.exists(os.environ['GO']):\n    time.sleep(0.01)\n"


def numbered(folder: Path, trial_id: int) -> TrialLaunch:
    trial_dir = folder / "studies" / "w" / "trials" / str(trial_id)
    launch = launch_in(
        folder,
        trial_id=trial_id,
        trial_dir=trial_dir,
        checkpoint_dir=trial_dir / "checkpoint",
        extra_env={"GO": str(folder / "go")},
    )
    (folder / "trial.py").write_text(UNTIL_GO)
    return launch


async def assert_own_shims(folder: Path, procs: list[TrialProcess]) -> None:
    """Each run's shim (what the daemon watches) is its trial's parent: the answer each start
    was given was its own request's."""
    for proc in procs:
        assert parent_pid(proc.trial_pid) == proc.pid
    (folder / "go").touch()
    with anyio.fail_after(30):
        for proc in procs:
            assert await proc.wait() == 0


@pytest.mark.anyio
async def test_runs_started_at_once_each_get_their_own_shim(
    folder: Path, server: WarmServer
) -> None:
    """Fork requests are pipelined (sent at once, answered in order): twelve starts at once."""
    procs: dict[int, TrialProcess] = {}

    async def start(i: int) -> None:
        procs[i] = await TrialProcess.start(numbered(folder, i), base_env=system_env(), warm=server)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(start, i)
    assert len({p.pid for p in procs.values()}) == 12
    await assert_own_shims(folder, list(procs.values()))


@pytest.mark.anyio
async def test_a_start_queued_behind_others_is_not_timed_out_by_their_wait(
    folder: Path, server: WarmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of starts (1,000 trials at once) queues at the server: the last request waits for
    all the forks before its own. The time limit is on the server's answers, not on that queue:
    starts waiting behind longer than it still start warm (they fell back to cold ones, all of
    them, once the first had waited 10 s)."""
    monkeypatch.setattr(warm, "FORK_SECONDS", 1.0)
    procs: dict[int, TrialProcess] = {}

    async def start(i: int) -> None:
        procs[i] = await TrialProcess.start(numbered(folder, i), base_env=system_env(), warm=server)

    # Answers are read by one caller at a time: held here, the queue waits past the limit.
    await server._read_lock.acquire()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(start, i)
            with anyio.fail_after(10):
                while len(server._waiting) < 6:
                    await anyio.sleep(0.005)
            await anyio.sleep(1.5)  # the wait this test is about, not a wait for readiness
            server._read_lock.release()
    finally:
        if server._read_lock.locked():
            server._read_lock.release()
    assert not server.closed
    assert len({p.pid for p in procs.values()}) == 6
    await assert_own_shims(folder, list(procs.values()))


@pytest.mark.anyio
async def test_a_start_given_up_leaves_the_next_its_own_answer(
    folder: Path, server: WarmServer
) -> None:
    """A start cancelled after its request went out: its answer, when it comes, is dropped, and
    the next start gets the answer to its own request, not that one."""
    await server._read_lock.acquire()  # nobody reads an answer until both requests are out
    try:

        async def first() -> None:
            await TrialProcess.start(numbered(folder, 1), base_env=system_env(), warm=server)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(10):
                while len(server._waiting) < 1:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        later: list[TrialProcess] = []

        async def second() -> None:
            later.append(
                await TrialProcess.start(numbered(folder, 2), base_env=system_env(), warm=server)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            with anyio.fail_after(10):
                while len(server._waiting) < 2:
                    await anyio.sleep(0.005)
            server._read_lock.release()
    finally:
        if server._read_lock.locked():
            server._read_lock.release()
    await assert_own_shims(folder, later)


@pytest.mark.anyio
async def test_a_warm_shim_is_adopted_through_its_identity(
    folder: Path, server: WarmServer
) -> None:
    """What a restarted daemon does with a warm run it finds alive: the same pidfd and status
    file as a cold one's (the shim was never its child)."""
    slow = "import sys, time\nprint('up', flush=True)\ntime.sleep(0.5)\nsys.exit(4)\n"
    launch = launch_in(folder)
    (folder / "trial.py").write_text(slow)
    first = await TrialProcess.start(launch, base_env=system_env(), warm=server)
    adopted = await TrialProcess.adopt(launch, first.identity)
    assert adopted is not None
    with anyio.fail_after(30):
        assert await adopted.wait() == 4


@pytest.mark.anyio
async def test_a_warm_trial_runs_in_its_runs_cgroup(folder: Path, server: WarmServer) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a cgroup of its own")
    containment = Containment.discover("auto", folder / "state")
    if not containment.uses_cgroups:
        pytest.skip(containment.reason)
    cgroup = containment.make("w.1.1")
    try:
        launch = dataclasses.replace(launch_in(folder), cgroup=cgroup)
        proc = await TrialProcess.start(launch, base_env=system_env(), warm=server)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
        seen = json.loads((launch.trial_dir / "seen.json").read_text())
        assert seen["cgroup"].strip().endswith("/w.1.1")
    finally:
        containment.kill_and_remove(cgroup)
        containment.release()


@pytest.mark.anyio
async def test_a_warm_trial_runs_as_the_studys_owner(folder: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    skip_unless_others_reach_the_checkout()
    launch = launch_in(folder, user=pw.pw_uid)
    env = server_environment(trial_environment(launch, system_env()))
    srv = await start_server(plan_for("w", launch.command, folder, ("colorsys",), env, pw.pw_uid))
    try:
        proc = await TrialProcess.start(launch, base_env=system_env(), warm=srv)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        await srv.reap()
    seen = json.loads((launch.trial_dir / "seen.json").read_text())
    assert seen["warm"] is True
    assert (seen["uid"], seen["gid"]) == (pw.pw_uid, pw.pw_gid)
    assert seen["env"]["USER"] == "nobody"
    assert seen["env"] == trial_environment(launch, system_env())


@pytest.mark.anyio
async def test_imports_that_leave_a_thread_running_refuse_the_warm_start(folder: Path) -> None:
    (folder / "threaded.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    launch = launch_in(folder)
    env = server_environment(trial_environment(launch, system_env()))
    plan = plan_for("w", launch.command, folder, ("threaded",), env, None)
    with pytest.raises(WarmUnavailable, match="threads"):
        await start_server(plan)


@pytest.mark.anyio
async def test_an_import_that_fails_refuses_the_warm_start(folder: Path) -> None:
    launch = launch_in(folder)
    env = server_environment(trial_environment(launch, system_env()))
    plan = plan_for("w", launch.command, folder, ("no_such_module_here",), env, None)
    with pytest.raises(WarmUnavailable, match="import no_such_module_here"):
        await start_server(plan)


SPEC = """
name = "w"
command = {command}
[objective]
metric = "loss"
mode = "min"
[space]
x = {{ param_type = "uniform", range = [0, 1] }}
[executor]
{executor}
"""


def spec(command: str, executor: str) -> StudySpec:
    return StudySpec.from_toml(SPEC.format(command=command, executor=executor), base_dir="/tmp")


def test_the_spec_keys() -> None:
    s = spec('["python", "train.py", "{x}"]', 'warm_start = true\nwarm_imports = ["torch.nn"]')
    assert s.executor.warm_start
    assert s.executor.warm_imports == ("torch.nn",)
    assert s.to_dict()["executor"]["warm_imports"] == ["torch.nn"]
    assert not spec('["python", "train.py"]', 'type = "local"').executor.warm_start


@pytest.mark.parametrize(
    ("command", "executor", "problem"),
    [
        ('["./train.sh"]', "warm_start = true", "needs a Python command"),
        ('["python", "-c", "pass"]', "warm_start = true", "a script or a module"),
        ('["python", "{script}"]', "warm_start = true", "no placeholder"),
        ('["python", "t.py"]', 'warm_start = true\nwarm_imports = ["to rch"]', "module name"),
        ('["python", "t.py"]', 'warm_start = true\nwarm_imports = "torch"', "list of module"),
        ('["python", "t.py"]', 'warm_imports = ["torch"]', "warm_start = true"),
        ('["python", "t.py"]', 'type = "external"\nwarm_start = true', "only the local"),
    ],
)
def test_bad_spec_keys(command: str, executor: str, problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        spec(command, executor)


def test_warm_commands() -> None:
    assert warm_command_problem(("python3.11", "-u", "-m", "pkg.train", "{x}")) is None
    assert warm_command_problem((sys.executable, "train.py", "--lr", "{lr}")) is None
    assert warm_command_problem(("python", "-m")) is not None
