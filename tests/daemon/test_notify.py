from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpod.daemon import notify


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    # A short private dir: AF_UNIX paths are capped at 108 bytes, and pytest's tmp_path can
    # be longer than that.
    folder = tempfile.mkdtemp(prefix="hpod")
    path = os.path.join(folder, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder)


def test_ready_reaches_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert notify.ready(env=env) is True
    assert sock.recv(4096) == b"READY=1"
    assert notify.stopping(env=env) is True
    assert sock.recv(4096) == b"STOPPING=1"
    assert notify.status("3 studies\nrunning", env=env) is True
    assert sock.recv(4096) == b"STATUS=3 studies running"
    assert notify.notify("WATCHDOG=1", env=env) is True
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"hpod-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        assert notify.ready(env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


def test_unset_or_unusable_is_quietly_false(tmp_path: Path) -> None:
    assert notify.ready(env={}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": ""}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_default_env_is_the_process_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.ready() is True
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify.ready() is False
