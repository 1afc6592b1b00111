"""The ``read_access`` setting against a real root daemon: with ``owner``, another uid on the
socket sees none of a study (not in ``studies``, not in the event stream, NOT_FOUND by name);
with ``anyone`` (the default) it reads it all.

Root only: the reader is a forked child that drops to an unused uid before it connects, so
SO_PEERCRED tells the daemon that uid (no user needs to exist for a socket)."""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

import pytest

from hpod.client import Client
from tests.e2e.specs import spec
from tests.e2e.test_settings import serve

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: reads as another uid"),
]

OTHER_UID = 54_321


def as_uid(uid: int, socket_path: str, sid: str) -> dict[str, Any]:
    """What ``uid`` gets from the daemon: its studies, the stream's studies, ``study`` by id."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, ask, write JSON, exit
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out: dict[str, Any] = {}
            with Client(socket_path) as c:
                out["studies"] = [s["study"] for s in c.studies()]
                page = c.call("events", {"after": 0})
                out["event_studies"] = sorted({e["study"] for e in page["events"] if e["study"]})
                out["cursor"] = page["cursor"]
                try:
                    out["show"] = c.study(sid)["study"]
                except Exception as exc:
                    out["show"] = type(exc).__name__ + ": " + str(exc)
            os.write(write, json.dumps(out).encode())
        except BaseException:
            os.write(write, json.dumps({"error": traceback.format_exc()}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    got: dict[str, Any] = json.loads(b"".join(chunks))
    assert "error" not in got, got.get("error")
    return got


@pytest.mark.parametrize("access", ["owner", "anyone"])
def test_setting_read_access(daemon_factory: Any, access: str) -> None:
    d = serve(daemon_factory, read_access=access, socket_mode="0666")
    os.chmod(d.root, 0o711)  # the other uid may pass through to the socket, not list the folder
    path = d.write_spec("mine", spec("mine", steps=2, limits="max_trials = 1",
                                     points="partial_grid = true"))  # fmt: skip
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        c.wait(sid, timeout=60)
        stream = c.call("events", {"after": 0})
    other = as_uid(OTHER_UID, d.socket, sid)
    # The other uid's cursor went past the same events, shown or not.
    assert other["cursor"] == stream["cursor"]
    if access == "owner":
        assert other["studies"] == []
        assert other["event_studies"] == []
        assert other["show"].startswith("NotFound: no study")
        assert "that you may read" in other["show"]
    else:
        assert other["studies"] == [sid]
        assert other["event_studies"] == [sid]
        assert other["show"] == sid
    # Its owner (root here) reads it either way.
    assert [s["study"] for s in d.ctl_json("ls")] == [sid]
