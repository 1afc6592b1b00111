"""``hpod.Client``: the synchronous control client, one method per wire method.

::

    from hpod import Client

    with Client() as c:
        study = c.submit("study.toml")["study"]
        summary = c.wait(study)
        print(c.best(study))

Results are the daemon's JSON results as plain dicts and lists (see the wire table in
docs/architecture.md); errors are raised as the matching :class:`~hpod.errors.HpodError`.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import os
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpod.core.passenv import submit_env
from hpod.errors import DaemonUnavailable, PermissionDenied, ProtocolError
from hpod.paths import default_socket_path as daemon_default
from hpod.wire import SyncConnection, no_daemon_message

__all__ = ["Client", "EventStream", "default_socket_path"]

_CLIENT = "hpod.Client"

# What a submit waits between its tries when the daemon is away (a restart): about 4 s in all.
# Sending it again is safe: its request id makes the daemon answer with the study it made.
SUBMIT_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)

# How long an event stream tries to connect again, in a row, before it gives up; and how long each
# long poll waits on the daemon (a stream's `timeout` is checked between them).
EVENTS_RECONNECT_S = 60.0
EVENTS_POLL_S = 30.0
EVENTS_PAGE = 200
_RECONNECT_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.5)


def default_socket_path(env: Mapping[str, str] = os.environ) -> str:
    """The daemon socket to use when none is given: ``$HPOD_SOCKET``, else where a daemon started
    without ``--socket`` listens (the same function decides both)."""
    explicit = env.get("HPOD_SOCKET")
    if explicit:
        return explicit
    return str(daemon_default(env=env))


class Client:
    """A connection to the daemon's control socket, opened on the first call.

    Thread-safe (calls are serialized). ``timeout`` bounds each answer in seconds (None: wait
    forever); :meth:`wait` is exempt, since it is answered only when the study ends.
    """

    def __init__(self, socket_path: str | None = None, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._conn: SyncConnection | None = None
        self._lock = threading.Lock()
        # tell's reports carry a sender and a seq, as hpod.trial's do: one re-sent after a lost
        # answer is answered again, never counted twice.
        self._tell_sender = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tell_seq = itertools.count(1)  # next() is atomic: the client is thread-safe

    # -- the wire methods ------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``{"pong": true, "version", "uptime"}``."""
        return self._dict(self.call("ping"))

    def submit(
        self,
        spec_path: str | os.PathLike[str],
        *,
        request_id: str | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Submit a study spec file: ``{"study": id, "name", "existing"}``.

        A TOML spec, or OTX's ``hpo_config.yaml`` (a ``.yaml`` file: submitted as the TOML spec
        it makes, with ``command`` as its training command when the file has none; see
        docs/otx.md). The spec's relative paths (``workdir``) are resolved against the file's
        folder. See :meth:`submit_text` for ``request_id``, ``env`` and the retries.
        """
        from hpod.core.spec import spec_file_text

        path = Path(spec_path).absolute()
        text = spec_file_text(path, command=command)
        return self.submit_text(text, path.parent, request_id=request_id, env=env)

    def submit_text(
        self,
        text: str,
        base_dir: str | os.PathLike[str],
        *,
        request_id: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Submit a study spec given as TOML text, relative paths taken from ``base_dir``.

        The study's trials run in the submitter's environment: the submit carries the part of
        ``env`` (default: this process's) that finds programs and packages (``PATH``,
        ``VIRTUAL_ENV``, ``CONDA_PREFIX``, ``PYTHONPATH``, ... see :mod:`hpod.core.passenv`)
        and the names the spec's ``pass_env`` lists; nothing else of it leaves this process.

        The submit carries ``request_id`` (a fresh uuid4 when None): while the daemon is away
        or the connection is lost it is sent again, up to ``len(SUBMIT_BACKOFF_S)`` more times,
        and the daemon answers a repeat with the study the first one made (``"existing":
        true``), so a retry never makes a second study. A daemon older than request ids ignores
        the id (its answer has no ``existing``); there a retry could.
        """
        params = {
            "spec": text,
            "base_dir": str(Path(base_dir).absolute()),
            "request_id": request_id or str(uuid.uuid4()),
            "env": submit_env(os.environ if env is None else env, _pass_env(text)),
        }
        for delay in SUBMIT_BACKOFF_S:
            try:
                return self._dict(self.call("submit", params))
            except DaemonUnavailable:
                # Also a lost answer: the study may be stored, and the same id finds it.
                time.sleep(delay)
        return self._dict(self.call("submit", params))

    def studies(self) -> list[dict[str, Any]]:
        """A summary of every study."""
        return self._list(self.call("studies"))

    def study(self, study: str) -> dict[str, Any]:
        """A study's detail: its summary plus trial counts, best, failures and limits."""
        return self._dict(self.call("study", {"study": study}))

    def trials(self, study: str) -> list[dict[str, Any]]:
        """Every trial of a study (read a page at a time: :meth:`iter_trials`)."""
        return list(self.iter_trials(study))

    def iter_trials(self, study: str, *, after: int = 0) -> Iterator[dict[str, Any]]:
        """A study's trials in trial order, from trial ``after`` on, read from the daemon a page
        at a time (wire ``trials`` with ``after``; each page as it is when it is read), so that
        no answer is over the line cap however many trials the study has. A daemon older than
        pages answers with the whole list at once."""
        while True:
            result = self.call("trials", {"study": study, "after": after})
            if isinstance(result, list):
                yield from result[after:]
                return
            page = self._dict(result)
            yield from self._list(page.get("trials"))
            nxt = page.get("next")
            if nxt is None:
                return
            if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt <= after:
                raise ProtocolError(f"the daemon sent a trials page with next {nxt!r}")
            after = nxt

    def best(self, study: str) -> dict[str, Any]:
        """``{"study", "trial", "config", "objective", "last", "window", "resource"}``:
        ``objective`` is the estimate the trial ranks by (the mean of its last ``window`` counted
        reports, docs/answer.md), ``last`` its last report. NotFound if no result yet."""
        return self._dict(self.call("best", {"study": study}))

    def front(self, study: str) -> list[dict[str, Any]]:
        """The Pareto front of a multi-objective study, best spread first: each trial as
        :meth:`best` gives it, with ``values`` (each metric's); a single objective's best,
        alone. NotFound if no result yet."""
        result = self.call("best", {"study": study, "front": True})
        if isinstance(result, dict):
            # A daemon from before several objectives ignores "front": its one best trial.
            return [result]
        return self._list(result)

    def stop(self, study: str) -> dict[str, Any]:
        """Stop a study (its owner or root only): ``{"study", "state"}``."""
        return self._dict(self.call("stop", {"study": study}))

    def wait(self, study: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the study is final (or ``timeout`` seconds pass); its summary.

        Runs on a connection of its own with no socket timeout (or the daemon-side timeout plus
        a margin), so a long study does not trip the client's per-call timeout.
        """
        params: dict[str, Any] = {"study": study}
        if timeout is not None:
            params["timeout"] = timeout
        sock_timeout = None if timeout is None else timeout + 10.0
        with self._connect(sock_timeout) as conn:
            return self._dict(conn.call("wait", params))

    def logs(self, study: str, trial: int, stream: str = "stderr", tail: int = 50) -> str:
        """The last ``tail`` lines of a trial's ``stdout`` or ``stderr`` log."""
        params = {"study": study, "trial": trial, "stream": stream, "tail": tail}
        result = self._dict(self.call("logs", params))
        return str(result.get("text", ""))

    def report(self, study: str) -> dict[str, Any]:
        """The study's objective report (method ``report``; newer daemons only)."""
        return self._dict(self.call("report", {"study": study}))

    def set(self, study: str, **changes: Any) -> dict[str, Any]:
        """Change a running study (its owner, root or an admin; method ``set``): any of
        ``optimization_time``, ``compute_time``, ``report_period`` (seconds, a duration string
        such as "30m", or a ``datetime.timedelta``), ``deadline`` (a ``datetime``, an ISO 8601
        string or epoch seconds), ``max_trials``, ``max_concurrent``, ``priority``; None takes
        a limit away. In force at once and kept across restarts. ``{"study", "limits",
        "report_period", "priority", "changes"}``, ``changes`` being every change so far."""
        return self._dict(
            self.call(
                "set", {"study": study, "changes": {k: _wire_change(v) for k, v in changes.items()}}
            )
        )

    def top(
        self,
        study: str,
        k: int | None = None,
        *,
        only_completed: bool = False,
        all_metrics: bool = False,
    ) -> list[dict[str, Any]]:
        """The best ``k`` trials (default: the spec's ``[report] top_k``), best first:
        ``{"rank", "trial", "objective", "resource", "state", "config", "runs"}``, and with
        ``all_metrics`` every metric of each one's last report as ``metrics``.
        ``only_completed``: trials that ran to the end only."""
        params: dict[str, Any] = {
            "study": study,
            "only_completed": only_completed,
            "all_metrics": all_metrics,
        }
        if k is not None:
            params["k"] = k
        return self._list(self.call("top", params))

    def trial(self, study: str, trial: int, *, curve: bool = False) -> dict[str, Any]:
        """One trial as :meth:`trials` lists it, plus ``reports`` (how many) and ``metrics``:
        for each metric it reported ``{"last", "min", "max", "count"}``, and with ``curve``
        every value in order as ``[resource, value]`` pairs."""
        return self._dict(self.call("trial", {"study": study, "trial": trial, "curve": curve}))

    def gpus(self) -> Any:
        """The daemon's GPUs and who holds them (method ``gpus``; newer daemons only)."""
        return self.call("gpus")

    def events(
        self,
        study: str | None = None,
        after: int = 0,
        *,
        follow: bool = True,
        timeout: float | None = None,
        reconnect: float = EVENTS_RECONNECT_S,
    ) -> EventStream:
        """The event stream (method ``events``): an iterator of event dicts ``{"id", "study",
        "trial", "at", "kind", "data"}``, oldest first, from the first past ``after`` (0: from
        the start; an ``id`` seen: the ones after it).

        ``follow``: wait for new events (a long poll on a connection of its own); False: stop at
        the last one stored now. ``timeout``: stop once no event came for that many seconds
        (None: never). A stream of one ``study`` stops after its ``study_ended``. Across a lost
        connection or a daemon restart it connects again (for up to ``reconnect`` seconds in a
        row, else DaemonUnavailable) and goes on after the last event it yielded: none missed,
        none twice. ``close()`` (from any thread) ends it."""
        return EventStream(
            self.socket_path,
            study,
            after,
            follow=follow,
            timeout=timeout,
            reconnect=reconnect,
        )

    def decisions(self, study: str, after: int = 0) -> list[dict[str, Any]]:
        """A study's decision records past ``after`` (method ``decisions``): one per scheduling
        decision, ``{"id", "study", "trial", "at", "kind", "level", "data"}``, oldest first."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._dict(self.call("decisions", {"study": study, "after": after}))
            rows = page.get("decisions")
            if not isinstance(rows, list):
                raise ProtocolError("the daemon's decisions answer has no list of decisions")
            if not rows:
                return out
            out.extend(rows)
            after = int(page["cursor"])

    def curves(
        self, study: str, trial: int | None = None, *, after: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of a study's learning curves (method ``curves``; one ``trial``'s if given):
        ``{"metric", "mode", "resource", "points", "next"}``, each point ``{"id", "trial",
        "run", "resource", "at", "value", "metrics"}`` (``value``: the objective metric's),
        oldest first, from the first report past the cursor ``after``; ``next`` is the cursor
        of the next page, or None at the last one. :meth:`curve_points` reads every page."""
        params: dict[str, Any] = {"study": study, "after": after}
        if trial is not None:
            params["trial"] = trial
        if limit is not None:
            params["limit"] = limit
        return self._dict(self.call("curves", params))

    def curve_points(self, study: str, trial: int | None = None) -> list[dict[str, Any]]:
        """Every point of a study's learning curves (or one trial's), page by page."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.curves(study, trial, after=after)
            points = page.get("points")
            if not isinstance(points, list):
                raise ProtocolError("the daemon's curves answer has no list of points")
            out.extend(points)
            nxt = page.get("next")
            if nxt is None:
                return out
            after = int(nxt)

    def ask(self, study: str) -> dict[str, Any] | None:
        """Hand out the next trial of an external study (``[executor] type = "external"``) to
        run here, or None when none may run now (max_concurrent trials out, a time limit near,
        a rung to wait for, the study over). Its owner, root or an admin only.

        ``{"study", "trial", "config", "token", "env", "resume_from", "max_resource",
        "lease"}``: run the trial with ``env`` (the ``HPOD_*`` variables) added to its
        environment and it reports with :mod:`hpod.trial`, or :meth:`tell` with its token.
        Not sent twice: an answer lost would hand out a second trial (the first one's lease
        runs out and it is handed out again)."""
        result = self.call("ask", {"study": study}, retry=False)
        return None if result is None else self._dict(result)

    def tell(
        self,
        study: str,
        trial: int,
        token: str,
        metrics: Mapping[str, Any] | None = None,
        *,
        final: bool = False,
    ) -> dict[str, Any]:
        """Tell a handed-out trial's result: ``metrics`` is a report (answered like one:
        ``{"decision": "CONTINUE" | "PAUSE" | "STOP"}``), ``final=True`` ends its run as an
        exit 0 ends a local trial's (with ``metrics``: one last report first; without the
        resource key it stands at the ``max_resource`` the trial was handed out for), answered
        once the end is recorded: ``{"decision": the last report's answer or None, "final":
        True}``."""
        params: dict[str, Any] = {"study": study, "trial": trial, "token": token, "final": final}
        if metrics:
            params.update(metrics=dict(metrics), sender=self._tell_sender, seq=next(self._tell_seq))
        # A final tell is not sent twice: its run is gone after the first (TOKEN_REJECTED).
        return self._dict(self.call("tell", params, retry=not final))

    # -- plumbing --------------------------------------------------------------------------

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, retry: bool = True
    ) -> Any:
        """Call any wire method; reconnects once if the daemon restarted since the last call.

        With ``retry=False`` (for calls that must not run twice) the call is sent again only if
        it provably never left: the old socket refused the write.
        """
        with self._lock:
            if self._conn is not None:
                try:
                    return self._invoke(method, params)
                except _ConnectionLost as lost:
                    if lost.delivered and not retry:
                        raise DaemonUnavailable(str(lost)) from lost.__cause__
            try:
                return self._invoke(method, params)
            except _ConnectionLost as lost:
                raise DaemonUnavailable(str(lost)) from lost.__cause__

    def _invoke(self, method: str, params: Mapping[str, Any] | None) -> Any:
        if self._conn is None:
            self._conn = self._connect(self.timeout)
        try:
            return self._conn.call(method, params)
        except TimeoutError:
            # Not retried: the daemon is alive but slow, and may still act on the call.
            self._close_locked()
            raise DaemonUnavailable(
                f"the daemon on {self.socket_path} did not answer {method} within {self.timeout}s"
            ) from None
        except (DaemonUnavailable, ConnectionError) as exc:
            self._close_locked()
            raise _ConnectionLost(
                f"lost the connection to the daemon on {self.socket_path}: {exc}",
                delivered=not isinstance(exc, BrokenPipeError),
            ) from exc

    def _connect(self, timeout: float | None) -> SyncConnection:
        try:
            return SyncConnection(self.socket_path, client=_CLIENT, timeout=timeout)
        except PermissionError:
            raise PermissionDenied(
                f"not allowed to connect to {self.socket_path}: the system daemon's socket is "
                "open to the members of its group (ask an admin to add you)"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(
                f"the daemon on {self.socket_path} did not answer hello within {timeout}s"
            ) from None
        except OSError as exc:
            raise DaemonUnavailable(f"{no_daemon_message(self.socket_path)} ({exc})") from exc

    def _close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @staticmethod
    def _dict(result: Any) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise ProtocolError(f"the daemon sent {type(result).__name__}, expected an object")
        return result

    @staticmethod
    def _list(result: Any) -> list[dict[str, Any]]:
        if not isinstance(result, list):
            raise ProtocolError(f"the daemon sent {type(result).__name__}, expected a list")
        return result

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.socket_path!r})"


def _pass_env(text: str) -> list[str]:
    """The names a spec's ``pass_env`` lists, read as well as a spec the daemon may yet refuse
    can be: what is not a list of strings is left to the daemon's check to name."""
    try:
        value = tomllib.loads(text).get("pass_env")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return []
    if not isinstance(value, list):
        return []
    return [name for name in value if isinstance(name, str)]


class EventStream:
    """What :meth:`Client.events` returns: an iterator of events that survives restarts.

    ``cursor`` is the id of the last event it yielded (the ``after`` to resume from elsewhere).
    """

    def __init__(
        self,
        socket_path: str,
        study: str | None,
        after: int,
        *,
        follow: bool,
        timeout: float | None,
        reconnect: float,
    ) -> None:
        self.socket_path = socket_path
        self.study = study
        self.cursor = after
        self.follow = follow
        self.timeout = timeout
        self.reconnect = reconnect
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._conn: SyncConnection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._busy = False  # a call is in flight (close() then only shuts the socket down)
        self._ended = False
        self._last_event = time.monotonic()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._buffer:
            if self._closed or self._ended:
                self._drop()
                raise StopIteration
            if not self._fetch():
                self._drop()
                raise StopIteration
        event = self._buffer.popleft()
        self.cursor = int(event["id"])
        self._last_event = time.monotonic()
        if self.study is not None and event.get("kind") == "study_ended":
            self._ended = True  # nothing comes after a study's end
        return event

    def _fetch(self) -> bool:
        """Fill the buffer from the daemon; False once the stream is over."""
        failing_since: float | None = None
        tries = 0
        while not self._closed:
            wait = 0.0
            if self.follow:
                wait = EVENTS_POLL_S
                if self.timeout is not None:
                    wait = self.timeout - (time.monotonic() - self._last_event)
                    if wait <= 0:
                        return False
                    wait = min(wait, EVENTS_POLL_S)
            params: dict[str, Any] = {"after": self.cursor, "timeout": wait, "limit": EVENTS_PAGE}
            if self.study is not None:
                params["study"] = self.study
            try:
                page = self._call(params, wait)
            except (DaemonUnavailable, OSError) as exc:
                self._drop()
                if self._closed:
                    return False
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.reconnect:
                    raise DaemonUnavailable(
                        f"the event stream lost the daemon on {self.socket_path} for "
                        f"{self.reconnect:g}s ({exc}); resume with after={self.cursor}"
                    ) from exc
                time.sleep(_RECONNECT_BACKOFF_S[min(tries, len(_RECONNECT_BACKOFF_S) - 1)])
                tries += 1
                continue
            rows = page.get("events")
            if not isinstance(rows, list):
                raise ProtocolError("the daemon's events answer has no list of events")
            if rows:
                self._buffer.extend(rows)
                return True
            if not self.follow:
                return False
        return False

    def _call(self, params: dict[str, Any], wait: float) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise DaemonUnavailable("the event stream is closed")
            conn = self._conn
        if conn is None:
            try:
                conn = SyncConnection(self.socket_path, client=_CLIENT, timeout=wait + 10.0)
            except PermissionError:
                raise PermissionDenied(
                    f"not allowed to connect to {self.socket_path}: the system daemon's socket "
                    "is open to the members of its group (ask an admin to add you)"
                ) from None
            with self._lock:
                if self._closed:
                    conn.close()
                    raise DaemonUnavailable("the event stream is closed")
                self._conn = conn
        with self._lock:
            self._busy = True
        try:
            result = conn.call("events", params)
        except (TimeoutError, ConnectionError) as exc:
            raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from exc
        finally:
            with self._lock:
                self._busy = False
        if not isinstance(result, dict):
            raise ProtocolError(f"the daemon sent {type(result).__name__}, expected an object")
        return result

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """End the stream, also from another thread while it waits."""
        with self._lock:
            self._closed = True
            conn, busy = self._conn, self._busy
        if conn is not None:
            conn.shutdown()
            if not busy:  # else the call in flight sees the end, and the stream drops it
                self._drop()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._drop()


class _ConnectionLost(Exception):
    """The connection died under a call; ``delivered`` is False only if the request never left."""

    def __init__(self, message: str, *, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered


def _wire_change(value: Any) -> Any:
    """A `set` value as the wire carries it: a timedelta as seconds, a datetime as epoch seconds
    (one without a zone is this machine's local time)."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return value
