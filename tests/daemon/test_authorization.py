"""Only a study's owner (or root, or a configured admin) may stop it; a submit's request id names
one study per owner.

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
from hpod.errors import InvalidParams, PermissionDenied

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


async def submit_as(
    path: str, uids: Uids, uid: int, root: Path, request_id: str, spec: str = SPEC
) -> dict[str, Any]:
    params = {"spec": spec, "base_dir": str(root), "request_id": request_id}
    result: dict[str, Any] = await call_as(path, uids, uid, "submit", params)
    return result


@pytest.mark.anyio
async def test_the_same_request_id_is_one_study_per_owner(
    daemon: tuple[str, Uids], root: Path
) -> None:
    path, uids = daemon
    mine = await submit_as(path, uids, 1000, root, "r-1")
    theirs = await submit_as(path, uids, 2000, root, "r-1")
    assert theirs["study"] != mine["study"]
    assert theirs["existing"] is False
    assert (await submit_as(path, uids, 2000, root, "r-1"))["study"] == theirs["study"]
    again = await submit_as(path, uids, 1000, root, "r-1")
    assert again == {"study": mine["study"], "name": "owned", "existing": True}
    listed = await call_as(path, uids, 1000, "studies", {})
    assert sorted((s["study"], s["owner"]) for s in listed) == sorted(
        [(mine["study"], 1000), (theirs["study"], 2000)]
    )


@pytest.mark.anyio
async def test_a_request_id_sent_again_with_another_spec_is_refused(
    daemon: tuple[str, Uids], root: Path
) -> None:
    path, uids = daemon
    first = await submit_as(path, uids, 1000, root, "r-1")
    changed = SPEC.replace('"owned"', '"changed"')
    with pytest.raises(InvalidParams, match=f"already made study {first['study']}"):
        await submit_as(path, uids, 1000, root, "r-1", changed)
    listed = await call_as(path, uids, 1000, "studies", {})
    assert [s["study"] for s in listed] == [first["study"]]


@pytest.mark.anyio
async def test_submits_racing_with_one_request_id_make_one_study(
    daemon: tuple[str, Uids], root: Path
) -> None:
    """A retry that overtakes its first try (a client that gave up waiting) finds the study the
    first one is committing, not a free request id."""
    path, uids = daemon
    results: list[dict[str, Any]] = []

    async def one() -> None:
        results.append(await submit_as(path, uids, 1000, root, "r-race"))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert len({r["study"] for r in results}) == 1
    assert sorted(r["existing"] for r in results) == [False, True, True, True]
