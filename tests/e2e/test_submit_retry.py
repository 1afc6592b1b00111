"""A submit sent again with its request id answers with the study the first one made.

A daemon killed between a submit's commit and its answer leaves the client with a lost
connection and a stored study; the retry must find that study, not make a second one.
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from hpod import Client
from hpod.errors import InvalidParams
from hpod.wire import MAX_LINE, SyncConnection, loads
from tests.e2e.conftest import DaemonHandle
from tests.e2e.specs import spec


def _submit(handle: DaemonHandle, path: Path, request_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"spec": path.read_text(), "base_dir": str(path.parent)}
    if request_id is not None:
        params["request_id"] = request_id
    with SyncConnection(handle.socket, client="test") as conn:
        result: dict[str, Any] = conn.call("submit", params)
    return result


def _study_ids(handle: DaemonHandle) -> list[str]:
    with SyncConnection(handle.socket, client="test") as conn:
        return [s["study"] for s in conn.call("studies")]


def test_a_submit_with_a_stored_request_id_returns_that_study_even_after_a_restart(
    daemon: DaemonHandle,
) -> None:
    path = daemon.write_spec("once", spec("once"))
    first = _submit(daemon, path, "r-1")
    assert first["existing"] is False
    again = _submit(daemon, path, "r-1")
    assert again == {"study": first["study"], "name": "once", "existing": True}
    other = _submit(daemon, path, "r-2")
    assert other["study"] != first["study"]
    assert other["existing"] is False
    # An old client sends no request id: every submit of its is a new study, as before.
    plain = [_submit(daemon, path, None)["study"] for _ in range(2)]
    assert len(set(plain)) == 2
    before = _study_ids(daemon)
    assert len(before) == 4

    # SIGKILL: what the restarted daemon finds is what the submit committed, not what a
    # shutdown wrote.
    daemon.stop(signal.SIGKILL)
    daemon.start()
    after = _submit(daemon, path, "r-1")
    assert after == {"study": first["study"], "name": "once", "existing": True}
    assert _study_ids(daemon) == before


def test_a_bad_request_id_is_refused_and_makes_no_study(daemon: DaemonHandle) -> None:
    path = daemon.write_spec("bad", spec("bad"))
    params = {"spec": path.read_text(), "base_dir": str(path.parent)}
    for bad in ["x" * 129, "", "tab\there", "nul\x00", 7, ["r-1"]]:
        with (
            SyncConnection(daemon.socket, client="test") as conn,
            pytest.raises(InvalidParams, match="'request_id' must be a string of 1 to 128"),
        ):
            conn.call("submit", {**params, "request_id": bad})
    assert _study_ids(daemon) == []
    assert _submit(daemon, path, "x" * 128)["existing"] is False  # the longest allowed


class KillAfterCommit:
    """A relay between a client and the daemon. At the first submit it passes the request on and
    reads the daemon's answer (so the study is committed), then SIGKILLs the daemon, starts it
    again on the same state folder, and closes the client's connection without the answer: the
    client sees what a daemon killed between its commit and its answer leaves, every time."""

    def __init__(self, handle: DaemonHandle) -> None:
        self.handle = handle
        self.path = str(handle.root / "relay")
        self.submits: list[dict[str, Any]] = []
        self.killed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                upstream.connect(self.handle.socket)
                self._pump(client.makefile("rb"), client, upstream.makefile("rb"), upstream)

    def _pump(self, cin: Any, client: socket.socket, uin: Any, upstream: socket.socket) -> None:
        while line := cin.readline(MAX_LINE + 1):
            upstream.sendall(line)
            answer = uin.readline(MAX_LINE + 1)
            request = loads(line)
            if request["method"] == "submit":
                self.submits.append(request["params"])
                if not self.killed:
                    assert "result" in loads(answer), answer
                    self.killed = True
                    self.handle.stop(signal.SIGKILL)
                    self.handle.start()
                    return  # the answer is dropped with the connection
            client.sendall(answer)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=30)


def test_client_submit_retried_after_the_daemon_died_before_answering_gets_the_same_study(
    daemon: DaemonHandle,
) -> None:
    path = daemon.write_spec("retried", spec("retried"))
    relay = KillAfterCommit(daemon)
    try:
        with Client(relay.path) as client:
            result = client.submit(path)
    finally:
        relay.close()
    assert relay.killed
    assert len(relay.submits) == 2
    assert relay.submits[0]["request_id"] == relay.submits[1]["request_id"]
    assert result["existing"] is True
    assert _study_ids(daemon) == [result["study"]]
