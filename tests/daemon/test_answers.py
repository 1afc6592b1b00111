"""A report's answer, sent by the store's writer thread once the report is committed."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hpod.core.states import Decision
from hpod.daemon import answers
from hpod.daemon.answers import Answer
from hpod.daemon.store import Op, Store, insert_study_op, report_op
from hpod.errors import ErrorCode

from .test_store import study_row


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server.setblocking(False)
    client.settimeout(10)
    yield server, client
    server.close()
    client.close()


def _read_line(sock: socket.socket) -> dict[str, object]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed before a whole line"
        buf += chunk
    out: dict[str, object] = json.loads(buf)
    return out


@pytest.mark.anyio
async def test_the_answer_goes_out_only_after_the_commit(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    store = Store.open(tmp_path)
    try:
        await store.write(insert_study_op(study_row("s1")))
        answer = Answer(server, 7)
        answer.prepare({"decision": "CONTINUE"})
        seen: list[int] = []

        # Whoever reads the store when the answer arrives finds the report there.
        def settle_and_check(error: BaseException | None) -> None:
            with sqlite3.connect(store.path) as conn:
                seen.append(conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
            answer.settle(error)

        store.post(
            report_op("s1", 0, 1, 1.0, {"loss": 0.5}, Decision.CONTINUE, 1.0),
            then=settle_and_check,
        )
        assert await answer.sent() is True
        assert seen == [1]
        assert _read_line(client) == {"jsonrpc": "2.0", "id": 7, "result": {"decision": "CONTINUE"}}
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_failed_commit_answers_with_an_error_and_nothing_is_stored(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    store = Store.open(tmp_path)
    try:
        answer = Answer(server, 3)
        answer.prepare({"decision": "CONTINUE"})
        # The report and a statement that fails, in one transaction: neither is kept.
        store.post(
            report_op("s1", 0, 1, 1.0, {"loss": 0.5}, Decision.CONTINUE, 1.0),
            Op("INSERT INTO no_such_table VALUES (1)", ()),
            then=answer.settle,
        )
        assert await answer.sent() is True
        line = _read_line(client)
        assert line["id"] == 3
        assert "result" not in line
        error = line["error"]
        assert isinstance(error, dict)
        assert error["code"] == int(ErrorCode.INTERNAL)
        assert "not counted" in error["message"]
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_client_that_reads_no_answers_is_cut_off_not_waited_for(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = pair
    monkeypatch.setattr(answers, "_SEND_WAIT_S", 0.05)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = {"pad": "x" * 200_000}  # more than the socket holds while nobody reads
    answer = Answer(server, 1)
    answer.prepare(big)
    thread = threading.Thread(target=answer.settle, args=(None,))
    thread.start()
    with anyio.fail_after(5):
        assert await answer.sent() is False
    thread.join()
    # The connection was shut down: the client sees its end after whatever got through.
    client.settimeout(5)
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    assert 0 < len(received) < len(json.dumps(big))


@pytest.mark.anyio
async def test_a_notification_gets_no_answer(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    answer = Answer(server, None)
    answer.prepare({"decision": "STOP"})
    answer.settle(None)
    assert await answer.sent() is True
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)


def test_post_needs_ops(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        ops: tuple[Op, ...] = ()
        with pytest.raises(ValueError, match="at least one op"):
            store.post(*ops, then=lambda _: None)
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_cancelled_wait_still_waits_until_the_answer_is_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # The connection closes its socket right after sent() returns or raises; the writer must be
    # done with it by then, or it could write into a descriptor reused by another client.
    server, client = pair
    answer = Answer(server, 3)
    answer.prepare({"decision": "PAUSE"})
    release = threading.Event()
    settled_when_wait_ended: list[bool] = []

    def writer() -> None:
        release.wait(10)
        time.sleep(0.05)  # a slow commit: the cancellation reaches the waiter meanwhile
        answer.settle(None)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with anyio.CancelScope() as scope:
            waiting = anyio.Event()

            async def wait_for_answer() -> None:
                waiting.set()
                try:
                    await answer.sent()
                finally:
                    settled_when_wait_ended.append(answer.done)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_answer)
                await waiting.wait()
                await anyio.lowlevel.checkpoint()
                scope.cancel()
                # The cancelled waiter is still parked on the answer; let the writer finish.
                release.set()
        assert scope.cancelled_caught
        assert settled_when_wait_ended == [True]
        assert _read_line(client) == {"jsonrpc": "2.0", "id": 3, "result": {"decision": "PAUSE"}}
    finally:
        release.set()
        thread.join(10)


@pytest.mark.anyio
async def test_a_batch_of_answers_wakes_the_loop_once(tmp_path: Path) -> None:
    # Each wake-up is a self-pipe write on the writer thread, where the loop takes the GIL; one
    # per answer made the writer wait for it back once per answer (hpod.daemon.wakeups).
    store = Store.open(tmp_path)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
    loop = asyncio.get_running_loop()
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal wakeups
        if threading.current_thread() is not threading.main_thread():
            wakeups += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    try:
        await store.write(insert_study_op(study_row("s1")))
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        sent: list[bool] = []
        answers_ = [Answer(server, i) for i, (server, _) in enumerate(pairs)]
        async with anyio.create_task_group() as tg:
            with store._writer_gate:  # the five commits make one batch
                for i, answer in enumerate(answers_):
                    answer.prepare({"decision": "CONTINUE"})
                    store.post(
                        report_op("s1", i, 1, 1.0, {"loss": 0.5}, Decision.CONTINUE, 1.0),
                        then=answer.settle,
                    )

                    async def wait(answer: Answer = answer) -> None:
                        sent.append(await answer.sent())

                    tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
        assert sent == [True] * 5
        assert wakeups == 1
        for i, (_, client) in enumerate(pairs):
            client.settimeout(10)
            assert _read_line(client)["id"] == i
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        store.close()
        for a, b in pairs:
            a.close()
            b.close()
