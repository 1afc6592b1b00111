"""One daemon per state folder: an exclusive ``flock`` on ``state_dir/hpod.lock``, held for life.

Two daemons on one state dir each resumed the same interrupted trial, and two processes trained
in one trial folder. The socket probe does not stop that (a second daemon may listen elsewhere),
and the store does not either (SQLite lets two writers take turns), so the daemon takes this lock
before it opens the store and keeps it until it exits. The kernel drops it when the process dies,
however it dies: a lock file left behind by a killed daemon is no obstacle, only a live holder is.

The file holds the holder's pid, for the refusal's message. It is opened ``O_NOFOLLOW`` relative
to the state folder's descriptor and must be a regular file of the daemon's own (so a link or a
stranger's file put there is refused, never written), 0600, and ``O_CLOEXEC``: a trial or the fit
worker inheriting the descriptor would keep the lock past the daemon's end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from hpod.errors import BadState, HpodError

LOCK_NAME = "hpod.lock"
LOCK_MODE = 0o600

# The holder writes its pid right after it takes the lock: a second daemon that starts in that
# instant waits this long for the pid before saying it does not know it.
_PID_WAIT_S = 0.5


class StateDirLocked(BadState):
    """Another live daemon holds the state folder's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "its pid not written yet"
        super().__init__(
            f"another hpod ({who}) is serving state dir {state_dir}; stop it first, or give "
            "this one another --state-dir",
            data={"state_dir": str(state_dir), "pid": pid},
        )
        self.pid = pid


class StateLock:
    """The held lock on one state folder; :meth:`release` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock ``state_dir`` (which must exist) for this process, or raise StateDirLocked."""
        path = state_dir / LOCK_NAME
        fd = _open_lock_file(state_dir)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateDirLocked(state_dir, _holder_pid(fd)) from None
            # Ours now: the pid replaces whatever a daemon before us left.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (idempotent). The file stays: removing it would race a newcomer that
        has it open, and a stale one costs nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open_lock_file(state_dir: Path) -> int:
    top = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(
                LOCK_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                LOCK_MODE,
                dir_fd=top,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HpodError(
                    f"{state_dir / LOCK_NAME} is a symbolic link; the daemon does not follow "
                    "links in its state dir: remove it"
                ) from None
            raise HpodError(f"cannot open the lock file {state_dir / LOCK_NAME}: {exc}") from None
    finally:
        os.close(top)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise HpodError(
                f"{state_dir / LOCK_NAME} is not a regular file of uid {os.geteuid()}'s; "
                "remove it (the daemon makes its own)"
            )
        if stat.S_IMODE(st.st_mode) != LOCK_MODE:
            os.fchmod(fd, LOCK_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder_pid(fd: int) -> int | None:
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if text.isascii() and text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
