"""The socket server: one task per connection, lines in, one response line per request out.

A connection must say ``hello`` first. A line that is not JSON, not an envelope, or over the cap
is answered with an error and the connection keeps serving; an over-long line is discarded up to
its newline without ever being held in memory whole.
"""

from __future__ import annotations

import os
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
_EAGER_READS = 8  # reads in a row without yielding to the event loop


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
    """Splits a byte stream into lines of at most ``cap`` bytes, discarding over-long ones."""

    def __init__(self, raw: socket.socket, cap: int = wire.MAX_LINE) -> None:
        self._raw = raw
        self._cap = cap
        self._buf = bytearray()
        self._discarding = False
        self._eager = 0

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
            chunk = await self._receive()
            if not chunk:
                return None
            self._buf += chunk

    async def _receive(self) -> bytes:
        """The next bytes from the socket, b"" at its end.

        Reads before it waits: anyio's receive yields to the event loop first, every time, and
        on the report path that loop turn cost more than the read. A connection whose bytes are
        always there already still yields every few reads, so it cannot starve the others.
        """
        while True:
            if self._eager >= _EAGER_READS:
                self._eager = 0
                await anyio.lowlevel.checkpoint()
            try:
                chunk = self._raw.recv(_CHUNK)
            except BlockingIOError:
                self._eager = 0
                try:
                    await anyio.wait_readable(self._raw)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return b""
                continue
            except OSError:
                return b""
            self._eager += 1
            return chunk


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


class Server:
    """Routes requests to handlers. ``hello`` and ``ping`` are answered here."""

    def __init__(
        self,
        methods: dict[str, Handler],
        *,
        started_at: float,
        answering: dict[str, AnsweringHandler] | None = None,
    ) -> None:
        self._methods = methods
        self._answering = answering or {}
        self._started_at = started_at
        self.connections = 0
        self.refusals = RefusalLog()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                peer = Peer(peer_credentials(raw))
                await self._serve(stream, peer)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass
        finally:
            self.connections -= 1

    async def _serve(self, stream: anyio.abc.SocketStream, peer: Peer) -> None:
        await self._serve_lines(_Connection(stream, peer))

    async def _serve_lines(self, conn: _Connection) -> None:
        while True:
            rid: int | str | None = None
            method: str | None = None
            try:
                line = await conn.reader.next()
                if line is None:
                    return
                obj = wire.loads(line)
                if isinstance(obj, dict):
                    maybe = obj.get("id")
                    if isinstance(maybe, (int, str)) and not isinstance(maybe, bool):
                        rid = maybe
                req = wire.Request.from_obj(obj)
                method = req.method
                if not conn.greeted and req.method != "hello":
                    raise HelloRequired(f"call hello first (got {req.method!r} before hello)")
                if req.method == "hello":
                    result = self._hello(conn.peer, req.params)
                    conn.greeted = True
                elif req.method in self._answering:
                    answer = Answer(conn.raw, req.id)
                    self._answering[req.method](conn.peer, req.params, answer)
                    # Waited for before the next line: answers stay in order, the socket is not
                    # closed under the writer, and (measured, bench/report_latency.py) a loop
                    # that waits here serves 8 reporting trials faster than one that reads ahead.
                    if not await answer.sent():
                        return
                    continue
                else:
                    result = await self._call(conn.peer, req)
                if req.id is not None:
                    await _send(conn.stream, conn.raw, wire.result_line(req.id, result))
            except HpodError as exc:  # a bad request: its own code, one line (rate-limited)
                self.refusals.refused(conn.peer.uid, method, exc)
                await conn.stream.send(wire.error_line(rid, exc))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                return
            except Exception as exc:  # a bug of ours: answer it, log it, keep serving
                log.exception("handler_crashed", error=str(exc))
                await conn.stream.send(wire.error_line(rid, HpodError(f"internal error: {exc}")))

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
