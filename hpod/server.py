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
import structlog

from hpod import __version__, wire
from hpod.errors import ErrorCode, HpodError, MethodNotFound, ProtocolError
from hpod.peercred import Credentials, peer_credentials

log = structlog.get_logger("hpod.server")

_CHUNK = 65536


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, as the kernel says (SO_PEERCRED)."""

    creds: Credentials

    @property
    def uid(self) -> int:
        return self.creds.uid


Handler = Callable[[Peer, dict[str, Any]], Awaitable[Any]]


class LineReader:
    """Splits a byte stream into lines of at most ``cap`` bytes, discarding over-long ones."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream, cap: int = wire.MAX_LINE) -> None:
        self._stream = stream
        self._cap = cap
        self._buf = bytearray()
        self._discarding = False

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
            try:
                chunk = await self._stream.receive(_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            self._buf += chunk


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


def _too_long(size: int | None, cap: int) -> ProtocolError:
    what = f"{size} bytes" if size is not None else "more than the cap"
    err = ProtocolError(
        f"line of {what} is over the {cap}-byte cap and was discarded; send one request a line"
    )
    err.code = ErrorCode.LINE_TOO_LONG
    return err


class Server:
    """Routes requests to handlers. ``hello`` and ``ping`` are answered here."""

    def __init__(self, methods: dict[str, Handler], *, started_at: float) -> None:
        self._methods = methods
        self._started_at = started_at
        self.connections = 0

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
        raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        reader = LineReader(stream)
        greeted = False
        while True:
            rid: int | str | None = None
            try:
                line = await reader.next()
                if line is None:
                    return
                obj = wire.loads(line)
                if isinstance(obj, dict):
                    maybe = obj.get("id")
                    if isinstance(maybe, (int, str)) and not isinstance(maybe, bool):
                        rid = maybe
                req = wire.Request.from_obj(obj)
                if not greeted and req.method != "hello":
                    err = ProtocolError(f"call hello first (got {req.method!r} before hello)")
                    err.code = ErrorCode.HELLO_REQUIRED
                    raise err
                if req.method == "hello":
                    result = self._hello(peer, req.params)
                    greeted = True
                else:
                    result = await self._call(peer, req)
                if req.id is not None:
                    await _send(stream, raw, wire.result_line(req.id, result))
            except HpodError as exc:
                await stream.send(wire.error_line(rid, exc))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                return
            except Exception as exc:  # a bug of ours: answer it, log it, keep serving
                log.exception("handler_crashed", error=str(exc))
                await stream.send(wire.error_line(rid, HpodError(f"internal error: {exc}")))

    def _hello(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        want = params.get("protocol", wire.PROTOCOL_VERSION)
        if want != wire.PROTOCOL_VERSION:
            err = ProtocolError(
                f"protocol {want!r} is not spoken here; this daemon speaks "
                f"{wire.PROTOCOL_VERSION} (upgrade hpodctl or the daemon so they match)"
            )
            err.code = ErrorCode.PROTOCOL_VERSION
            raise err
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"hpod {__version__}",
            "uid": peer.uid,
            "pid": os.getpid(),
        }

    async def _call(self, peer: Peer, req: wire.Request) -> Any:
        handler = self._methods.get(req.method)
        if handler is None:
            known = ", ".join(sorted(["hello", *self._methods]))
            raise MethodNotFound(f"no method {req.method!r}; known: {known}")
        return await handler(peer, req.params)
