"""A tiny real wire server for client-side tests: an AF_UNIX socket in a thread.

It speaks the real framing (``hpod.wire``), answers ``hello`` itself, and answers every other
method from a table: a value is returned as the result, a callable is called with the params
(and may raise an :class:`HpodError`, sent back as a wire error). Every request is recorded.
The socket is listening when the constructor returns, so tests never wait for readiness.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpod import wire
from hpod.errors import HpodError, MethodNotFound, ProtocolError

Handler = Any  # a result value, or Callable[[dict[str, Any]], Any]


class _Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = False  # joined on close, so no thread outlives its test
    block_on_close = True


class WireServer:
    def __init__(
        self, methods: Mapping[str, Handler] | None = None, *, path: str | Path | None = None
    ) -> None:
        self.methods: dict[str, Handler] = dict(methods or {})
        self.requests: list[wire.Request] = []
        self._owns_dir = path is None
        if path is None:
            # Short: AF_UNIX paths are capped at 108 bytes.
            self.dir = Path(tempfile.mkdtemp(prefix="hpod"))
            self.path = str(self.dir / "s.sock")
        else:
            self.path = str(path)
            self.dir = Path(self.path).parent
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.connections = 0
        self._start()

    def _start(self) -> None:
        outer = self

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request, self.rfile, self.wfile)

        self._server = _Unix(self.path, _Conn)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _stop(self) -> None:
        self._server.shutdown()
        self.drop_connections()
        self._server.server_close()  # joins the connection threads
        self._thread.join()
        Path(self.path).unlink(missing_ok=True)

    # -- what tests look at ------------------------------------------------------------------

    def calls(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r.params for r in self.requests if r.method == method]

    def drop_connections(self) -> None:
        """Cut every live connection, as a daemon restart would; the listener stays up."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        """Stop listening, cut every connection and listen again on the same path.

        What a restarted daemon looks like to a client; the recorded requests are kept.
        """
        self._stop()
        self._start()

    def close(self) -> None:
        self._stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, conn: socket.socket, rfile: Any, wfile: Any) -> None:
        with self._lock:
            self._conns.add(conn)
            self.connections += 1
        try:
            while True:
                try:
                    line = rfile.readline(wire.MAX_LINE + 1)
                except OSError:
                    return
                if not line:
                    return
                try:
                    wfile.write(self._answer(line))
                    wfile.flush()
                except OSError:
                    return
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _answer(self, line: bytes) -> bytes:
        rid: int | str | None = None
        try:
            req = wire.Request.from_obj(wire.loads(line))
            rid = req.id
            with self._lock:
                self.requests.append(req)
            if req.method == "hello":
                result: Any = {"protocol": wire.PROTOCOL_VERSION, "server": "test", "uid": 0}
            elif req.method in self.methods:
                handler = self.methods[req.method]
                result = handler(req.params) if callable(handler) else handler
            else:
                raise MethodNotFound(f"no method {req.method!r}")
            return wire.result_line(rid, result)
        except HpodError as err:
            return wire.error_line(rid, err)
        except Exception as exc:  # a test's handler went wrong: tell the client, loudly
            return wire.error_line(rid, ProtocolError(f"test server: {exc!r}"))


def raising(error: HpodError) -> Callable[[dict[str, Any]], Any]:
    """A handler that answers with ``error``."""

    def handler(params: dict[str, Any]) -> Any:
        raise error

    return handler
