"""One trial subprocess: its command line, its environment, its logs, and how it is stopped.

Each run is a shim (``hpod.daemon.shim``, a stdlib-only script run with ``python -I -S``) in its
own session, and the trial its child, leading its own process group. The shim is what the daemon
watches and signals: it forwards SIGTERM to the trial's group, kills everything on SIGUSR1, is a
child subreaper (what the trial orphans, a ``setsid()`` daemon too, comes back to it and is killed
when the trial ends), and writes the trial's exit status to a file, so a daemon that restarts can
adopt a live run (:meth:`TrialProcess.adopt`) and still learn how it ended. Each run's process is
named by a :class:`~hpod.daemon.procid.ProcessIdentity` (pid + start time + boot id) that can be
stored and proven later; nothing not proven is signalled, and signals go through a pidfd.

stdout and stderr are appended to files in its trial directory, never to pipes: a trial that
prints a lot can never block on a full pipe, and a grandchild that keeps the log open can never
make `wait()` hang. Stopping is SIGTERM (forwarded to the trial's group), a grace period, then
SIGUSR1 (the shim kills the group and every descendant), then, if the shim is still there 2 s
later, SIGKILL to the shim and to the trial's group while its leader is proven alive.

The trial folder is the trial's owner's (it runs as them and writes there), so the daemon, root,
reaches it and its logs only through ``hpod.daemon.statetree``: no link is followed, nothing
that is not the owner's regular file is opened, and only what the daemon made is chowned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import marshal
import math
import os
import pwd
import re
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

# The placeholder rules are the core's, so the spec check at submit and the launch here agree.
from hpod.core.command import ConfigValue, format_value, render_command
from hpod.core.spec import DEFAULT_RECONNECT_TIMEOUT
from hpod.daemon.procid import ProcessIdentity, boot_id, parent_pid, start_ticks
from hpod.daemon.statetree import Ids, UnsafePath, open_append, open_dir, read_tail, walk_dir
from hpod.errors import HpodError, InvalidParams

# Variables meant for the daemon itself (systemd's notify/socket-activation/watchdog protocol):
# a trial that inherited them could tell systemd the daemon is ready, or claim its sockets.
_DAEMON_ONLY_ENV = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)

LOG_STREAMS = ("stdout", "stderr")


class TrialStartError(HpodError):
    """The trial's command could not be started at all (as opposed to starting and failing)."""


class WarmForkFailed(TrialStartError):
    """The study's fork server could not fork the run's shim: nothing of the run started, and
    it can be started cold instead."""


@dataclass(frozen=True)
class TrialLaunch:
    """Everything needed to start one run of one trial."""

    study_id: str
    trial_id: int
    command: tuple[str, ...]  # `{key}` placeholders not yet rendered
    config: dict[str, ConfigValue]
    workdir: Path
    trial_dir: Path
    checkpoint_dir: Path
    socket_path: str
    token: str
    resume_from: float
    max_resource: float
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT  # the spec's: HPOD_RECONNECT_TIMEOUT
    devices: tuple[str, ...] = ()  # GPU UUIDs; empty = a CPU slot
    extra_env: Mapping[str, str] = field(default_factory=dict)
    user: int | None = None  # uid to run as when the daemon is root
    # The daemon's own folder the trial folder lies below (state_dir/studies): the walk from
    # it follows no link. None: the trial folder's parent.
    within: Path | None = None
    run: int = 0  # which run of the trial this is: names its status file and cgroup
    # The daemon's own 0700 folder where the shim writes the trial's exit status. None: a
    # temporary folder of this process's own (tests that build a launch by hand).
    status_dir: Path | None = None
    # The run's cgroup (made by hpod.daemon.containment), which the shim enters before it starts
    # the trial. None: no cgroup, the shim's subreaper clean-up only.
    cgroup: Path | None = None

    @property
    def top(self) -> Path:
        return self.within if self.within is not None else self.trial_dir.parent

    @property
    def status_path(self) -> Path:
        folder = self.status_dir if self.status_dir is not None else _own_status_dir()
        return folder / f"{self.study_id}.{self.trial_id}.{self.run}.json"


SHIM = Path(__file__).resolve().with_name("shim.py")
# After SIGUSR1 (kill it all), how long the shim gets to kill, reap and write the status before
# it is SIGKILLed itself.
SHIM_KILL_SECONDS = 2.0

_status_dir: Path | None = None


def _own_status_dir() -> Path:
    """A status folder of this process's own, for launches that name none."""
    global _status_dir
    if _status_dir is None:
        _status_dir = Path(tempfile.mkdtemp(prefix="hpod-status-"))
    return _status_dir


def shim_command(run: str, args_fd: int, report_fd: int) -> list[str]:
    """The shim's command line: isolated (-I: no PYTHON* variables, no user site, no script
    folder on sys.path) and without site (-S: no .pth file runs). It names the run and the two
    pipes only: anyone may read it, and its arguments (the trial's environment, with its token)
    come through ``args_fd``."""
    fds = {"run": run, "args_fd": args_fd, "report_fd": report_fd}
    return [sys.executable, "-I", "-S", str(SHIM), json.dumps(fds)]


def _format_number(value: float) -> str:
    # Resource levels are usually whole epochs: "3" is what a shell script wants, not "3.0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return format_value(value)


def trial_environment(launch: TrialLaunch, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a trial: ``base`` (the submitter's, as the submit carried it, or the
    daemon's own for an old client's study), the study's `env`, then the trial contract."""
    env = {k: v for k, v in base.items() if k not in _DAEMON_ONLY_ENV}
    # Before extra_env, so a study that really wants buffered output can say so.
    env["PYTHONUNBUFFERED"] = "1"
    if launch.user is not None:
        try:
            pw = pwd.getpwuid(launch.user)
        except KeyError as exc:
            raise TrialStartError(
                f"uid {launch.user} has no passwd entry; cannot run the trial as that user"
            ) from exc
        env["HOME"] = pw.pw_dir
        env["USER"] = pw.pw_name
        env["LOGNAME"] = pw.pw_name
    env.update(launch.extra_env)
    # The contract comes last: a study's `env` cannot break the daemon's bookkeeping.
    env.update(
        HPOD_SOCKET=launch.socket_path,
        HPOD_STUDY=launch.study_id,
        HPOD_TRIAL=str(launch.trial_id),
        HPOD_TOKEN=launch.token,
        HPOD_CONFIG=json.dumps(launch.config),
        HPOD_CHECKPOINT_DIR=str(launch.checkpoint_dir),
        HPOD_TRIAL_DIR=str(launch.trial_dir),
        HPOD_RESUME_FROM=_format_number(launch.resume_from),
        HPOD_MAX_RESOURCE=_format_number(launch.max_resource),
        HPOD_RECONNECT_TIMEOUT=_format_number(launch.reconnect_timeout),
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        # Empty for a CPU slot: unset would let a CPU trial grab every GPU on the machine.
        CUDA_VISIBLE_DEVICES=",".join(launch.devices),
    )
    return env


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")


def _open_logs(launch: TrialLaunch, trial_fd: int, ids: Ids | None) -> tuple[IO[bytes], IO[bytes]]:
    header = (
        f"=== run started {_now_iso()} resume_from={_format_number(launch.resume_from)} "
        f"max_resource={_format_number(launch.max_resource)} ===\n"
    ).encode()
    files: list[IO[bytes]] = []
    try:
        for stream in LOG_STREAMS:
            # Append: a resumed trial's output continues the same file, run after run.
            fd = open_append(trial_fd, f"{stream}.log", ids, launch.trial_dir)
            # Unbuffered: the header and an error line are single writes (no isatty, no buffer).
            log: IO[bytes] = os.fdopen(fd, "ab", buffering=0)
            files.append(log)
            log.write(header)
            log.flush()
    except BaseException:
        for opened in files:
            opened.close()
        raise
    return files[0], files[1]


def prepare_folders(launch: TrialLaunch, ids: Ids | None) -> tuple[IO[bytes], IO[bytes]]:
    """The trial folder and its checkpoint folder (kept across runs), made the owner's, and
    its logs opened for appending; TrialStartError for a path the daemon will not use."""
    try:
        # exist_ok: the checkpoint directory is kept across pause and resume.
        os.close(open_dir(launch.top, launch.checkpoint_dir, ids, create=True))
        trial_fd = open_dir(launch.top, launch.trial_dir, ids, create=True)
        try:
            return _open_logs(launch, trial_fd, ids)
        finally:
            os.close(trial_fd)
    except UnsafePath as exc:
        raise TrialStartError(f"could not start: {exc.message}") from None


def _missing_workdir(launch: TrialLaunch) -> str:
    return f"workdir {str(launch.workdir)!r} does not exist; check `workdir` in the study spec"


def _start_problem(exc: OSError, argv: list[str], launch: TrialLaunch) -> str:
    program = argv[0] if argv else ""
    if isinstance(exc, FileNotFoundError):
        if not launch.workdir.is_dir():
            return _missing_workdir(launch)
        if os.sep in program:
            return (
                f"command {program!r} does not exist (relative to workdir "
                f"{str(launch.workdir)!r}); check `command` in the study spec"
            )
        return f"command {program!r} not found on PATH; check `command` in the study spec"
    if isinstance(exc, PermissionError):
        who = "" if launch.user is None else f" by uid {launch.user}"
        return (
            f"command {program!r} is not executable{who} ({exc.strerror}); check `command` in "
            "the study spec, make the file executable (chmod +x), and make sure its folders "
            "can be entered"
        )
    return f"command {program!r} could not be started: {exc}; check `command` in the study spec"


class TrialProcess:
    """One run: its shim (``pid``, the process watched and signalled) and the trial under it.

    Started here (:meth:`start`, the shim our child) or adopted from an earlier daemon
    (:meth:`adopt`, watched through a pidfd). Either way ``returncode`` is the trial's own exit
    status as the shim recorded it (negative: killed by that signal)."""

    def __init__(
        self,
        launch: TrialLaunch,
        argv: list[str],
        identity: ProcessIdentity,
        *,
        child: bool,
        pidfd: int,
        started_at: float | None = None,
    ) -> None:
        self.launch = launch
        self.argv = argv
        self.identity = identity
        self.pid: int = identity.pid
        self.trial_pid: int = identity.trial_pid
        self.started_at: float = time.monotonic() if started_at is None else started_at
        self.stop_requested = False
        self._child = child  # False: adopted, maybe not our child
        # Every signal to the shim goes through this: a pidfd never names a reused pid.
        self._pidfd: int | None = pidfd
        self._lock = anyio.Lock()
        self._returncode: int | None = None
        self.shim_returncode: int | None = None
        self.status_missing = False  # the shim ended without writing the trial's status

    @classmethod
    async def start(
        cls,
        launch: TrialLaunch,
        *,
        base_env: Mapping[str, str] | None = None,
        on_shim: Callable[[ProcessIdentity], Awaitable[None]] | None = None,
        warm: WarmFork | None = None,
    ) -> TrialProcess:
        """Start one run of the trial; raise TrialStartError when it cannot start at all.

        ``on_shim``: awaited with the shim's identity (no trial pid yet) before the shim is
        told what to start: the daemon stores it there. ``warm``: the study's fork server
        (hpod.daemon.warm), which forks the shim instead of the daemon starting one; the
        shim is then not this process's child, and is watched through its pidfd."""
        argv = render_command(
            launch.command,
            launch.config,
            trial_id=launch.trial_id,
            trial_dir=launch.trial_dir,
            checkpoint_dir=launch.checkpoint_dir,
        )
        if not argv or not argv[0]:
            raise TrialStartError("the command is empty; check `command` in the study spec")
        env = trial_environment(launch, os.environ if base_env is None else base_env)

        user_args: dict[str, Any] = {}
        switch_user = launch.user is not None and launch.user != os.geteuid()
        if switch_user and os.geteuid() != 0:
            raise TrialStartError(
                f"the daemon runs as uid {os.geteuid()} and cannot start a trial as uid "
                f"{launch.user}; only a daemon running as root runs trials as their owners"
            )
        if switch_user and launch.user is not None:
            pw = pwd.getpwuid(launch.user)  # trial_environment already checked it exists
            user_args = {
                "user": launch.user,
                "group": pw.pw_gid,
                "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid),
            }

        # The trial writes its checkpoints as its owner, who also reads its logs.
        ids = Ids(user_args["user"], user_args["group"]) if user_args else None
        # In a thread: a folder walked without following links and two logs opened are a dozen
        # syscalls, 1.5 ms of the loop a launch when 1,000 start at once (py-spy,
        # bench/scale_concurrent.py --warm). Not abandoned if cancelled: the logs are closed.
        stdout, stderr = await anyio.to_thread.run_sync(prepare_folders, launch, ids)
        try:
            if not launch.workdir.is_dir():
                message = _missing_workdir(launch)
                stderr.write(f"=== could not start: {message} ===\n".encode())
                raise TrialStartError(message)
            status_path = launch.status_path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(status_path)  # an earlier attempt's, under the same run number
            shim, pidfd, ticks, line = await _start_shim(
                launch, argv, env, user_args, stdout, stderr, on_shim, warm
            )
            if "trial_pid" not in line:
                if warm is None:
                    returncode = await reap(shim, pidfd)
                else:
                    await anyio.wait_readable(pidfd)  # its server reaps it
                    returncode = 1
                os.close(pidfd)
                message = _shim_problem(line, returncode, argv, launch)
                stderr.write(f"=== could not start: {message} ===\n".encode())
                raise TrialStartError(message, data={"argv": argv})
        finally:
            # The shim holds its own copies of the descriptors.
            stdout.close()
            stderr.close()
        trial_ticks = line.get("trial_start_ticks")
        identity = ProcessIdentity.of_shim(
            shim,
            trial_pid=int(line["trial_pid"]),
            trial_start_ticks=None if trial_ticks is None else int(trial_ticks),
            cgroup=None if launch.cgroup is None else str(launch.cgroup),
            status_path=str(status_path),
            ticks=ticks,
        )
        return cls(launch, argv, identity, child=warm is None, pidfd=pidfd)

    @classmethod
    async def adopt(cls, launch: TrialLaunch, identity: ProcessIdentity) -> TrialProcess | None:
        """The run an earlier daemon (or this process, before it re-executed itself) started,
        if its shim is provably still that process; None (and nothing signalled) if not."""
        await anyio.lowlevel.checkpoint()
        try:
            pidfd = os.pidfd_open(identity.pid)
        except ProcessLookupError:
            return None
        # Proven after the pidfd is open: the pidfd then names the process proven, even if it
        # exits and its pid is reused a moment later.
        if not identity.matches():
            os.close(pidfd)
            return None
        try:
            argv = render_command(
                launch.command,
                launch.config,
                trial_id=launch.trial_id,
                trial_dir=launch.trial_dir,
                checkpoint_dir=launch.checkpoint_dir,
            )
        except HpodError:
            argv = []
        return cls(
            launch,
            argv,
            identity,
            child=False,
            pidfd=pidfd,
            started_at=_started_monotonic(identity.start_ticks),
        )

    @property
    def returncode(self) -> int | None:
        """The trial's exit status once its shim has exited (negative: killed by that signal)."""
        return self._returncode

    async def wait(self) -> int:
        """Wait for the run to end (the shim has killed and reaped what the trial left), then
        clear out whatever the shim could not; the trial's exit status."""
        await self._wait_shim()
        self._kill_leftovers()
        assert self._returncode is not None
        return self._returncode

    def send(self, sig: int) -> None:
        """Signal the run through its shim (quietly, if it is gone): SIGTERM, SIGINT and SIGHUP
        reach the trial's whole group; SIGKILL (or SIGUSR1) kills the group and every
        descendant; the shim itself is only SIGKILLed by :meth:`stop`."""
        self._signal_shim(signal.SIGUSR1 if sig == signal.SIGKILL else sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM to the group, up to `grace` seconds to exit, then kill it all; the exit
        status."""
        self.stop_requested = True
        try:
            if self._returncode is None:
                self.send(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self._wait_shim()
        finally:
            # Shielded: a cancelled stop must still never leave the trial running.
            with anyio.CancelScope(shield=True):
                if self._returncode is None:
                    self._signal_shim(signal.SIGUSR1)
                    with anyio.move_on_after(SHIM_KILL_SECONDS):
                        await self._wait_shim()
                if self._returncode is None:
                    # The shim is stuck (or was stopped): kill it, and the group by hand.
                    self._signal_shim(signal.SIGKILL)
                    self._kill_leftovers()
                returncode = await self.wait()
        return returncode

    def _signal_shim(self, sig: int) -> None:
        if self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, sig)

    async def _wait_shim(self) -> None:
        async with self._lock:
            if self._returncode is not None:
                return
            assert self._pidfd is not None
            if self._child:
                shim_rc: int | None = await reap(self.pid, self._pidfd)
            else:
                # Readable once the process has exited, whoever its parent is.
                await anyio.wait_readable(self._pidfd)
                shim_rc = None
                try:
                    # Our own child after a re-exec: reap it, and it tells its status.
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        shim_rc = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    pass
            self.shim_returncode = shim_rc
            written = TrialExit.read(Path(self.identity.status_path))
            trial_rc = None if written is None else written.returncode
            # An adopted shim that left no status was killed, or never had a trial to start
            # (its daemon died before it sent the arguments): the trial did nothing wrong.
            self.status_missing = trial_rc is None
            if trial_rc is None:
                # No status: the shim was killed before it could write one.
                trial_rc = shim_rc if shim_rc is not None else -signal.SIGKILL
            os.close(self._pidfd)
            self._pidfd = None
            if self.launch.status_dir is None:
                # Our own temporary folder: nobody else reads it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.identity.status_path)
            self._returncode = trial_rc

    def forget_status(self) -> None:
        """Remove the run's status file, once the daemon has recorded how it ended."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.identity.status_path)

    def _kill_leftovers(self) -> None:
        # The shim kills and reaps the whole tree itself. Only a shim killed before it could
        # leaves the trial's group behind, and the group is signalled by id only while its
        # leader is provably the trial's (alive, or a zombie not yet reaped): once the leader
        # is reaped and gone, its id may be a stranger's group. What escaped the group is the
        # cgroup's to kill (hpod.daemon.containment).
        if self.identity.trial_matches():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.identity.pgid, signal.SIGKILL)

    def __repr__(self) -> str:
        return (
            f"<TrialProcess study={self.launch.study_id} trial={self.launch.trial_id} "
            f"pid={self.pid} trial_pid={self.trial_pid} returncode={self.returncode}>"
        )


async def _start_shim(
    launch: TrialLaunch,
    argv: list[str],
    env: Mapping[str, str],
    user_args: Mapping[str, Any],
    stdout: IO[bytes],
    stderr: IO[bytes],
    on_shim: Callable[[ProcessIdentity], Awaitable[None]] | None = None,
    warm: WarmFork | None = None,
) -> tuple[int, int, int, dict[str, Any]]:
    """Start the shim and read its one line: the trial's pid, or why it could not start. With
    the shim's pid, its pidfd and start time, taken before it can have been reaped (only this
    process reaps it, once its pidfd says it has exited)."""
    args = {
        "argv": argv,
        "cwd": str(launch.workdir),
        "env": dict(env),
        "status_path": str(launch.status_path),
        "cgroup": None if launch.cgroup is None else str(launch.cgroup),
        **user_args,
    }
    run = f"{launch.study_id}.{launch.trial_id}.{launch.run}"
    if warm is not None:
        # The warm shim is the owner's: it enters no cgroup and switches no user itself.
        args.update(cgroup=None, warm=True)
        for key in user_args:
            args.pop(key, None)
    read_fd, write_fd = os.pipe()
    args_read, args_write = os.pipe()
    try:
        try:
            if warm is None:
                # On a worker thread: posix_spawn returns once the shim has exec'd, which on a
                # busy machine is milliseconds the loop would not answer a report.
                pid = await anyio.to_thread.run_sync(
                    spawn_shim, run, args_read, write_fd, stdout.fileno(), stderr.fileno()
                )
            else:
                pid = await _fork_warm(warm, launch, args_read, write_fd, stdout, stderr)
        except OSError as exc:
            os.close(args_write)
            raise TrialStartError(
                f"could not start the trial's shim ({sys.executable}): {exc}"
            ) from exc
        except BaseException:
            os.close(args_write)
            raise
        finally:
            os.close(write_fd)
            os.close(args_read)
        pidfd: int | None = None
        args_open = True
        try:
            # Not reaped before this process reaps it: a pidfd names it from now on, whatever
            # comes, and its start time is read while it is at worst a zombie. (A warm shim is
            # its server's child, and waits for its arguments: it is proven by its parent.)
            pidfd = os.pidfd_open(pid)
            ticks = start_ticks(pid)
            if ticks is None:  # pragma: no cover - /proc unreadable
                raise ProcessLookupError(pid)
            if warm is not None:
                if parent_pid(pid) != warm.pid:
                    raise TrialStartError(f"the fork server's shim {pid} is gone")
                if launch.cgroup is not None:
                    # Into the run's cgroup before it has its arguments, so before the trial
                    # exists: the daemon moves it (the shim is not root).
                    # A thread's: a move into a cgroup is milliseconds in the kernel.
                    procs = launch.cgroup / "cgroup.procs"
                    try:
                        await anyio.to_thread.run_sync(procs.write_text, str(pid))
                    except OSError as exc:
                        raise TrialStartError(
                            f"could not put the trial in its cgroup {str(launch.cgroup)!r}: "
                            f"{exc.strerror}"
                        ) from None
            if on_shim is not None:
                # Stored before the shim has its arguments, so before any trial exists: a
                # daemon killed from here on leaves a run whose shim it can prove, and one
                # killed before has left a shim that reads the end of its pipe and starts
                # nothing (docs/live-restore.md).
                await on_shim(
                    ProcessIdentity(
                        pid=pid,
                        start_ticks=ticks,
                        boot_id=boot_id(),
                        trial_pid=0,
                        pgid=0,
                        cgroup=None if launch.cgroup is None else str(launch.cgroup),
                        status_path=str(launch.status_path),
                    )
                )
            try:
                # marshal: the shim reads it with a module built into the interpreter (json
                # was a fifth of the shim's start).
                await _write_all(args_write, marshal.dumps(args))
            finally:
                args_open = False
                os.close(args_write)  # its end of file: the shim reads to it
            line = await _read_line(read_fd)
        except BaseException:
            if args_open:
                os.close(args_write)
            # Cancelled while it starts: it must not run on unwatched.
            with anyio.CancelScope(shield=True):
                if pidfd is None:  # pragma: no cover - pidfd_open failed: it is our child
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
                    with anyio.move_on_after(SHIM_KILL_SECONDS):
                        await anyio.wait_readable(pidfd)
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    if warm is None:
                        await reap(pid, pidfd)
                    else:
                        await anyio.wait_readable(pidfd)  # its server reaps it
                    os.close(pidfd)
            raise
    finally:
        os.close(read_fd)
    assert pidfd is not None
    return pid, pidfd, ticks, line


# Where the shim finds its two pipes: posix_spawn's dup2 puts them there (and clears their
# close-on-exec there only), so two spawns at once on two threads never pass each other's.
SHIM_ARGS_FD, SHIM_REPORT_FD = 3, 4


def spawn_shim(run: str, args_read: int, report_write: int, stdout: int, stderr: int) -> int:
    """posix_spawn the shim (a vfork and an exec: no fork of the daemon's memory, no child
    watcher): in a session of its own, stdin from /dev/null, stdout and stderr the trial's logs,
    its pipes on fds 3 and 4, and no environment (see :func:`shim_command`)."""
    moved: list[int] = []

    def high(fd: int) -> int:
        # A source below 5 could be overwritten by an earlier dup2 of the list (or be its own
        # target, which keeps close-on-exec): copied above first.
        if fd >= 5:
            return fd
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
        moved.append(copy)
        return copy

    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, high(stdout), 1),
            (os.POSIX_SPAWN_DUP2, high(stderr), 2),
            (os.POSIX_SPAWN_DUP2, high(args_read), SHIM_ARGS_FD),
            (os.POSIX_SPAWN_DUP2, high(report_write), SHIM_REPORT_FD),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        ]
        command = shim_command(run, SHIM_ARGS_FD, SHIM_REPORT_FD)
        return os.posix_spawn(
            command[0],
            command,
            {},
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            # Python ignores these; an ignored signal stays ignored across exec.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    finally:
        for fd in moved:
            os.close(fd)


class WarmFork(Protocol):
    """A study's fork server, as :meth:`TrialProcess.start` uses it (hpod.daemon.warm)."""

    pid: int

    async def fork(self, fds: list[int]) -> int: ...


async def _fork_warm(
    warm: WarmFork,
    launch: TrialLaunch,
    args_read: int,
    report_write: int,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> int:
    """A shim forked by the study's fork server: it gets the run's logs, its two pipes and
    its status file, made empty here (the shim, the owner's, cannot make one in the daemon's
    folder; it writes the status into it in one write)."""
    status = os.open(
        launch.status_path,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        return await warm.fork([stdout.fileno(), stderr.fileno(), args_read, report_write, status])
    except HpodError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(launch.status_path)
        raise WarmForkFailed(exc.message) from None
    finally:
        os.close(status)


async def reap(pid: int, pidfd: int) -> int:
    """Wait (on its pidfd) for our child ``pid`` to exit and reap it: its exit status."""
    await anyio.wait_readable(pidfd)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere
            return -signal.SIGKILL
        if done:
            return os.waitstatus_to_exitcode(status)
        await anyio.sleep(0.001)  # pragma: no cover - readable a moment before reapable


async def _write_all(fd: int, data: bytes) -> None:
    """Write the shim's arguments (quietly, if the shim is already gone: its silence then says
    it could not start)."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    with contextlib.suppress(BrokenPipeError):
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(fd)


async def _read_line(fd: int) -> dict[str, Any]:
    """The shim's one JSON line, read to the end of the pipe ({} if it closed without one)."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    try:
        line = json.loads(data.split(b"\n", 1)[0] or b"{}")
    except ValueError:
        return {}
    return line if isinstance(line, dict) else {}


def _shim_problem(
    line: Mapping[str, Any], returncode: int, argv: list[str], launch: TrialLaunch
) -> str:
    """Today's start-error messages, from what the shim said (or did not say)."""
    if not line:
        return (
            f"the trial's shim exited with status {returncode} before it started the trial; "
            "see the trial's stderr.log"
        )
    errno = line.get("errno")
    strerror = str(line.get("strerror", ""))
    if line.get("stage") == "cgroup":
        return f"could not put the trial in its cgroup {str(launch.cgroup)!r}: {strerror}"
    if isinstance(errno, int):
        # OSError(errno, text) is the errno's own class (FileNotFoundError for ENOENT, ...).
        return _start_problem(OSError(errno, strerror), argv, launch)
    program = argv[0] if argv else ""
    return (
        f"command {program!r} could not be started: {strerror}; check `command` in the study spec"
    )


@dataclass(frozen=True)
class TrialExit:
    """The trial's exit as its shim wrote it: Popen's returncode (negative: that signal), and
    when. The one reader of the status file, for the run's own daemon and for the next one."""

    returncode: int
    ended_at: float

    @classmethod
    def read(cls, path: Path) -> TrialExit | None:
        """The status file at ``path`` (the daemon's own 0700 folder; a link is not followed),
        or None when there is none yet or it cannot be read as one (a shim killed while writing
        leaves only its temporary file, never a partial one: it renames into place)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                raw = json.loads(f.read(4096))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        rc, at = raw.get("returncode"), raw.get("ended_at")
        if isinstance(rc, bool) or not isinstance(rc, int):
            return None
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            return None
        return cls(rc, float(at))


def _started_monotonic(ticks: int) -> float:
    """A process's start, on this process's monotonic clock (roughly: boot time, not suspend)."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError):
        return time.monotonic()
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - max(0.0, age)


def log_tail(
    trial_dir: Path,
    stream: str = "stderr",
    lines: int = 20,
    max_bytes: int = 64 * 1024,
    *,
    within: Path | None = None,
    ids: Ids | None = None,
) -> str:
    """The last `lines` lines of a trial's log, reading at most `max_bytes` from its end.

    The folder is walked from ``within`` (default: its parent) and the log opened as
    :mod:`hpod.daemon.statetree` says: a link, a FIFO or a file not of the owner ``ids`` is
    refused with :class:`UnsafePath`, never read."""
    if stream not in LOG_STREAMS:
        raise InvalidParams(f"unknown log stream {stream!r}; use 'stdout' or 'stderr'")
    if lines <= 0:
        return ""
    top = within if within is not None else trial_dir.parent
    try:
        fd, trusted = walk_dir(top, trial_dir, ids, create=False)
    except FileNotFoundError:
        return ""
    try:
        data, cut = read_tail(fd, f"{stream}.log", ids, trial_dir, max_bytes, trusted=trusted)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    parts = text.splitlines()
    if cut and parts and not data.startswith(b"\n"):
        parts = parts[1:]  # cut in the middle of a line: drop the fragment
    return "\n".join(parts[-lines:])


_OOM_PATTERNS = re.compile(
    "|".join(
        (
            r"CUDA out of memory",
            r"CUDA error: out of memory",
            r"OutOfMemoryError",  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
            r"CUBLAS_STATUS_ALLOC_FAILED",
            r"CUDNN_STATUS_ALLOC_FAILED",
            r"std::bad_alloc",
            r"\bMemoryError\b",
            r"ResourceExhaustedError",  # TensorFlow
            r"RESOURCE_EXHAUSTED: Out of memory",  # JAX / XLA
        )
    )
)


def looks_like_oom(text: str) -> bool:
    """Whether a stderr tail shows the trial ran out of (GPU or host) memory."""
    return _OOM_PATTERNS.search(text) is not None
