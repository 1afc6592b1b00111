"""Only a study's owner (or root, or a configured admin) may stop it.

The daemon runs in-process here with the SO_PEERCRED seam swapped for one that says which uid
each connection belongs to: this machine's tests run as root and cannot connect as someone else.
Everything else (the socket, the store, the wire, the handlers) is the real thing.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod import wire
from hpod.daemon import server
from hpod.daemon.app import Daemon
from hpod.daemon.config import DaemonConfig
from hpod.daemon.peercred import Credentials
from hpod.errors import PermissionDenied

SPEC = """
name = "owned"
# Run as the submitting uid (the daemon is root here): something that uid can run, from "/".
command = ["/bin/sleep", "60"]
workdir = "/"
[objective]
metric = "loss"
mode = "min"
[space]
x = { param_type = "uniform", range = [0, 1] }
[limits]
max_trials = 1
"""


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Uids:
    """Connections get uids in the order the test connects them."""

    def __init__(self) -> None:
        self.next: list[int] = []

    def creds(self, sock: socket.socket) -> Credentials:
        return Credentials(pid=0, uid=self.next.pop(0), gid=0)


@pytest.fixture
async def daemon(root: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Uids]]:
    uids = Uids()
    monkeypatch.setattr(server, "peer_credentials", uids.creds)
    config = DaemonConfig.defaults().with_overrides(cpu_slots=1, admins=[4242])
    d = Daemon(config, socket_path=str(root / "s"), state_dir=root / "state")
    async with anyio.create_task_group() as tg:
        await tg.start(d.serve)
        yield str(root / "s"), uids
        d.request_shutdown()


async def call_as(path: str, uids: Uids, uid: int, method: str, params: dict[str, Any]) -> Any:
    uids.next.append(uid)

    def go() -> Any:
        with wire.SyncConnection(path, client="test") as conn:
            return conn.call(method, params)

    return await anyio.to_thread.run_sync(go)


@pytest.mark.anyio
async def test_only_the_owner_root_or_an_admin_may_stop_a_study(
    daemon: tuple[str, Uids], root: Path
) -> None:
    path, uids = daemon
    sub = await call_as(path, uids, 1000, "submit", {"spec": SPEC, "base_dir": str(root)})
    sid = sub["study"]
    listed = await call_as(path, uids, 2000, "studies", {})
    assert listed[0]["owner"] == 1000  # anyone may read
    with pytest.raises(PermissionDenied, match="belongs to uid 1000"):
        await call_as(path, uids, 2000, "stop", {"study": sid})
    assert (await call_as(path, uids, 1000, "study", {"study": sid}))["state"] == "running"
    stopped = await call_as(path, uids, 4242, "stop", {"study": sid})  # an admin
    assert stopped["state"] == "stopped"


@pytest.mark.anyio
async def test_root_may_stop_anyones_study(daemon: tuple[str, Uids], root: Path) -> None:
    path, uids = daemon
    sid = (await call_as(path, uids, 1000, "submit", {"spec": SPEC, "base_dir": str(root)}))[
        "study"
    ]
    assert (await call_as(path, uids, 0, "stop", {"study": sid}))["state"] == "stopped"
