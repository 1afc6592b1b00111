"""The trial-side reporter: what a training script imports to talk to hpod.

Stdlib only and synchronous, so it fits any training loop and imports in milliseconds (it pulls in
``hpod.wire``, ``hpod.errors`` and ``hpod.core.states``, which are stdlib-only too)::

    from hpod import trial

    cfg = trial.config()
    for epoch in range(trial.resume_from() + 1, trial.max_resource() + 1):
        acc = train_one_epoch(cfg)
        decision = trial.report(epoch=epoch, val_acc=acc)
        if decision is not trial.CONTINUE:
            save_checkpoint(trial.checkpoint_dir())
            break

Everything is read from the environment the daemon gives the trial (``HPOD_SOCKET``,
``HPOD_STUDY``, ``HPOD_TRIAL``, ``HPOD_TOKEN``, ``HPOD_CONFIG``, ``HPOD_CHECKPOINT_DIR``,
``HPOD_RESUME_FROM``, ``HPOD_MAX_RESOURCE``, ``HPOD_RECONNECT_TIMEOUT``) at call time, never at
import time. Outside hpod (no ``HPOD_SOCKET``) the same script still runs: :func:`config` returns
the defaults, :func:`report` returns ``CONTINUE`` and says once on stderr that nothing is
reported.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hpod.core.states import Decision
from hpod.errors import DaemonUnavailable, HpodError, InvalidParams, MethodNotFound, TokenRejected
from hpod.subsets import subset
from hpod.wire import SyncConnection

__all__ = [
    "CONTINUE",
    "PAUSE",
    "STOP",
    "Decision",
    "checkpoint_dir",
    "close",
    "config",
    "inside_hpod",
    "is_oom_error",
    "max_resource",
    "oom_guard",
    "report",
    "report_oom",
    "resume_from",
    "study_id",
    "subset",
    "trial_dir",
    "trial_id",
]

CONTINUE = Decision.CONTINUE
PAUSE = Decision.PAUSE
STOP = Decision.STOP

# Generous: a report is answered only once it is durable in the store, and a trial that gives up
# too early would lose an acknowledged-later report; a dead daemon shows up as EOF long before.
_TIMEOUT = 120.0
_CLIENT = "hpod.trial"
# How long a report waits for a daemon that went away (killed, restarting) before it gives up:
# the daemon sets HPOD_RECONNECT_TIMEOUT from the study spec's reconnect_timeout.
RECONNECT_TIMEOUT_ENV = "HPOD_RECONNECT_TIMEOUT"
DEFAULT_RECONNECT_TIMEOUT = 120.0
# The pause between reconnects: short at first (a restart takes a second or two), then no more
# than a connect a second, so a long outage costs the daemon's accept loop nothing.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0

_lock = threading.Lock()
# The connection is keyed by (pid, socket path): a forked child (a DataLoader worker) must not
# share the parent's socket, and a changed HPOD_SOCKET means another daemon.
_conn: SyncConnection | None = None
_conn_key: tuple[int, str] | None = None
_warned_outside = False
# Who reports (one id per reporting process, made on its first report) and the number of its
# last report: a report re-sent after a lost answer carries the same pair, so a daemon that
# committed it before the answer was lost answers it again and counts it once. Keyed by pid
# like the connection: a forked child is a sender of its own, numbered from 1.
_sender: str | None = None
_sender_pid = 0
_seq = 0


def inside_hpod() -> bool:
    """Whether this process runs as an hpod trial (the daemon set ``HPOD_SOCKET``)."""
    return bool(os.environ.get("HPOD_SOCKET"))


def trial_id() -> int | None:
    """This trial's number within its study (``HPOD_TRIAL``); None outside hpod."""
    raw = os.environ.get("HPOD_TRIAL")
    return _int_env("HPOD_TRIAL", raw) if raw else None


def study_id() -> str | None:
    """This trial's study id (``HPOD_STUDY``); None outside hpod."""
    return os.environ.get("HPOD_STUDY") or None


def config(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trial's configuration (``HPOD_CONFIG``) laid over ``defaults``.

    Outside hpod this is a copy of ``defaults`` (or ``{}``), so a script runs by hand unchanged.
    """
    merged: dict[str, Any] = dict(defaults or {})
    raw = os.environ.get("HPOD_CONFIG")
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidParams(
                f"HPOD_CONFIG is not JSON: {exc.msg} at column {exc.colno}"
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidParams("HPOD_CONFIG must be a JSON object of parameter values")
        merged.update(parsed)
    return merged


def checkpoint_dir() -> Path:
    """Where to save and find the checkpoint (``HPOD_CHECKPOINT_DIR``), created if missing.

    It is kept across pause and resume. Outside hpod it is ``./checkpoint``.
    """
    raw = os.environ.get("HPOD_CHECKPOINT_DIR")
    path = Path(raw) if raw else Path.cwd() / "checkpoint"
    path.mkdir(parents=True, exist_ok=True)
    return path


def trial_dir() -> Path:
    """The trial's own folder: ``HPOD_TRIAL_DIR``, else the checkpoint folder's parent.

    The daemon keeps a trial's checkpoint at ``<trial_dir>/checkpoint``, so the parent is right
    even under a daemon that does not set ``HPOD_TRIAL_DIR``. Outside hpod: the working folder.
    """
    raw = os.environ.get("HPOD_TRIAL_DIR")
    if raw:
        return Path(raw)
    ckpt = os.environ.get("HPOD_CHECKPOINT_DIR")
    return Path(ckpt).parent if ckpt else Path.cwd()


def resume_from() -> int:
    """The resource level already done (``HPOD_RESUME_FROM``): 0 for a fresh start or outside."""
    raw = os.environ.get("HPOD_RESUME_FROM")
    return _int_env("HPOD_RESUME_FROM", raw) if raw else 0


def max_resource(default: int | None = None) -> int:
    """The level at which this run is paused or finished (``HPOD_MAX_RESOURCE``).

    Outside hpod it is ``default``; with no default there is nothing sensible to return, so it
    raises rather than let a loop run zero or forever.
    """
    raw = os.environ.get("HPOD_MAX_RESOURCE")
    if raw:
        return _int_env("HPOD_MAX_RESOURCE", raw)
    if default is None:
        raise InvalidParams(
            "HPOD_MAX_RESOURCE is not set (not running inside hpod): "
            "call trial.max_resource(default=N) to run by hand"
        )
    return default


def report(**metrics: Any) -> Decision:
    """Report metrics for this trial and get the daemon's decision.

    Values are numbers (bool, int, float; numpy scalars and 0-d tensors are converted; NaN and
    infinities are fine and rank as the worst). Returns :data:`CONTINUE`, :data:`PAUSE` or
    :data:`STOP` (members of :class:`Decision`, so compare with ``is``). Raises
    :class:`~hpod.errors.TokenRejected` if the daemon refuses this trial's ``HPOD_TOKEN``.

    A daemon that goes away (killed, restarting) is waited for: the report is sent again, the
    same (its sender and sequence number tell the daemon it is not a new one), until
    ``HPOD_RECONNECT_TIMEOUT`` seconds have passed (the spec's ``reconnect_timeout``; default
    120; 0 waits for nothing: one reconnect), and then it raises
    :class:`~hpod.errors.DaemonUnavailable`. Thread-safe; one connection per process, opened
    on the first report.
    """
    if not metrics:
        raise ValueError("report() needs at least one metric, e.g. report(epoch=1, val_acc=0.9)")
    values = {key: _metric_value(key, value) for key, value in metrics.items()}
    if not inside_hpod():
        _warn_outside()
        return CONTINUE
    result = _call("trial.report", {**_identity(), "metrics": values}, sequenced=True)
    if not isinstance(result, Mapping) or "decision" not in result:
        raise HpodError(f"the daemon answered trial.report without a decision: {result!r}")
    return Decision(result["decision"])


def report_oom() -> bool:
    """Tell the daemon this trial ran out of GPU memory (method ``trial.oom``), before exiting.

    The study's OOM policy then retries the trial instead of counting a plain failure. Returns
    True if the daemon took note, False outside hpod or when the daemon predates ``trial.oom``
    (it then still recognises the OOM from the trial's stderr), so calling this in an ``except``
    block never hides the original error behind a new one.
    """
    if not inside_hpod():
        _warn_outside()
        return False
    try:
        _call("trial.oom", _identity())
    except MethodNotFound:
        return False
    return True


# The out-of-memory errors of the frameworks, by class name (none of them is imported here):
# torch.OutOfMemoryError and torch.cuda.OutOfMemoryError, Python's MemoryError, TensorFlow's
# ResourceExhaustedError, JAX's XlaRuntimeError when it says RESOURCE_EXHAUSTED.
_OOM_CLASSES = frozenset({"OutOfMemoryError", "MemoryError", "ResourceExhaustedError"})
_OOM_WORDS = ("CUDA out of memory", "CUDA error: out of memory", "RESOURCE_EXHAUSTED")


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a framework's out-of-memory error (by its class, or for an older
    torch's RuntimeError and XLA's errors by what it says)."""
    if any(cls.__name__ in _OOM_CLASSES for cls in type(exc).__mro__):
        return True
    text = str(exc)
    return any(word in text for word in _OOM_WORDS)


@contextlib.contextmanager
def oom_guard() -> Iterator[None]:
    """Around the training: an out-of-memory error raised inside (``torch.cuda.OutOfMemoryError``,
    ``MemoryError``, ... see :func:`is_oom_error`) is reported with :func:`report_oom` and raised
    on, so the trial exits with it and the study's ``[oom]`` policy retries it with a halved
    batch (docs/oom.md). Any other error passes through untouched::

        with hpod.trial.oom_guard():
            train(config["batch_size"])
    """
    try:
        yield
    except BaseException as exc:
        if is_oom_error(exc):
            with contextlib.suppress(Exception):  # never hide the OOM behind a report's error
                report_oom()
        raise


def close() -> None:
    """Close the connection to the daemon (optional: process exit closes it too)."""
    with _lock:
        _drop()


def _identity() -> dict[str, Any]:
    study = os.environ.get("HPOD_STUDY")
    trial = os.environ.get("HPOD_TRIAL")
    token = os.environ.get("HPOD_TOKEN")
    missing = [
        name
        for name, value in (("HPOD_STUDY", study), ("HPOD_TRIAL", trial), ("HPOD_TOKEN", token))
        if not value
    ]
    if missing:
        raise InvalidParams(
            f"HPOD_SOCKET is set but {', '.join(missing)} is not: "
            "report only from a trial that hpod started"
        )
    return {"study": study, "trial": _int_env("HPOD_TRIAL", trial), "token": token}


def _call(method: str, params: dict[str, Any], *, sequenced: bool = False) -> Any:
    """Call ``method``; a ``sequenced`` call (a report) is stamped and waits for the daemon."""
    global _conn, _conn_key
    path = os.environ["HPOD_SOCKET"]
    pid = os.getpid()
    key = (pid, path)
    with _lock:
        if sequenced:
            # Stamped under the lock, so that a process's reports leave in their seq order.
            params["sender"], params["seq"] = _stamp(pid)
        if _conn is not None and _conn_key != key:
            # A forked child (closing its copy leaves the parent's socket open) or another
            # daemon: either way this process needs a connection of its own.
            _conn.close()
            _conn, _conn_key = None, None
        if _conn is not None:
            try:
                return _call_locked(method, params, path, key, sequenced)
            except _ConnectionLost:
                # The daemon restarted (or dropped us) since the last report: this report was
                # not acknowledged, so sending it once more on a fresh connection is safe (a
                # report: its seq tells the daemon whether it took it already).
                pass
        try:
            return _call_locked(method, params, path, key, sequenced)
        except _ConnectionLost as exc:
            if not sequenced:
                raise DaemonUnavailable(exc.args[0]) from exc.__cause__
            return _wait_for_daemon(method, params, path, key, exc)


def _stamp(pid: int) -> tuple[str, int]:
    global _sender, _sender_pid, _seq
    if _sender is None or _sender_pid != pid:
        _sender, _sender_pid, _seq = f"{pid}-{os.urandom(4).hex()}", pid, 0
    _seq += 1
    return _sender, _seq


def _wait_for_daemon(
    method: str,
    params: dict[str, Any],
    path: str,
    key: tuple[int, str],
    lost: _ConnectionLost,
) -> Any:
    """Send ``params`` again, the same, until the daemon answers or the reconnect timeout ends.

    The daemon is restarting (its socket gone, refused, or answering no more): a daemon that
    adopts this run answers the re-sent report, and one that took it before the answer was lost
    answers it again without counting it twice. One that does not know this run any more
    refuses its token, and that is raised at once: the trial must stop, not train on.
    """
    budget = _reconnect_timeout()
    started = time.monotonic()
    deadline = started + budget
    delay = _BACKOFF_FIRST
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, _BACKOFF_MAX)
        try:
            return _call_locked(method, params, path, key, True)
        except _ConnectionLost as exc:
            lost = exc
    waited = time.monotonic() - started
    raise DaemonUnavailable(
        f"{lost.args[0]} (this report waited {waited:.3g}s for the daemon to come back, "
        f"HPOD_RECONNECT_TIMEOUT={budget:g}s; the study spec's reconnect_timeout sets it)"
    ) from lost.__cause__


def _reconnect_timeout() -> float:
    raw = os.environ.get(RECONNECT_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_RECONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InvalidParams(
            f"{RECONNECT_TIMEOUT_ENV} must be a number of seconds (0 or more), not {raw!r}; "
            "the daemon sets it from the study spec's reconnect_timeout"
        )
    return value


class _ConnectionLost(Exception):
    """The connection died before an answer came: worth a reconnect."""


def _call_locked(
    method: str, params: dict[str, Any], path: str, key: tuple[int, str], sequenced: bool
) -> Any:
    global _conn, _conn_key
    try:
        if _conn is None:
            _conn = SyncConnection(
                path, client=_CLIENT, timeout=_TIMEOUT, cafile=os.environ.get("HPOD_TLS_CA")
            )
            _conn_key = key
        return _conn.call(method, params)
    except TokenRejected as exc:
        raise TokenRejected(
            f"the daemon refused this trial's report: its HPOD_TOKEN does not match the token "
            f"of trial {params.get('trial')} in study {params.get('study')} "
            f"(was the trial started by hand with a stale environment?): {exc.message}",
            data=exc.data,
        ) from None
    except TimeoutError as exc:
        _drop()
        message = f"the daemon on {path} did not answer {method} within {_TIMEOUT:g}s"
        if sequenced:
            # Sent again with the same seq: a daemon that still made it durable answers the
            # re-send without counting it twice.
            raise _ConnectionLost(message) from exc
        # Not retried: the daemon may still act on it, and a resend would do it twice.
        raise DaemonUnavailable(message) from None
    except (DaemonUnavailable, OSError) as exc:
        _drop()
        raise _ConnectionLost(str(exc)) from exc


def _drop() -> None:
    global _conn, _conn_key
    if _conn is not None:
        _conn.close()
    _conn, _conn_key = None, None


def _metric_value(key: str, value: Any) -> bool | int | float:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    # numpy integers have __index__; numpy floats and 0-d tensors have __float__.
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {key!r} must be a number (bool, int or float), not {type(value).__name__}"
        ) from None


def _int_env(name: str, raw: str | None) -> int:
    text = (raw or "").strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # "3.0" is still a whole epoch; "2.5" would silently become 2 with int(), so it is refused.
    if value.is_integer():
        return int(value)
    raise InvalidParams(f"{name} must be an integer, not {raw!r}")


def _warn_outside() -> None:
    # A line on stderr, not warnings.warn: training scripts (and our tests) often turn warnings
    # into errors, and running a trial script by hand is normal, not a mistake.
    global _warned_outside
    if not _warned_outside:
        _warned_outside = True
        print(
            "hpod.trial: not running inside hpod (HPOD_SOCKET is unset): reports go nowhere "
            "and every decision is CONTINUE",
            file=sys.stderr,
        )
