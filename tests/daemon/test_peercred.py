from __future__ import annotations

import os
import socket

import pytest

from hpod.daemon.peercred import Credentials, peer_credentials
from hpod.errors import HpodError


def test_socketpair_reports_our_own_credentials() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        expected = Credentials(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
        assert peer_credentials(left) == expected
        assert peer_credentials(right) == expected


def test_a_closed_socket_is_an_hpod_error() -> None:
    left, right = socket.socketpair()
    right.close()
    left.close()
    with pytest.raises(HpodError, match="credentials"):
        peer_credentials(left)


def test_platform_without_so_peercred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "SO_PEERCRED", raising=False)
    left, right = socket.socketpair()
    with left, right, pytest.raises(HpodError, match="SO_PEERCRED is not available"):
        peer_credentials(left)
