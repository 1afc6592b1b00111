"""The trials' TCP endpoint: how a trial on another machine (a Slurm job's node) reaches the
daemon (docs/slurm.md).

It serves the trial methods only (``trial.report``, ``trial.oom``, after ``hello``): every one
is authenticated by the run's own token (``HPOD_TOKEN``, compared as its sha256, as on the Unix
socket), and nothing else is answered there; control stays on the Unix socket, whose peers the
kernel names. With ``trial_tls_cert`` and ``trial_tls_key`` it speaks TLS (the stdlib's ``ssl``):
each connection's handshake is done in its own task. Each connection's bytes (plaintext) are
carried over a socketpair to the same line server the Unix sockets have, so a report takes the
same path, answered by the store's writer thread the moment it is committed.
A trial reaches it through ``HPOD_SOCKET=tcp://host:port`` (``tls://host:port``, with
``HPOD_TLS_CA``): hpod.wire.open_socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import structlog
from anyio.streams.tls import TLSStream

from hpod.daemon.config import parse_address
from hpod.daemon.connections import ConnectionLimits, accept_forever
from hpod.daemon.peercred import Credentials
from hpod.daemon.server import AnsweringHandler, Handler, Peer, Server

log = structlog.get_logger("hpod.daemon")

# The methods served on TCP: a trial's, each authenticated by its token.
TRIAL_METHODS = frozenset({"trial.report", "trial.oom"})
# Every TCP peer is this one "uid": the kernel cannot say who is on the other machine.
REMOTE = Peer(Credentials(pid=0, uid=-1, gid=-1))
HANDSHAKE_SECONDS = 10.0
_CHUNK = 65536


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertised(bound: str, advertise: str | None) -> str:
    """What trials connect to: ``advertise`` when given, else the bound address, with a
    wildcard host (0.0.0.0, ::) replaced by this machine's name."""
    if advertise:
        return advertise
    host, port = parse_address(bound)
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return format_address(host, port)


def trial_address(address: str, tls: object | None) -> str:
    """HPOD_SOCKET for a trial that reaches the endpoint: tcp://host:port or tls://host:port."""
    return f"{'tls' if tls is not None else 'tcp'}://{address}"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def trial_server(
    methods: Mapping[str, Handler],
    answering: Mapping[str, AnsweringHandler],
    *,
    started_at: float,
    limits: ConnectionLimits,
) -> Server:
    """A line server that knows only the trial methods (and hello)."""
    return Server(
        {k: v for k, v in methods.items() if k in TRIAL_METHODS},
        answering={k: v for k, v in answering.items() if k in TRIAL_METHODS},
        started_at=started_at,
        limits=limits,
        identify=lambda raw: REMOTE,
    )


class TrialEndpoint:
    """The listener on ``address`` and what it serves."""

    def __init__(self, server: Server, address: str, tls: TlsFiles | None) -> None:
        self.server = server
        self.host, self.port = parse_address(address)
        self.tls = tls.context() if tls is not None else None
        self.listeners: list[anyio.abc.SocketListener] = []

    async def open(self) -> None:
        """Bind (OSError when the address is taken or not this machine's): one listener for
        each address the host resolves to."""
        multi = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.listeners = [cast(anyio.abc.SocketListener, one) for one in multi.listeners]

    @property
    def bound(self) -> str:
        sock: socket.socket = self.listeners[0].extra(anyio.abc.SocketAttribute.raw_socket)
        host, port = sock.getsockname()[:2]
        return format_address(host, port)

    async def serve(self) -> None:
        """Serve every listener until cancelled (the daemon's shutdown); each is closed then."""
        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
            for listener in self.listeners:
                await stack.enter_async_context(listener)
                tg.start_soon(self._serve_one, listener)

    async def _serve_one(self, listener: anyio.abc.SocketListener) -> None:
        where = f"{'tls' if self.tls is not None else 'tcp'}://{self.bound}"
        async with anyio.create_task_group() as tg:

            def admit(stream: anyio.abc.SocketStream) -> None:
                tg.start_soon(self._carry, tg, stream)

            await accept_forever(listener, admit, where=where)
            tg.cancel_scope.cancel()

    async def _carry(self, tg: anyio.abc.TaskGroup, stream: anyio.abc.SocketStream) -> None:
        """One connection: its TLS handshake (with TLS), then its bytes carried over a
        socketpair to the line server, which reads and writes a plain socket, from two threads
        (the loop's and the store writer's), as it does a Unix socket's. One connection's
        trouble (a failed handshake, a reset) ends that connection only."""
        peer: anyio.abc.ByteStream = stream
        try:
            if self.tls is not None:
                with anyio.fail_after(HANDSHAKE_SECONDS):
                    # Not standard-compatible: a peer that goes without close_notify (a killed
                    # trial) is no error, and closing sends none.
                    peer = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=self.tls, standard_compatible=False
                    )
            inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            served = await anyio.abc.UNIXSocketStream.from_socket(inner)
            carried = await anyio.abc.UNIXSocketStream.from_socket(outer)
            self.server.admit_as(tg, served, REMOTE)
            try:
                async with anyio.create_task_group() as pump:
                    pump.start_soon(_copy, peer, carried, pump.cancel_scope)
                    pump.start_soon(_copy, carried, peer, pump.cancel_scope)
            finally:
                with contextlib.suppress(Exception):
                    await carried.aclose()
        except (TimeoutError, ssl.SSLError, OSError, anyio.BrokenResourceError) as exc:
            log.info("trial_tcp_refused", tls=self.tls is not None, error=str(exc))
        except anyio.EndOfStream:
            pass
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await peer.aclose()
            if peer is not stream:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await stream.aclose()


async def _copy(
    source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, scope: anyio.CancelScope
) -> None:
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
    ):
        while True:
            await sink.send(await source.receive(_CHUNK))
    scope.cancel()
