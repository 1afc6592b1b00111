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
``HPOD_RESUME_FROM``, ``HPOD_MAX_RESOURCE``) at call time, never at import time. Outside hpod (no
``HPOD_SOCKET``) the same script still runs: :func:`config` returns the defaults, :func:`report`
returns ``CONTINUE`` and says once on stderr that nothing is reported.
"""

from __future__ import annotations

import json
import math
import operator
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpod.core.states import Decision
from hpod.errors import DaemonUnavailable, HpodError, InvalidParams, MethodNotFound, TokenRejected
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
    "max_resource",
    "report",
    "report_oom",
    "resume_from",
    "study_id",
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

_lock = threading.Lock()
# The connection is keyed by (pid, socket path): a forked child (a DataLoader worker) must not
# share the parent's socket, and a changed HPOD_SOCKET means another daemon.
_conn: SyncConnection | None = None
_conn_key: tuple[int, str] | None = None
_warned_outside = False


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
    :class:`~hpod.errors.TokenRejected` if the daemon refuses this trial's ``HPOD_TOKEN`` and
    :class:`~hpod.errors.DaemonUnavailable` if it cannot be reached even after one reconnect.
    Thread-safe; one connection per process, opened on the first report.
    """
    if not metrics:
        raise ValueError("report() needs at least one metric, e.g. report(epoch=1, val_acc=0.9)")
    values = {key: _metric_value(key, value) for key, value in metrics.items()}
    if not inside_hpod():
        _warn_outside()
        return CONTINUE
    result = _call("trial.report", {**_identity(), "metrics": values})
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


def _call(method: str, params: dict[str, Any]) -> Any:
    global _conn, _conn_key
    path = os.environ["HPOD_SOCKET"]
    key = (os.getpid(), path)
    with _lock:
        if _conn is not None and _conn_key != key:
            # A forked child (closing its copy leaves the parent's socket open) or another
            # daemon: either way this process needs a connection of its own.
            _conn.close()
            _conn, _conn_key = None, None
        if _conn is not None:
            try:
                return _call_locked(method, params, path, key)
            except _ConnectionLost:
                # The daemon restarted (or dropped us) since the last report: this report was
                # not acknowledged, so sending it once more on a fresh connection is safe.
                pass
        try:
            return _call_locked(method, params, path, key)
        except _ConnectionLost as exc:
            raise DaemonUnavailable(exc.args[0]) from exc.__cause__


class _ConnectionLost(Exception):
    """The connection died before an answer came: worth one reconnect."""


def _call_locked(method: str, params: dict[str, Any], path: str, key: tuple[int, str]) -> Any:
    global _conn, _conn_key
    try:
        if _conn is None:
            _conn = SyncConnection(path, client=_CLIENT, timeout=_TIMEOUT)
            _conn_key = key
        return _conn.call(method, params)
    except TokenRejected as exc:
        raise TokenRejected(
            f"the daemon refused this trial's report: its HPOD_TOKEN does not match the token "
            f"of trial {params.get('trial')} in study {params.get('study')} "
            f"(was the trial started by hand with a stale environment?): {exc.message}",
            data=exc.data,
        ) from None
    except TimeoutError:
        # Not retried: the daemon may still make this report durable, and a resend would
        # count it twice.
        _drop()
        raise DaemonUnavailable(
            f"the daemon on {path} did not answer {method} within {_TIMEOUT:g}s"
        ) from None
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
