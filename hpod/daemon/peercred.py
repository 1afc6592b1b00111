"""The SO_PEERCRED seam: who (pid, uid, gid) is on the other end of a Unix socket.

The daemon authorizes every control call by the peer's uid, and runs a root daemon's trials as
the submitting user; this is the one place that asks the kernel, so tests can swap it out here.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from hpod.errors import HpodError

# struct ucred: pid_t, uid_t, gid_t (all 32-bit on Linux).
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Credentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Credentials:
    """The credentials of the process that connected (or created, for socketpair) the peer."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        raise HpodError(
            "SO_PEERCRED is not available on this platform; hpod identifies its clients with it "
            "and needs Linux"
        )
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    except OSError as exc:
        raise HpodError(f"cannot read the peer's credentials: {exc}") from exc
    pid, uid, gid = _UCRED.unpack(raw)
    return Credentials(pid=pid, uid=uid, gid=gid)
