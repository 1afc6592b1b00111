"""The socket server: one task per connection, lines in, one response line per request out.

A connection must say ``hello`` first. A line that is not JSON, not an envelope, or over the cap
is answered with an error and the connection keeps serving; an over-long line is discarded up to
its newline without ever being held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from hpod import __version__, wire
from hpod.daemon.answers import Answer
from hpod.daemon.connections import ConnectionLimits, Gate, accept_forever
from hpod.daemon.peercred import Credentials, peer_credentials
from hpod.daemon.refusals import RefusalLog
from hpod.errors import (
    HelloRequired,
    HpodError,
    LineTooLong,
    MethodNotFound,
    ProtocolMismatch,
)

log = structlog.get_logger("hpod.daemon.server")

_CHUNK = 65536
# Methods that end when their client hangs up: a wait is answered only when its study ends, and
# one abandoned by its client kept its task and descriptor until then (200 waits held 200 fds).
_ENDS_ON_HANGUP = frozenset({"wait"})
# How often a call racing its client's hang-up looks again once the peer has shut its writing
# side (a half-closed peer still reads its answer) or sent more than the line cap meanwhile.
_HANGUP_POLL = 1.0


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, as the kernel says (SO_PEERCRED)."""

    creds: Credentials

    @property
    def uid(self) -> int:
        return self.creds.uid


Handler = Callable[[Peer, dict[str, Any]], Awaitable[Any]]


# Takes the request's Answer and either raises (answered with the error) or hands the answer on
# to whoever settles it (the store's writer thread): it does not wait for that.
AnsweringHandler = Callable[[Peer, dict[str, Any], Answer], None]


class LineReader:
    """Splits a byte stream into lines of at most ``cap`` bytes, discarding over-long ones.

    The socket stays watched by the event loop while the connection lives, and the loop's
    callback reads what arrives into the buffer: a report costs one ``recv``, not a failed one,
    an ``epoll_ctl`` to watch and another to stop (what waiting with ``anyio.wait_readable``
    did each time). Each is a system call that lets the store's writer thread take the GIL from
    the loop in the middle of a report (bench/report_latency.py).
    """

    def __init__(self, raw: socket.socket, cap: int = wire.MAX_LINE) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self._cap = cap
        self._buf = bytearray()
        self._discarding = False
        self._eof = False
        self._loop: asyncio.AbstractEventLoop | None = None  # while the socket is watched
        self._waiter: asyncio.Future[None] | None = None

    async def next(self) -> bytes | None:
        """The next line (without its newline), ``b""``-free; None at end of stream.

        Raises ProtocolError(LINE_TOO_LONG) once per over-long line, after skipping it.
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if self._discarding:
                    self._discarding = False
                    continue
                if len(line) > self._cap:
                    raise _too_long(len(line), self._cap)
                if line.strip():
                    return line
                continue
            if len(self._buf) > self._cap:
                # Keep nothing of an over-long line; answer once, then skip to its newline.
                if not self._discarding:
                    self._discarding = True
                    self._buf.clear()
                    raise _too_long(None, self._cap)
                self._buf.clear()
            if self._eof:
                return None
            await self._more()

    async def wait_hangup(self) -> None:
        """Return once the peer has closed its end for good (run while a call is in progress).

        What the peer sends meanwhile is kept for :meth:`next`, up to the line cap. An end of
        stream alone may be a peer that shut only its writing side and still reads: a close shows
        as POLLHUP (both directions shut), which is then looked for every ``_HANGUP_POLL`` s.
        """
        while True:
            if self._eof or len(self._buf) > self._cap:
                if _hung_up(self._raw):
                    return
                await anyio.sleep(_HANGUP_POLL)
                continue
            await self._more()

    def close(self) -> None:
        """Stop watching the socket (before it is closed: the loop must not keep its number)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closing already
                self._loop.remove_reader(self._fd)
            self._loop = None

    async def _more(self) -> None:
        """Wait until the buffer has grown or the stream has ended."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(self._fd, self._on_readable)
            self._loop = loop
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        # The loop's callback: it must not raise.
        try:
            chunk = self._raw.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._buf += chunk
        else:
            self._eof = True
        if self._eof or len(self._buf) > self._cap:
            # Nothing more to take now: an end, or a line over the cap that its reader has yet
            # to skip (it watches again when it waits).
            self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _unix_peer(raw: socket.socket) -> Peer:
    return Peer(peer_credentials(raw))


def _hung_up(raw: socket.socket) -> bool:
    """Whether both directions of a Unix socket are shut: its peer closed it."""
    poller = select.poll()
    poller.register(raw, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


async def _send(stream: anyio.abc.SocketStream, raw: socket.socket, data: bytes) -> None:
    """Send an answer; straight to the socket when it takes it whole, which it nearly always does.

    anyio's send yields to the event loop before every write; on the report path that extra loop
    turn was 8 % of the daemon's time. Anything the kernel does not take goes through anyio.
    """
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise anyio.BrokenResourceError from exc
    if sent < len(data):
        await stream.send(data[sent:])


def _too_long(size: int | None, cap: int) -> LineTooLong:
    what = f"{size} bytes" if size is not None else "more than the cap"
    return LineTooLong(
        f"line of {what} is over the {cap}-byte cap and was discarded; send one request a line"
    )


class _Connection:
    """One client connection's state, owned by its task."""

    def __init__(self, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        self.stream = stream
        self.raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.reader = LineReader(self.raw)
        self.peer = peer
        self.greeted = False
        # A trial's connection (a trial call authenticated on it) is never idle: a trial keeps
        # it between reports that may be hours apart, and each running trial may hold one.
        self.trial = False


class Server:
    """Routes requests to handlers. ``hello`` and ``ping`` are answered here."""

    def __init__(
        self,
        methods: dict[str, Handler],
        *,
        started_at: float,
        answering: dict[str, AnsweringHandler] | None = None,
        limits: ConnectionLimits | None = None,
        identify: Callable[[socket.socket], Peer] | None = None,
    ) -> None:
        self._methods = methods
        # Who a new connection is: SO_PEERCRED on a Unix socket; the trials' TCP endpoint
        # (hpod.daemon.tcp) has no such thing and names every peer the same.
        self._identify = identify or _unix_peer
        self._answering = answering or {}
        self._started_at = started_at
        self.limits = limits or ConnectionLimits()
        self.gate = Gate(self.limits)
        self.connections = 0
        self.refusals = RefusalLog()

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        """Accept and serve connections until the listener closes; never ends otherwise."""
        where = str(listener.extra(anyio.abc.SocketAttribute.local_address, "?"))
        async with anyio.create_task_group() as tg:
            await accept_forever(listener, lambda stream: self._admit(tg, stream), where=where)
            tg.cancel_scope.cancel()

    def _admit(self, tg: anyio.abc.TaskGroup, stream: anyio.abc.SocketStream) -> None:
        """Start serving a new connection, or refuse it: one line, closed before it costs a task."""
        raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        try:
            peer = self._identify(raw)
        except HpodError as exc:
            log.warning("connection_unidentified", error=exc.message)
            raw.close()
            return
        self.admit_as(tg, stream, peer)

    def admit_as(self, tg: anyio.abc.TaskGroup, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        """Serve ``stream`` as ``peer``'s connection, or refuse it (over a cap): one line."""
        raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        refusal = self.gate.refusal(peer.uid)
        if refusal is not None:
            self.gate.refused(peer.uid, refusal)
            with contextlib.suppress(OSError):  # a fresh socket takes one line whole
                raw.send(wire.error_line(None, refusal))
            raw.close()
            return
        self.gate.opened(peer.uid)
        tg.start_soon(self.handle, stream, peer)

    async def handle(self, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._serve(stream, peer)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass
        except Exception as exc:  # a bug of ours ends this connection, never the task group
            log.exception("connection_crashed", uid=peer.uid, error=str(exc))
        finally:
            self.connections -= 1
            self.gate.closed(peer.uid)

    async def _serve(self, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        conn = _Connection(stream, peer)
        try:
            await self._serve_lines(conn)
        finally:
            conn.reader.close()

    async def _serve_lines(self, conn: _Connection) -> None:
        while True:
            rid: int | str | None = None
            method: str | None = None
            try:
                line = await self._next_line(conn)
                if line is None:
                    return
                obj = wire.loads(line)
                if isinstance(obj, dict):
                    maybe = obj.get("id")
                    if isinstance(maybe, (int, str)) and not isinstance(maybe, bool):
                        rid = maybe
                req = wire.Request.from_obj(obj)
                method = req.method
                # Named for what it serves now, so a loop profile (bench/loopprobe) says which
                # request held the loop.
                _name_task(f"request {method}")
                if not conn.greeted and req.method != "hello":
                    raise HelloRequired(f"call hello first (got {req.method!r} before hello)")
                if req.method == "hello":
                    result = self._hello(conn.peer, req.params)
                    conn.greeted = True
                elif req.method in self._answering:
                    answer = Answer(conn.raw, req.id)
                    self._answering[req.method](conn.peer, req.params, answer)
                    conn.trial = conn.trial or req.method.startswith("trial.")
                    # Waited for before the next line: answers stay in order, the socket is not
                    # closed under the writer, and (measured, bench/report_latency.py) a loop
                    # that waits here serves 8 reporting trials faster than one that reads ahead.
                    if not await answer.sent():
                        return
                    continue
                elif req.method in _ENDS_ON_HANGUP:
                    result = await self._call_until_hangup(conn, req)
                else:
                    result = await self._call(conn.peer, req)
                    conn.trial = conn.trial or req.method.startswith("trial.")
                if req.id is not None:
                    await _send(conn.stream, conn.raw, wire.result_line(req.id, result))
                if not conn.trial:
                    # A client's pipelined requests (hpodctl trials' pages) are read from the
                    # buffer without a wait: one loop turn each, not all of them in one (eight
                    # 10,000-trial pages held the loop 40 ms). A trial's reports are not: the
                    # turn would cost more than the report.
                    await anyio.lowlevel.checkpoint()
            except HpodError as exc:  # a bad request: its own code, one line (rate-limited)
                self.refusals.refused(conn.peer.uid, method, exc)
                await conn.stream.send(wire.error_line(rid, exc))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                return
            except Exception as exc:  # a bug of ours: answer it, log it, keep serving
                log.exception("handler_crashed", error=str(exc))
                await conn.stream.send(wire.error_line(rid, HpodError(f"internal error: {exc}")))

    async def _next_line(self, conn: _Connection) -> bytes | None:
        """The connection's next request line; None at its end, or once it sat idle too long."""
        idle = self.limits.idle_timeout
        if conn.trial or idle is None:
            return await conn.reader.next()
        with anyio.move_on_after(idle):
            return await conn.reader.next()
        log.debug("connection_idle", uid=conn.peer.uid, pid=conn.peer.creds.pid, seconds=idle)
        return None

    async def _call_until_hangup(self, conn: _Connection, req: wire.Request) -> Any:
        """The call, ended early (BrokenResourceError) if its client hangs up meanwhile."""
        hung_up = False
        result: Any = None
        error: Exception | None = None

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal hung_up
            await conn.reader.wait_hangup()
            hung_up = True
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                result = await self._call(conn.peer, req)
            except Exception as exc:  # raised below, outside the group (no ExceptionGroup)
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if hung_up:
            raise anyio.BrokenResourceError(f"the client hung up during {req.method}")
        return result

    def _hello(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        want = params.get("protocol", wire.PROTOCOL_VERSION)
        if want != wire.PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"protocol {wire.shown(want)} is not spoken here; this daemon speaks "
                f"{wire.PROTOCOL_VERSION} (upgrade hpodctl or the daemon so they match)"
            )
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"hpod {__version__}",
            "uid": peer.uid,
            "pid": os.getpid(),
        }

    async def _call(self, peer: Peer, req: wire.Request) -> Any:
        handler = self._methods.get(req.method)
        if handler is None:
            known = ", ".join(sorted(["hello", *self._methods, *self._answering]))
            raise MethodNotFound(f"no method {wire.shown(req.method)}; known: {known}")
        return await handler(peer, req.params)


def _name_task(name: str) -> None:
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)
