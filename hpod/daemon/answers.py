"""An answer that is sent the moment a report is committed.

A report is acknowledged only once it is durable. Sending that acknowledgement from the event loop
meant waking the loop after every commit and waiting for it to be scheduled before the trial heard
anything; on a 2-core machine with 8 trials reporting, those hand-offs were most of a round trip.
So the handler prepares the answer line and hands :meth:`Answer.settle` to the store with the
report; whoever commits it sends the line (or, if the commit failed, an error line) right after
the commit: the writer thread, before it wakes the loop, or, when the writer is idle, the loop
itself inside ``Store.post`` (hpod.daemon.store). The connection waits (:meth:`Answer.sent`)
until the answer is out before it reads its next line, which keeps answers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from typing import Any

import anyio
import structlog

from hpod import wire
from hpod.daemon import wakeups
from hpod.errors import HpodError

log = structlog.get_logger("hpod.daemon.server")

# How long the writer thread may wait for a client to make room for its answer. A trial reads
# each answer before it reports again, so its socket always has room; only a client that sends
# many requests and reads no answers ever fills it, and it is cut off rather than let it stall
# every other trial's commits.
_SEND_WAIT_S = 0.05


class Answer:
    """One request's answer line, sent once from whichever thread settles it."""

    __slots__ = ("_done", "_id", "_line", "_lock", "_loop", "_ok", "_raw", "_waiter")

    def __init__(self, raw: socket.socket, rid: int | str | None) -> None:
        self._raw = raw
        self._id = rid
        self._line = b""
        self._lock = threading.Lock()
        self._done = False
        self._ok = True
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def prepare(self, result: Any) -> None:
        """Build the line now, on the loop, so that settling it is little more than a syscall."""
        if self._id is not None:
            self._line = wire.result_line(self._id, result)

    def settle(self, error: BaseException | None) -> None:
        """Send the prepared line, or an error line if ``error``; any thread, never raises."""
        line = self._line
        if error is not None:
            if not isinstance(error, HpodError):
                log.error("report_not_stored", error=repr(error))
                error = HpodError(f"the report could not be stored ({error}); it was not counted")
            line = wire.error_line(self._id, error) if self._id is not None else b""
        ok = _send_all(self._raw, line) if line else True
        with self._lock:
            self._done, self._ok = True, ok
            waiter = self._waiter
        if waiter is not None:
            wakeups.call_soon(self._loop, _resolve, waiter)

    @property
    def done(self) -> bool:
        """Whether the answer has been settled (sent, or found undeliverable)."""
        with self._lock:
            return self._done

    async def sent(self) -> bool:
        """Wait until the answer is out; False if the connection broke meanwhile.

        Cancelled, it still waits (shielded) before it re-raises: the caller closes the socket
        next, and the writer may be sending on it, or, once closed, on a new connection that
        reused its descriptor. The shield is set up only then: on the report path a cancel scope
        per answer was a quarter of the loop's time (py-spy, bench/report_latency.py)."""
        try:
            return await self._wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._wait()
            raise

    async def _wait(self) -> bool:
        with self._lock:
            if self._done:
                return self._ok
            # A fresh future each time: a cancelled wait leaves its own one cancelled.
            waiter = self._waiter = self._loop.create_future()
        await waiter
        return self._ok


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _send_all(raw: socket.socket, line: bytes) -> bool:
    """Write ``line`` to a non-blocking socket, waiting at most _SEND_WAIT_S for room."""
    view = memoryview(line)
    deadline = 0.0
    while view:
        try:
            view = view[raw.send(view) :]
            continue
        except BlockingIOError:
            pass
        except OSError:
            return False  # closed by the peer or by us
        now = time.monotonic()
        deadline = deadline or now + _SEND_WAIT_S
        if now >= deadline:
            log.warning("client_not_reading", waited_s=_SEND_WAIT_S)
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)  # its connection task then sees the end
            return False
        try:
            select.select([], [raw], [], deadline - now)
        except (OSError, ValueError):
            return False
    return True
