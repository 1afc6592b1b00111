"""One log line for each refused request, and not a flood of them.

A request answered with an error (a bad line, bad params, an unknown study, a wrong token) is the
client's mistake, not the daemon's: it is logged as one ``request_refused`` line with its code,
never with a traceback. A client that sends nothing but bad lines, as fast as it can, must not
write the log as fast (200,000 fuzzed lines once made 8.4 MB of it): past a burst the lines are
rate-limited, and the next one logged says how many were left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from hpod.errors import HpodError

log = structlog.get_logger("hpod.daemon.refusals")

RATE = 20.0  # lines a second, once a burst is spent
BURST = 200
MESSAGE_CHARS = 300  # of the error's message: it may quote a peer's input


class RefusalLog:
    """A token bucket of log lines, shared by every connection (a flood from many is one)."""

    def __init__(
        self,
        rate: float = RATE,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.left_out = 0  # since the last line logged

    def refused(self, uid: int, method: str | None, error: HpodError) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            self.left_out += 1
            return
        self._tokens -= 1.0
        extra = {"not_logged": self.left_out} if self.left_out else {}
        self.left_out = 0
        message = error.message
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "..."
        log.info(
            "request_refused",
            uid=uid,
            method=method[:64] if method is not None else None,
            code=error.code.name,
            error=message,
            **extra,
        )
