"""Hostile users against a real root daemon: what its trials do in their own folders never makes
root read, write or chown anything else, and no user reads another's files on disk.

This runs only as root (CI does): it makes two throwaway users with ``useradd`` (removed at the
end), starts ``hpod serve`` as root, and acts as each user from a forked child that drops to
that user's uid, gid and groups before it runs hpodctl's own ``main`` (the real client, over
the real socket, so SO_PEERCRED sees that uid) or opens files. A fork, not a new interpreter:
the test's Python may live where those users cannot reach it (``/root/.pyenv``). The trials
are ``/bin/sh`` scripts, for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import io
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hpod.cli.hpodctl as hpodctl
import hpod.client  # noqa: F401  (imported here: the child that drops root may not reach it)
from tests.e2e.conftest import DaemonHandle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: makes throwaway users with useradd and runs a root daemon",
    ),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd to make users"),
]

SECRET = "TOP-SECRET-of-root"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def throwaway_users() -> Iterator[tuple[User, User]]:
    """Two users made with useradd, removed (with anything they left running) at the end."""
    made: list[str] = []
    try:
        out: list[User] = []
        for letter in ("a", "b"):
            name = f"hpod{letter}{secrets.token_hex(4)}"
            subprocess.run(
                ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                 "/usr/sbin/nologin", "--user-group", name],
                check=True,
                capture_output=True,
            )  # fmt: skip
            made.append(name)
            pw = pwd.getpwnam(name)
            out.append(User(name, pw.pw_uid, pw.pw_gid))
        yield out[0], out[1]
    finally:
        for name in made:
            with contextlib.suppress(subprocess.CalledProcessError, KeyError):
                subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
                subprocess.run(["userdel", name], check=True, capture_output=True)
                with contextlib.suppress(KeyError):
                    grp.getgrnam(name)
                    subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, User]]:
    with throwaway_users() as made:
        yield made


def as_user(user: User, fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a forked child as ``user`` (uid, gid, groups); its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups(os.getgrouplist(user.name, user.gid))
            os.setgid(user.gid)
            os.setuid(user.uid)
            payload = json.dumps({"result": fn()})
            code = 0
        except BaseException as exc:
            payload = json.dumps({"raised": repr(exc)})
        finally:
            with contextlib.suppress(BaseException):
                data = payload.encode()
                while data:
                    data = data[os.write(w, data) :]
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    answer = json.loads(data)
    assert "result" in answer, f"as {user.name}: {answer}"
    return answer["result"]


def _hpodctl(socket: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = hpodctl.main(["--socket", socket, *args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def ctl(user: User, socket: str, *args: str) -> tuple[int, str, str]:
    """hpodctl as ``user``: (exit status, stdout, stderr)."""
    rc, out, err = as_user(user, lambda: _hpodctl(socket, *args))
    return rc, out, err


@pytest.fixture(scope="module", autouse=True)
def warm_imports() -> None:
    """Each command this module runs, once as root against no daemon: the modules hpodctl
    imports as it goes (the spec check's numpy, tomllib, ...) are then loaded before a child
    drops root, since it could not read them where this interpreter lives."""
    folder = Path(tempfile.mkdtemp(prefix="hpod"))
    try:
        path = folder / "s.toml"
        path.write_text(spec("warm", folder, "x.sh", trials=1, env='A = "1"'))
        nowhere = str(folder / "no-daemon")
        for args in (
            ("submit", str(path)),
            ("show", "x"),
            ("logs", "x", "0", "--stdout"),
            ("wait", "x", "--timeout", "1"),
            ("ping",),
        ):
            for extra in ((), ("--json",)):
                _hpodctl(nowhere, *args, *extra)
    finally:
        shutil.rmtree(folder)


def ctl_json(user: User, socket: str, *args: str) -> Any:
    rc, out, err = ctl(user, socket, *args, "--json")
    assert rc == 0, f"hpodctl {' '.join(args)} as {user.name}: {rc}\n{out}\n{err}"
    return json.loads(out)


def try_open(user: User, paths: list[Path]) -> dict[str, str]:
    """For each path, what ``user`` gets from opening (a file) or listing (a folder) it."""

    def run() -> dict[str, str]:
        seen: dict[str, str] = {}
        for path in paths:
            try:
                if path.is_dir():
                    os.listdir(path)
                else:
                    with open(path, "rb") as f:
                        f.read(1)
                seen[str(path)] = "read"
            except OSError as exc:
                seen[str(path)] = errno.errorcode.get(exc.errno or 0, str(exc))
        return seen

    result: dict[str, str] = as_user(user, run)
    return result


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    # The users reach the socket, their specs and the workdir through it; nothing else here.
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(root: Path) -> Iterator[DaemonHandle]:
    handle = DaemonHandle(root, slots=3)
    # Any local user may connect (who may is another test's subject): 0666.
    config = root / "hpod.toml"
    config.write_text("socket_mode = 0o666\n")
    handle.command = [*handle.command, "--config", str(config)]
    handle.start()
    yield handle
    if handle.proc is not None:
        proc = handle.proc
        try:
            rc = handle.stop(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # a daemon stuck on something a trial put in its way
            proc.wait()
            raise
        assert rc == 0, f"daemon exited {rc}:\n{handle.output()}"


def write_public(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(mode)
    return path


def spec(
    name: str, workdir: Path, script: str, *, trials: int, env: str = "", keep: str = ""
) -> str:
    return textwrap.dedent(
        f"""
        name = "{name}"
        command = ["/bin/sh", "{script}"]
        workdir = "{workdir}"
        stop_grace_period = "1s"
        [env]
        {env}
        [objective]
        metric = "loss"
        mode = "min"
        [space]
        x = {{ param_type = "uniform", range = [0, 1] }}
        [limits]
        max_trials = {trials}
        [report]
        period = "1s"
        {keep}
        """
    )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def fingerprint(path: Path) -> Any:
    """All a test can see of a root-only file or folder: owner, mode, content, names."""
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        body: Any = sorted((p.name, fingerprint(p)) for p in path.iterdir())
    else:
        body = path.read_text()
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns, body)


# No `set -e`: each step is tried even where an older layout forbids another.
ATTACK = r"""
study=$(dirname "$(dirname "$HPOD_TRIAL_DIR")")
case "$HPOD_TRIAL" in
0)  # its logs, and the study's reports, become links to root-only files
    ln -sf "$SECRET_ERR" "$HPOD_TRIAL_DIR/stderr.log"
    ln -sf "$SECRET_OUT" "$HPOD_TRIAL_DIR/stdout.log"
    ln -sf "$SECRET_REPORT" "$study/report.json"
    ln -sf "$SECRET_REPORT" "$study/.report.json.tmp"
    ln -sf "$SECRET_REPORT" "$study/report.csv"
    # links inside its checkpoint folder, which the daemon deletes (keep_checkpoints)
    ln -s "$SECRET_DIR" "$HPOD_CHECKPOINT_DIR/a-folder"
    ln -s "$SECRET_ERR" "$HPOD_CHECKPOINT_DIR/a-file"
    ;;
1)  # its checkpoint folder becomes a link to a root-only folder
    rm -rf "$HPOD_CHECKPOINT_DIR"
    ln -s "$SECRET_DIR" "$HPOD_CHECKPOINT_DIR"
    ;;
2)  # its trial folder becomes a link to a root-only folder
    mv "$HPOD_TRIAL_DIR" "$HPOD_TRIAL_DIR.moved"
    ln -s "$SECRET_DIR" "$HPOD_TRIAL_DIR"
    ;;
esac
touch "$FLAGS/ready-$HPOD_TRIAL"
exec sleep 600
"""


def test_a_trials_links_to_root_only_files_are_never_read_opened_or_chowned(
    users: tuple[User, User], root: Path, daemon: DaemonHandle
) -> None:
    alice, _ = users
    vault = root / "vault"  # root's, 0700: what the links point at
    vault.mkdir(mode=0o700)
    targets = {
        "SECRET_ERR": vault / "err",
        "SECRET_OUT": vault / "out",
        "SECRET_REPORT": vault / "report",
    }
    for key, path in targets.items():
        path.write_text(f"{SECRET} {key}\n")
        path.chmod(0o600)
    folder = vault / "folder"
    folder.mkdir(mode=0o700)
    (folder / "inside").write_text(f"{SECRET} inside a folder\n")
    (folder / "inside").chmod(0o600)
    before = fingerprint(vault)

    flags = root / "flags"
    flags.mkdir()
    flags.chmod(0o777)
    work = root / "work"
    write_public(work / "attack.sh", ATTACK)
    env = "\n".join(
        [*(f'{k} = "{v}"' for k, v in targets.items()), f'SECRET_DIR = "{folder}"'],
    )
    env += f'\nFLAGS = "{flags}"'
    spec_path = write_public(
        root / "specs" / "attack.toml",
        spec("attack", work, "attack.sh", trials=3, env=env, keep="keep_checkpoints = 1"),
    )

    sid = ctl_json(alice, daemon.socket, "submit", str(spec_path))["study"]
    wait_for(lambda: all((flags / f"ready-{t}").exists() for t in range(3)), "the three attacks")
    shown: list[str] = []

    def look() -> None:
        """What alice and root get from logs and show: no secret, a refusal instead."""
        for who in (alice, User("root", 0, 0)):
            for trial in range(3):
                for stream in ("--stdout", "--stderr"):
                    rc, out, err = ctl(who, daemon.socket, "logs", sid, str(trial), stream)
                    shown.append(out + err)
                    if trial != 1:  # trial 1's own logs are plain files: they show
                        assert rc != 0, out
                        assert "symbolic link" in err
            rc, out, err = ctl(who, daemon.socket, "show", sid, "--json")
            assert rc == 0, err
            shown.append(out + err)

    look()
    # The trials' next run: a restart relaunches them (interrupted at the shutdown).
    assert daemon.stop() == 0
    daemon.start()
    _, out, err = ctl(alice, daemon.socket, "wait", sid, "--timeout", "60", "--json")
    summary = json.loads(out)
    assert summary["state"] == "failed", (out, err)
    look()

    failures = {f["trial"]: f for f in ctl_json(alice, daemon.socket, "show", sid)["failures"]}
    assert sorted(failures) == [0, 1, 2]
    for trial in range(3):
        assert failures[trial]["error"].startswith("could not start: "), failures[trial]
        assert "symbolic link" in failures[trial]["error"]
    assert "not shown" in failures[0]["stderr_tail"]
    assert "not shown" in failures[2]["stderr_tail"]

    # Nothing of root's was printed, changed, chowned or made, and nothing followed.
    for text in [*shown, daemon.output()]:
        assert SECRET not in text
    assert fingerprint(vault) == before
    # The reports replaced alice's links (a rename): regular files of hers, 0600.
    study = daemon.state_dir / "studies" / sid
    for name in ("report.json", "report.csv"):
        st = (study / name).lstat()
        assert stat.S_ISREG(st.st_mode), name
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    assert not os.path.lexists(study / ".report.json.tmp")
    # keep_checkpoints deleted trial 0's checkpoint folder and the links in it, not their aim;
    # trial 1's was a link itself: the link went.
    assert not os.path.lexists(study / "trials" / "0" / "checkpoint")
    assert not os.path.lexists(study / "trials" / "1" / "checkpoint")


GOOD = r"""
id -u
echo "the stderr of uid $(id -u)" >&2
echo "weights of uid $(id -u)" > "$HPOD_CHECKPOINT_DIR/state.pt"
"""


def test_users_cannot_read_each_others_files_and_trials_run_as_their_owner(
    users: tuple[User, User], root: Path, daemon: DaemonHandle
) -> None:
    work = root / "work"
    write_public(work / "good.sh", GOOD)
    studies: dict[str, str] = {}
    for user in users:
        path = write_public(
            root / "specs" / f"{user.name}.toml", spec(user.name, work, "good.sh", trials=1)
        )
        studies[user.name] = ctl_json(user, daemon.socket, "submit", str(path))["study"]
    for user in users:
        sid = studies[user.name]
        ctl(user, daemon.socket, "wait", sid, "--timeout", "60")
        # The trial ran as the study's owner.
        rc, out, err = ctl(user, daemon.socket, "logs", sid, "0", "--stdout")
        assert rc == 0, err
        assert out.splitlines()[-1] == str(user.uid)

    state = daemon.state_dir
    top = 0o711
    assert (state.stat().st_uid, stat.S_IMODE(state.stat().st_mode)) == (0, top)
    assert stat.S_IMODE((state / "studies").stat().st_mode) == top
    for db in state.glob("hpod.sqlite3*"):
        assert (db.stat().st_uid, stat.S_IMODE(db.stat().st_mode)) == (0, 0o600), db

    def files_of(user: User) -> tuple[list[Path], list[Path]]:
        study = state / "studies" / studies[user.name]
        trial = study / "trials" / "0"
        folders = [study, study / "trials", trial, trial / "checkpoint"]
        files = [
            trial / "stdout.log",
            trial / "stderr.log",
            trial / "checkpoint" / "state.pt",
            study / "report.json",
            study / "report.csv",
        ]
        return folders, files

    alice, bob = users
    for owner, other in ((alice, bob), (bob, alice)):
        folders, files = files_of(owner)
        for path in folders:
            st = path.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner.uid, 0o700), path
        for path in files:
            st = path.stat()
            assert st.st_uid == owner.uid, path
            # What the daemon makes is 0600; what the trial writes has its umask's mode, and
            # its 0700 folders keep it the owner's.
            if path.name != "state.pt":
                assert stat.S_IMODE(st.st_mode) == 0o600, path
        every = [*folders, *files]
        assert set(try_open(owner, every).values()) == {"read"}
        seen = try_open(other, every)
        assert seen == {str(p): "EACCES" for p in every}, seen
        # Nor can anyone list which studies there are.
        assert try_open(other, [state / "studies"]) == {str(state / "studies"): "EACCES"}


def test_the_daemon_survives_a_trial_folder_swapped_while_it_runs(
    users: tuple[User, User], root: Path, daemon: DaemonHandle
) -> None:
    """A refused path fails the trial, never the daemon: it keeps serving and stops cleanly."""
    alice, _ = users
    work = root / "work"
    write_public(
        work / "swap.sh",
        'rm -rf "$HPOD_TRIAL_DIR/stderr.log"; mkfifo "$HPOD_TRIAL_DIR/stderr.log"; exit 1\n',
    )
    path = write_public(root / "specs" / "swap.toml", spec("swap", work, "swap.sh", trials=1))
    sid = ctl_json(alice, daemon.socket, "submit", str(path))["study"]
    ctl(alice, daemon.socket, "wait", sid, "--timeout", "60")
    failures = ctl_json(alice, daemon.socket, "show", sid)["failures"]
    assert failures[0]["error"] == "exited with status 1"
    assert "not a regular file" in failures[0]["stderr_tail"]
    rc, _, err = ctl(alice, daemon.socket, "logs", sid, "0")
    assert rc != 0
    assert "not a regular file" in err
    assert ctl(alice, daemon.socket, "ping")[0] == 0
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
