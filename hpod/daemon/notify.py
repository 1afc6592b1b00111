"""sd_notify with the stdlib: tell systemd (`Type=notify`) that the daemon is ready or stopping.

Notification is best effort by design: outside systemd, or with a socket that went away, the
daemon carries on exactly as before, so nothing here raises and nothing is logged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, *, env: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify datagram to $NOTIFY_SOCKET; True if it was sent."""
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        # systemd's spelling of a Linux abstract-namespace socket.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # Unset, or a transport we do not speak (vsock:): behave as outside systemd.
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except (OSError, UnicodeError):
        return False
    return True


def ready(*, env: Mapping[str, str] = os.environ) -> bool:
    return notify("READY=1", env=env)


def stopping(*, env: Mapping[str, str] = os.environ) -> bool:
    return notify("STOPPING=1", env=env)


def watchdog(*, env: Mapping[str, str] = os.environ) -> bool:
    return notify("WATCHDOG=1", env=env)


def status(text: str, *, env: Mapping[str, str] = os.environ) -> bool:
    # One assignment per line in the protocol: a newline would start a bogus second one.
    return notify("STATUS=" + " ".join(text.splitlines()), env=env)
