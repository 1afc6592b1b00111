"""One trial subprocess: its command line, its environment, its logs, and how it is stopped.

A trial runs in its own session (so its process group is its own), with stdout and stderr
appended to files in its trial directory, never to pipes: a trial that prints a lot can never
block on a full pipe, and a grandchild that keeps the log open can never make `wait()` hang.
Stopping is SIGTERM to the whole group, a grace period, then SIGKILL to the group; whatever is
left of the group after the leader exits is killed too, so no orphan keeps holding a GPU.

The trial folder is the trial's owner's (it runs as them and writes there), so the daemon, root,
reaches it and its logs only through ``hpod.daemon.statetree``: no link is followed, nothing
that is not the owner's regular file is opened, and only what the daemon made is chowned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import Process

# The placeholder rules are the core's, so the spec check at submit and the launch here agree.
from hpod.core.command import ConfigValue, format_value, render_command
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
    devices: tuple[str, ...] = ()  # GPU UUIDs; empty = a CPU slot
    extra_env: Mapping[str, str] = field(default_factory=dict)
    user: int | None = None  # uid to run as when the daemon is root
    # The daemon's own folder the trial folder lies below (state_dir/studies): the walk from
    # it follows no link. None: the trial folder's parent.
    within: Path | None = None

    @property
    def top(self) -> Path:
        return self.within if self.within is not None else self.trial_dir.parent


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
            log: IO[bytes] = os.fdopen(fd, "ab")
            files.append(log)
            log.write(header)
            log.flush()
    except BaseException:
        for opened in files:
            opened.close()
        raise
    return files[0], files[1]


def _prepare_folders(launch: TrialLaunch, ids: Ids | None) -> tuple[IO[bytes], IO[bytes]]:
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
    """A running (or finished) trial subprocess and its process group."""

    def __init__(self, launch: TrialLaunch, process: Process, argv: list[str]) -> None:
        self.launch = launch
        self.argv = argv
        self.pid: int = process.pid
        self.started_at: float = time.monotonic()
        self.stop_requested = False
        self._process = process

    @classmethod
    async def start(
        cls, launch: TrialLaunch, *, base_env: Mapping[str, str] | None = None
    ) -> TrialProcess:
        """Start one run of the trial; raise TrialStartError when it cannot start at all."""
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

        user_kwargs: dict[str, Any] = {}
        switch_user = launch.user is not None and launch.user != os.geteuid()
        if switch_user and os.geteuid() != 0:
            raise TrialStartError(
                f"the daemon runs as uid {os.geteuid()} and cannot start a trial as uid "
                f"{launch.user}; only a daemon running as root runs trials as their owners"
            )
        if switch_user and launch.user is not None:
            pw = pwd.getpwuid(launch.user)  # trial_environment already checked it exists
            user_kwargs = {
                "user": launch.user,
                "group": pw.pw_gid,
                "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid),
            }

        # The trial writes its checkpoints as its owner, who also reads its logs.
        ids = Ids(user_kwargs["user"], user_kwargs["group"]) if user_kwargs else None
        stdout, stderr = _prepare_folders(launch, ids)
        try:
            if not launch.workdir.is_dir():
                message = _missing_workdir(launch)
                stderr.write(f"=== could not start: {message} ===\n".encode())
                raise TrialStartError(message)
            try:
                process = await anyio.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=launch.workdir,
                    env=env,
                    start_new_session=True,
                    **user_kwargs,
                )
            except OSError as exc:
                message = _start_problem(exc, argv, launch)
                stderr.write(f"=== could not start: {message} ===\n".encode())
                raise TrialStartError(message, data={"argv": argv}) from exc
        finally:
            # The child holds its own copies of the descriptors.
            stdout.close()
            stderr.close()
        return cls(launch, process, argv)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped (negative: killed by that signal)."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the trial's main process to exit, then clear out the rest of its group."""
        returncode = await self._process.wait()
        self._kill_leftovers()
        return returncode

    def send(self, sig: int) -> None:
        """Send a signal to the trial's whole process group (quietly, if it is gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM to the group, up to `grace` seconds to exit, then SIGKILL; the exit status."""
        self.stop_requested = True
        try:
            if self._process.returncode is None:
                self.send(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self._process.wait()
        finally:
            # Shielded: a cancelled stop must still never leave the trial running.
            with anyio.CancelScope(shield=True):
                if self._process.returncode is None:
                    self.send(signal.SIGKILL)
                returncode = await self._process.wait()
                self._kill_leftovers()
        return returncode

    def _kill_leftovers(self) -> None:
        # The group outlives its leader while any member lives (a data-loader worker, a
        # backgrounded helper); its id cannot be reused meanwhile, so this cannot hit a stranger.
        self.send(signal.SIGKILL)

    def __repr__(self) -> str:
        return (
            f"<TrialProcess study={self.launch.study_id} trial={self.launch.trial_id} "
            f"pid={self.pid} returncode={self.returncode}>"
        )


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
