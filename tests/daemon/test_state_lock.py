"""The state folder's lock (hpod.daemon.statelock), in one process: a flock is held per open
file, so a second acquire here meets the first exactly as a second daemon would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from hpod.daemon.app import Daemon
from hpod.daemon.config import DaemonConfig
from hpod.daemon.statelock import LOCK_NAME, StateDirLocked, StateLock
from hpod.errors import ErrorCode, HpodError


def test_the_lock_file_is_private_and_holds_the_holders_pid(tmp_path: Path) -> None:
    with StateLock.acquire(tmp_path) as lock:
        assert lock.held
        st = (tmp_path / LOCK_NAME).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not lock.held


def test_a_second_acquire_is_refused_naming_the_first_ones_pid(tmp_path: Path) -> None:
    with StateLock.acquire(tmp_path), pytest.raises(StateDirLocked) as refused:
        StateLock.acquire(tmp_path)
    assert refused.value.pid == os.getpid()
    assert refused.value.code is ErrorCode.BAD_STATE
    assert refused.value.message.startswith(
        f"another hpod (pid {os.getpid()}) is serving state dir {tmp_path}; stop it first"
    )


def test_a_released_lock_or_a_stale_file_is_taken_again(tmp_path: Path) -> None:
    StateLock.acquire(tmp_path).release()
    (tmp_path / LOCK_NAME).write_text("999999\n")  # a killed daemon's: no one holds it
    with StateLock.acquire(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_a_lock_file_made_too_open_is_made_private_again(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    path.write_text("")
    path.chmod(0o666)
    with StateLock.acquire(tmp_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlink_in_place_of_the_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    target.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir()
    (state / LOCK_NAME).symlink_to(target)
    with pytest.raises(HpodError, match="is a symbolic link"):
        StateLock.acquire(state)
    assert target.read_text() == "keep me\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_the_descriptor_is_not_inherited_by_what_the_daemon_starts(tmp_path: Path) -> None:
    with StateLock.acquire(tmp_path) as lock:
        assert lock._fd is not None
        assert not os.get_inheritable(lock._fd)


def test_a_daemon_refused_the_lock_leaves_the_first_ones_store_and_sockets_alone(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    socket_path = str(tmp_path / "s")
    open(socket_path, "w").close()  # where the first daemon's socket would be
    with StateLock.acquire(state):
        daemon = Daemon(DaemonConfig.defaults(), socket_path=socket_path, state_dir=state)
        with pytest.raises(StateDirLocked):
            anyio.run(daemon.serve)
    assert os.path.exists(socket_path)
    assert not (state / "hpod.sqlite3").exists()
