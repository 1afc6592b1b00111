"""How many connections the daemon holds, whose, and an accept loop that outlives the kernel.

Every connection costs the daemon a descriptor, and a daemon out of descriptors cannot open a
trial's log, the store's journal or the next connection. So connections are capped, per uid and
overall, and the overall cap stays below what ``RLIMIT_NOFILE`` leaves once the daemon's own
files and its running trials' are counted (read at every accept: a limit lowered with
``prlimit`` counts at once). A connection over a cap is answered with one
``TOO_MANY_CONNECTIONS`` line and closed at once, before it costs a task.

What the kernel refuses anyway (EMFILE, ENFILE, ENOBUFS, ECONNABORTED: another process's
descriptors, a burst) is no reason to end the daemon: the accept loop logs the first failure of a
burst, backs off from 10 ms doubling to 1 s, and says when accepting works again.
"""

from __future__ import annotations

import errno
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from hpod.errors import TooManyConnections

log = structlog.get_logger("hpod.daemon.connections")

# Descriptors kept for the daemon itself, whatever the connections: the store and its journal,
# the listeners, the event loop, the fit worker's pipes, a log read for `hpodctl logs`.
FD_RESERVE = 64
# What one running trial may hold open in the daemon at once: its two logs while it starts,
# the process's pipes, and its own connection.
FDS_PER_SLOT = 4
# Connections root may open past the overall cap, so that an admin can still look when every
# other slot is taken.
ROOT_RESERVE = 8
# The overall cap never goes below this, however low the limit: a daemon nobody can reach helps
# nobody, and what the kernel then refuses is backed off.
MIN_CAP = 8

# Between accept()s that failed: the first wait, the longest, and how often a burst that lasts
# is logged again.
BACKOFF_FIRST = 0.01
BACKOFF_LAST = 1.0
BURST_REMINDER = 60.0
# A refused uid is logged once per this many seconds, with the count refused since.
REFUSAL_LOG_EVERY = 10.0


def no_trials() -> Mapping[int, int]:
    return {}


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps (``max_connections``, ``max_connections_per_uid``, ``idle_timeout``)."""

    max_connections: int = 512
    max_per_uid: int = 64
    idle_timeout: float | None = 60.0  # None: never
    slots: int = 1  # trial slots, each worth FDS_PER_SLOT descriptors of headroom
    # Running trials by the uid their process runs as: each may hold a connection beyond the
    # caps, so that a user's (or everyone's) other connections never keep a trial from reporting.
    running_trials: Callable[[], Mapping[int, int]] = field(default=no_trials)


def descriptor_cap(slots: int) -> int | None:
    """The most connections RLIMIT_NOFILE leaves room for now; None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(MIN_CAP, soft - FD_RESERVE - FDS_PER_SLOT * slots)


class Gate:
    """Counts open connections by uid and says which new one is over a cap."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: Counter[int] = Counter()
        self.total = 0
        self._refused: dict[int, tuple[float, int]] = {}  # uid: (last logged, refused since)

    def cap(self, trials: int = 0) -> int:
        """The overall cap now: max_connections (plus the running trials), within the limit."""
        want = self.limits.max_connections + trials
        fds = descriptor_cap(self.limits.slots)
        return want if fds is None else min(want, fds)

    def refusal(self, uid: int) -> TooManyConnections | None:
        """Why a new connection of ``uid`` is refused, or None when it may open."""
        running = self.limits.running_trials()
        own = running.get(uid, 0)
        mine = self.limits.max_per_uid + own
        if self.open[uid] >= mine:
            plus = f" plus 1 for each of its {own} running trials" if own else ""
            return TooManyConnections(
                f"uid {uid} already has {self.open[uid]} connections open to the daemon, the "
                f"most one user may (max_connections_per_uid = {self.limits.max_per_uid}{plus}); "
                "close some (a forgotten script, a hung hpodctl) or let idle ones time out",
                data={"uid": uid, "open": self.open[uid], "cap": mine, "scope": "uid"},
            )
        cap = self.cap(sum(running.values()))
        allowed = cap + ROOT_RESERVE if uid == 0 else cap
        if self.total >= allowed:
            return TooManyConnections(
                f"the daemon has {self.total} connections open, the most it takes now "
                f"(max_connections = {self.limits.max_connections}, within what its "
                "RLIMIT_NOFILE leaves room for); try again shortly",
                data={"uid": uid, "open": self.total, "cap": allowed, "scope": "all"},
            )
        return None

    def opened(self, uid: int) -> None:
        self.open[uid] += 1
        self.total += 1

    def closed(self, uid: int) -> None:
        self.open[uid] -= 1
        if self.open[uid] <= 0:
            del self.open[uid]
        self.total -= 1

    def refused(self, uid: int, why: TooManyConnections) -> None:
        """Log a refusal: the first of a uid's, then at most one line per REFUSAL_LOG_EVERY."""
        now = time.monotonic()
        last, since = self._refused.get(uid, (-REFUSAL_LOG_EVERY, 0))
        since += 1
        if now - last < REFUSAL_LOG_EVERY:
            self._refused[uid] = (last, since)
            return
        self._refused[uid] = (now, 0)
        log.warning(
            "connection_refused",
            uid=uid,
            refused=since,
            scope=why.data.get("scope"),
            open=why.data.get("open"),
            cap=why.data.get("cap"),
        )


class AcceptBackoff:
    """The waits between failed accept()s, and the log lines a burst of them earns."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.failures = 0
        self.delay = 0.0
        self.began = 0.0
        self.reminded = 0.0

    def failed(self, exc: BaseException) -> float:
        """The seconds to wait before the next accept()."""
        now = time.monotonic()
        code = getattr(exc, "errno", None)
        name = errno.errorcode.get(code, str(code)) if isinstance(code, int) else None
        if self.failures == 0:
            self.began = self.reminded = now
            self.delay = BACKOFF_FIRST
            log.warning(
                "accept_failed",
                socket=self.where,
                errno=name,
                error=str(exc) or type(exc).__name__,
                retry_in=self.delay,
            )
        else:
            self.delay = min(BACKOFF_LAST, self.delay * 2)
            if now - self.reminded >= BURST_REMINDER:
                self.reminded = now
                log.warning(
                    "accept_still_failing",
                    socket=self.where,
                    errno=name,
                    failures=self.failures,
                    seconds=round(now - self.began, 1),
                )
        self.failures += 1
        return self.delay

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "accept_recovered",
                socket=self.where,
                failures=self.failures,
                seconds=round(time.monotonic() - self.began, 3),
            )
            self.failures = 0


async def accept_forever(
    listener: anyio.abc.SocketListener,
    admit: Callable[[anyio.abc.SocketStream], None],
    *,
    where: str,
) -> None:
    """Hand every accepted connection to ``admit`` until the listener is closed.

    In place of anyio's ``listener.serve``, whose first failed accept() ends its task group,
    and with it the daemon: an EMFILE there once ended every running trial.
    """
    backoff = AcceptBackoff(where)
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return  # the daemon closed its listener: shutting down
        except (anyio.BrokenResourceError, OSError) as exc:
            # anyio wraps the OSError of accept() (EMFILE, ENFILE, ENOBUFS, ECONNABORTED, ...).
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            await anyio.sleep(backoff.failed(cause))
            continue
        backoff.succeeded()
        admit(stream)
