"""Where a daemon listens and keeps its state by default: shared by the daemon and its clients.

The client needs these defaults without importing the daemon's configuration, so they live here,
in a leaf that imports only the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MAX_SOCKET_PATH_BYTES", "default_socket_path", "default_state_dir"]

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


# -- machine-dependent defaults ------------------------------------------------------------------


def _is_root(uid: int | None) -> bool:
    return (os.geteuid() if uid is None else uid) == 0


def default_state_dir(*, uid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """/var/lib/hpod for root (systemd's StateDirectory); else the user's XDG state folder."""
    if _is_root(uid):
        return Path("/var/lib/hpod")
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "hpod"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "hpod"


def default_socket_path(*, uid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """/run/hpod/hpod.sock for root (systemd's RuntimeDirectory); else a per-user runtime path."""
    if _is_root(uid):
        return Path("/run/hpod/hpod.sock")
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "hpod" / "hpod.sock"
    real_uid = os.getuid() if uid is None else uid
    run_user = Path(f"/run/user/{real_uid}")
    if run_user.is_dir():
        return run_user / "hpod" / "hpod.sock"
    # /tmp is shared: the daemon must create this folder 0700 and check that it owns it.
    return Path(f"/tmp/hpod-{real_uid}") / "hpod.sock"
