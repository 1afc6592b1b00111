"""``hpod.Optimizer``: a study controller with ClearML's verbs, built on :class:`hpod.Client` and
the daemon's event stream.

::

    from hpod import Optimizer

    opt = Optimizer(
        command=["python", "train.py", "--lr", "{lr}"],
        space={"lr": ("loguniform", 1e-4, 1e-1), "opt": ["sgd", "adam"]},
        metric="val_acc", mode="max", resource="epoch",
        scheduler={"type": "asha", "min_resource": 1, "max_resource": 27},
        max_trials=30, max_concurrent=2,
    )
    with opt:
        opt.start_locally(on_trial_end=lambda trial, value, it, config, best: print(trial, value))
        opt.wait()
        print(opt.top(3))

The optimizer holds one study. ``start`` submits it to a daemon (``$HPOD_SOCKET`` or the default
socket); ``start_locally`` first starts a daemon of its own (``python -m hpod serve`` on a socket
and state folder in a fresh temp folder), which goes when the optimizer is stopped, closed or
garbage-collected. The callback runs on a thread of the optimizer's own, fed by the ``events``
wire method, once per ended trial and in the order the trials ended. ClearML's names are
written beside each method (docs/python-api.md has the table).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpod.client import Client
from hpod.core.tomlout import to_toml
from hpod.errors import BadState, DaemonUnavailable, ShuttingDown

__all__ = ["CallbackError", "Optimizer", "TrialEndCallback", "to_toml"]

# ClearML's job_complete_callback: (job_id, objective_value, objective_iteration,
# job_parameters, top_performance_job_id).
TrialEndCallback = Callable[[int, float | None, float | None, dict[str, Any], int | None], object]

PARAM_TYPES = ("uniform", "quniform", "loguniform", "qloguniform", "choice")
_FINAL_STATES = frozenset({"completed", "stopped", "failed"})
# A time limit's end as the daemon words it (hpod.core.limits and the deadline of `set`).
_TIME_LIMIT_REASON = re.compile(r"(optimization_time|compute_time|deadline)\b")

# The event long-poll: how long one `events` call waits for an event. Short enough that a
# close() is seen soon; an event arriving during the wait is answered at once, whatever it is.
EVENT_POLL_S = 1.0
EVENT_BATCH = 500
# How long the event thread keeps trying a daemon that went away (a restart) before it gives up.
EVENT_RECONNECT_S = 120.0
READY_TIMEOUT_S = 60.0
LOCAL_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CallbackError:
    """An exception raised by the ``on_trial_end`` callback for one trial."""

    trial: int
    error: Exception
    traceback: str

    @classmethod
    def capture(cls, trial: int, error: Exception) -> CallbackError:
        return cls(trial, error, "".join(traceback.format_exception(error)))


class Optimizer:
    """One study, driven from Python (ClearML's ``HyperParameterOptimizer``).

    Made with keyword arguments (this constructor), :meth:`from_toml`, :meth:`from_file` or
    :meth:`attach`. Durations are seconds or strings (``"90s"``, ``"20m"``, ``"1h30m"``).
    ``space`` maps each parameter to OTX's form: ``{"param_type": "loguniform", "range": [a, b]}``,
    a tuple ``("loguniform", a, b)`` (the type, then the range), or a list (a ``choice``).
    ``scheduler`` and ``searcher`` are a type name or the whole table (``{"type": "asha",
    "max_resource": 27}``); ``min_resource``/``max_resource`` go into the scheduler's table.
    Left out (None), the spec's default: Hyperband with BO where ``max_resource`` is given, fifo
    with random search where it is not (docs/spec.md).
    """

    def __init__(
        self,
        command: str | Sequence[str],
        space: Mapping[str, Any],
        *,
        metric: str,
        mode: str = "min",
        resource: str = "epoch",
        name: str = "optimizer",
        scheduler: str | Mapping[str, Any] | None = None,
        searcher: str | Mapping[str, Any] | None = None,
        min_resource: float | None = None,
        max_resource: float | None = None,
        max_trials: int | None = None,
        max_concurrent: int | None = None,
        optimization_time: float | str | None = None,
        compute_time: float | str | None = None,
        trial_time: float | str | None = None,
        keep_checkpoints: int | None = None,
        report_period: float | str | None = None,
        gpus_per_trial: int = 0,
        workdir: str | os.PathLike[str] = ".",
        env: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        socket_path: str | None = None,
    ) -> None:
        spec = build_spec(
            command,
            space,
            metric=metric,
            mode=mode,
            resource=resource,
            name=name,
            scheduler=scheduler,
            searcher=searcher,
            min_resource=min_resource,
            max_resource=max_resource,
            max_trials=max_trials,
            max_concurrent=max_concurrent,
            optimization_time=optimization_time,
            compute_time=compute_time,
            trial_time=trial_time,
            keep_checkpoints=keep_checkpoints,
            report_period=report_period,
            gpus_per_trial=gpus_per_trial,
            env=env,
            extra=extra,
        )
        self._setup(to_toml(spec), Path(workdir).absolute(), socket_path, None)

    # -- the other constructors ------------------------------------------------------------

    @classmethod
    def from_toml(
        cls,
        text: str,
        base_dir: str | os.PathLike[str] = ".",
        *,
        socket_path: str | None = None,
    ) -> Optimizer:
        """A study spec given as TOML text (docs/spec.md); relative paths from ``base_dir``."""
        self = cls.__new__(cls)
        self._setup(text, Path(base_dir).absolute(), socket_path, None)
        return self

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, socket_path: str | None = None
    ) -> Optimizer:
        """A study spec file; its relative paths are taken from its folder."""
        p = Path(path).absolute()
        return cls.from_toml(p.read_text(encoding="utf-8"), p.parent, socket_path=socket_path)

    @classmethod
    def attach(cls, study_id: str, *, socket_path: str | None = None) -> Optimizer:
        """A study already submitted (by ``hpodctl submit``, another process): its optimizer can
        read it, change it, stop it and call a callback for its trials (from its first)."""
        self = cls.__new__(cls)
        self._setup(None, None, socket_path, study_id)
        self.client.study(study_id)  # NOT_FOUND now rather than at the first read
        return self

    def _setup(
        self,
        spec_text: str | None,
        base_dir: Path | None,
        socket_path: str | None,
        study_id: str | None,
    ) -> None:
        if spec_text is not None:
            # Checked here, as hpodctl submit does: a mistake is named before anything starts.
            from hpod.core.spec import StudySpec

            StudySpec.from_toml(spec_text, base_dir=base_dir or Path.cwd())
        self.spec_text = spec_text
        self.base_dir = base_dir
        self.study_id = study_id
        self._socket_path = socket_path
        self._objective_metric: str | None = None
        self._held = _Held()
        # Run when the optimizer is closed, or garbage-collected, or at interpreter exit; it
        # holds what the optimizer started, never the optimizer itself.
        self._finalizer = weakref.finalize(self, self._held.release)

    # -- starting --------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The :class:`hpod.Client` this optimizer calls (made on first use)."""
        held = self._held
        if held.client is None:
            if held.released:
                raise BadState("this optimizer is closed")
            held.client = Client(self._socket_path)
        return held.client

    @property
    def _pump(self) -> _EventPump | None:
        return self._held.pump

    @property
    def _local(self) -> _LocalDaemon | None:
        return self._held.local

    @property
    def socket_path(self) -> str:
        return self.client.socket_path

    @property
    def callback_errors(self) -> list[CallbackError]:
        """Every exception the callback raised, in order (each was also printed to stderr)."""
        return [] if self._pump is None else list(self._pump.errors)

    def start(self, on_trial_end: TrialEndCallback | None = None) -> str:
        """Submit the study (unless attached) and follow its events; the study id.

        ClearML: ``start(job_complete_callback=...)``. ``on_trial_end(trial, objective,
        iteration, config, best_trial)`` is called once per ended trial, in order, from the
        optimizer's own thread; an exception in it is printed to stderr and kept in
        :attr:`callback_errors`, and the next trials are still reported.
        """
        if self._pump is not None:
            raise BadState(f"study {self.study_id} is already started")
        if self.study_id is None:
            assert self.spec_text is not None
            assert self.base_dir is not None
            self.study_id = str(self.client.submit_text(self.spec_text, self.base_dir)["study"])
        pump = _EventPump(self.socket_path, self.study_id, on_trial_end)
        self._held.pump = pump
        pump.start()
        return self.study_id

    def start_locally(
        self, on_trial_end: TrialEndCallback | None = None, *, cpu_slots: int | None = None
    ) -> str:
        """Start a daemon of the optimizer's own, then :meth:`start` on it; the study id.

        The daemon (``python -m hpod serve --socket ... --state-dir ... --cpu-slots N``) runs
        as this user in a fresh temp folder, and it and the folder are gone once the optimizer
        is stopped, closed or garbage-collected. ``cpu_slots``: trials at once (default: the
        study's ``max_concurrent``, else the cores).
        """
        if self._local is not None or self._pump is not None:
            raise BadState("this optimizer is already started")
        if self.study_id is not None and self.spec_text is None:
            raise BadState("an attached study runs on its own daemon; use start()")
        local = _LocalDaemon.launch(cpu_slots or self._max_concurrent() or os.cpu_count())
        self._held.local = local
        self._socket_path = local.socket_path
        if self._held.client is not None:
            self._held.client.close()
            self._held.client = None
        return self.start(on_trial_end)

    def _max_concurrent(self) -> int | None:
        if self.spec_text is None:
            return None
        import tomllib

        value = tomllib.loads(self.spec_text).get("limits", {}).get("max_concurrent")
        return value if isinstance(value, int) else None

    # -- waiting and stopping --------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Until the study has ended and every callback for it has run (or ``timeout`` seconds);
        True if it ended. ClearML: ``wait(timeout=minutes)``."""
        study = self._study_id()
        pump = self._pump
        if pump is not None:
            # The event thread sees study_ended after every trial_ended before it, and rides
            # out a daemon restart, which a `wait` call would not.
            if not pump.done.wait(timeout):
                return False
            if pump.failure is None and not pump.closed:
                return True
            timeout = 0.0  # the thread gave up: ask the daemon once
        summary = self.client.wait(study, timeout=timeout)
        return summary.get("state") in _FINAL_STATES

    def stop(self, timeout: float | None = None) -> None:
        """Stop the study (if it still runs), wait up to ``timeout`` seconds for its callbacks,
        and release the optimizer's own daemon, if it has one. ClearML: ``stop(timeout)``."""
        if self.study_id is not None and not self._held.released:
            with contextlib.suppress(BadState):
                self.client.stop(self.study_id)
            if self._pump is not None:
                self._pump.done.wait(timeout)
        self.close()

    def close(self) -> None:
        """Stop following events and close the connection. The study is left as it is on a
        shared daemon; the optimizer's own daemon is stopped (SIGTERM) and its folder removed."""
        self._finalizer()

    def __enter__(self) -> Optimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------------

    def _study_id(self) -> str:
        if self.study_id is None:
            raise BadState("the study is not started yet: call start() or start_locally()")
        return self.study_id

    def summary(self) -> dict[str, Any]:
        """The study's detail (``hpodctl show --json``)."""
        return self.client.study(self._study_id())

    def elapsed(self) -> float:
        """Seconds of optimization time the study has used (the daemon's clock, kept across
        restarts); -1.0 before it is started. ClearML: ``elapsed()`` (in minutes there)."""
        if self.study_id is None:
            return -1.0
        return float(self.summary().get("elapsed", 0.0))

    def is_active(self) -> bool:
        """Whether the study is started and not over. ClearML: ``is_active()``."""
        if self.study_id is None:
            return False
        return self.client.study(self.study_id).get("state") not in _FINAL_STATES

    def is_running(self) -> bool:
        """ClearML's name for :meth:`is_active`."""
        return self.is_active()

    def reached_time_limit(self) -> bool:
        """Whether the study ended at a time limit (``optimization_time``, ``compute_time``, a
        deadline), or has passed one. ClearML: ``reached_time_limit()``."""
        if self.study_id is None:
            return False
        detail = self.summary()
        if detail.get("state") in _FINAL_STATES:
            return bool(_TIME_LIMIT_REASON.search(str(detail.get("end_reason") or "")))
        limit = _time_limit(detail)
        return limit is not None and limit <= time.time()

    def get_time_limit(self) -> datetime | None:
        """When the study's time is up (a local, timezone-aware datetime): the earlier of its
        deadline and the end of its ``optimization_time`` at the present rate; None if it has
        neither. ClearML: ``get_time_limit()``."""
        limit = _time_limit(self.summary())
        return None if limit is None else datetime.fromtimestamp(limit).astimezone()

    def set_time_limit(
        self,
        minutes: float | None = None,
        at: datetime | float | None = None,
        *,
        in_minutes: float | None = None,
        specific_time: datetime | float | None = None,
    ) -> None:
        """End the study ``minutes`` from now, or at ``at`` (a datetime, naive meaning local, or
        epoch seconds): a deadline, set on the running study (``hpodctl set STUDY deadline=``),
        shorter or longer than before. ClearML: ``set_time_limit(in_minutes=, specific_time=)``.
        """
        minutes = minutes if minutes is not None else in_minutes
        at = at if at is not None else specific_time
        if (minutes is None) == (at is None):
            raise ValueError("set_time_limit takes minutes= or at=, one of them")
        when: float
        if at is None:
            assert minutes is not None
            when = time.time() + float(minutes) * 60.0
        elif isinstance(at, datetime):
            when = at.timestamp()
        else:
            when = float(at)
        self._set(deadline=when)

    def set_report_period(self, minutes: float) -> None:
        """How often the study's report.json and report.csv are rewritten, in minutes.
        ClearML: ``set_report_period(report_period_minutes)``."""
        self._set(report_period=float(minutes) * 60.0)

    def set(self, **changes: Any) -> dict[str, Any]:
        """Change the running study (``hpodctl set``): optimization_time, compute_time,
        deadline, max_trials, max_concurrent, report_period, priority."""
        return self._set(**changes)

    def _set(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.set(self._study_id(), **changes)
        return result

    def top(
        self, k: int = 5, *, all_metrics: bool = False, only_completed: bool = False
    ) -> list[dict[str, Any]]:
        """The best ``k`` trials, best first, in ClearML's ``get_top_experiments_details`` shape:
        each row has ``task_id`` (the trial), ``hyper_parameters`` (its config) and ``metrics``
        (``{name: value}``: the objective's, or with ``all_metrics`` every key of the trial's last
        report), beside hpod's own (``rank``, ``trial``, ``objective``, ``resource``, ``state``,
        ``config``, ``runs``). ``only_completed``: trials that ran to the end only."""
        rows: list[dict[str, Any]] = self.client.top(
            self._study_id(), k=k, only_completed=only_completed, all_metrics=all_metrics
        )
        metric = self._metric()
        return [_clearml_row(row, metric) for row in rows]

    def _metric(self) -> str:
        if self._objective_metric is None:
            self._objective_metric = str(self.summary()["objective"]["metric"])
        return self._objective_metric

    def best(self) -> dict[str, Any]:
        """The best trial: ``{"study", "trial", "config", "objective", "last", "window",
        "resource"}`` (``objective``: the mean of its last ``window`` reports; docs/answer.md)."""
        return self.client.best(self._study_id())

    def front(self) -> list[dict[str, Any]]:
        """Several objectives: the Pareto front, each trial as :meth:`best` gives it with
        ``values`` (``{metric: value}``), by crowding distance (larger first), then trial id. A
        single objective: ``[best()]``."""
        return self.client.front(self._study_id())

    def active(self) -> list[dict[str, Any]]:
        """The trials running now. ClearML: ``get_active_experiments()``."""
        return [t for t in self.client.trials(self._study_id()) if t.get("state") == "running"]

    def trials(self) -> list[dict[str, Any]]:
        """Every trial of the study."""
        return self.client.trials(self._study_id())

    # -- ask/tell --------------------------------------------------------------------------

    def ask(self) -> dict[str, Any] | None:
        """A trial to run (a study with ``[executor] type = "external"``): ``{"trial", "config",
        "token", "env", "resume_from", "max_resource"}``, or None when none is to run now.
        Start it however you like with ``env``; it reports with ``hpod.trial``, or you
        :meth:`tell` its result. OTX's hpopt: ``get_next_sample()``."""
        result: dict[str, Any] | None = self.client.ask(self._study_id())
        return result

    def tell(
        self,
        trial: int | Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        final: bool = False,
    ) -> dict[str, Any]:
        """Tell a handed-out trial's metrics (a report, answered ``{"decision": ...}`` like
        one), or with ``final=True`` that it is over (as an exit 0 ends a local trial's run).
        ``trial`` is the dict :meth:`ask` gave (its token taken from it), or a trial id with
        ``token``. OTX's hpopt: ``report_score()``."""
        if isinstance(trial, Mapping):
            token = token or str(trial["token"])
            trial_id = int(trial["trial"])
        else:
            trial_id = int(trial)
        if token is None:
            raise ValueError("tell needs the trial's token: pass the dict ask() gave")
        result: dict[str, Any] = self.client.tell(
            self._study_id(), trial_id, token, metrics=dict(metrics or {}), final=final
        )
        return result

    def __repr__(self) -> str:
        where = "local" if self._local is not None else self._socket_path or "default socket"
        return f"Optimizer(study={self.study_id!r}, daemon={where!r})"


# -- the event thread ------------------------------------------------------------------------


class _EventPump:
    """Reads the study's events on a connection of its own and calls the callback for each
    ``trial_ended``, in order. Holds no reference to the optimizer (see ``_Held``)."""

    def __init__(self, socket_path: str, study: str, callback: TrialEndCallback | None) -> None:
        self.socket_path = socket_path
        self.study = study
        self.callback = callback
        self.client = Client(socket_path, timeout=EVENT_POLL_S + 30.0)
        self.cursor = 0
        self.configs: dict[int, dict[str, Any]] = {}
        self.best: int | None = None
        self.ended: list[int] = []
        self.errors: list[CallbackError] = []
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.study_ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"hpod-optimizer-{study}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Closed before it saw the study end."""
        return self._stop.is_set() and not self.study_ended

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.client.close()

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # said on stderr and kept, never lost
            self.failure = exc
            print(
                f"hpod.Optimizer: the event thread of study {self.study} stopped:",
                file=sys.stderr,
            )
            traceback.print_exception(exc, file=sys.stderr)
        finally:
            self.done.set()

    def _follow(self) -> None:
        lost_since: float | None = None
        while not self._stop.is_set():
            params = {
                "study": self.study,
                "after": self.cursor,
                "timeout": EVENT_POLL_S,
                "limit": EVENT_BATCH,
            }
            try:
                result = self.client.call("events", params)
            except (DaemonUnavailable, ShuttingDown):
                # A daemon restarting comes back on the same socket; the cursor resumes the
                # stream after the last event handled, so none is missed or repeated.
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > EVENT_RECONNECT_S:
                    raise
                self._stop.wait(0.05)
                continue
            lost_since = None
            for event in result.get("events", []):
                self.cursor = max(self.cursor, int(event["id"]))
                if self._handle(event):
                    return

    def _handle(self, event: Mapping[str, Any]) -> bool:
        """One event; True at the study's end."""
        kind = event.get("kind")
        data = event.get("data") or {}
        trial = event.get("trial")
        if kind == "trial_started" and trial is not None and isinstance(data.get("config"), dict):
            self.configs[int(trial)] = data["config"]
        elif kind == "new_best":
            best = data.get("trial", trial)
            self.best = None if best is None else int(best)
            if best is not None and isinstance(data.get("config"), dict):
                self.configs.setdefault(int(best), data["config"])
        elif kind == "trial_ended" and trial is not None:
            self._ended(int(trial), data)
        elif kind == "study_ended":
            self.study_ended = True
            return True
        return False

    def _ended(self, trial: int, data: Mapping[str, Any]) -> None:
        self.ended.append(trial)
        if self.callback is None:
            return
        objective = _number(data.get("objective"))
        iteration = _number(data.get("resource"))
        try:
            config = self._config(trial)
            self.callback(trial, objective, iteration, dict(config), self.best)
        except Exception as exc:  # reported and kept; the stream goes on
            failure = CallbackError.capture(trial, exc)
            self.errors.append(failure)
            print(
                f"hpod.Optimizer: on_trial_end raised for trial {trial} of study {self.study}:",
                file=sys.stderr,
            )
            sys.stderr.write(failure.traceback)
            sys.stderr.flush()

    def _config(self, trial: int) -> dict[str, Any]:
        config = self.configs.get(trial)
        if config is None:
            # Not in the stream (an event from before the optimizer followed it): one read.
            for row in self.client.trials(self.study):
                self.configs.setdefault(int(row["trial"]), row.get("config") or {})
            config = self.configs.get(trial, {})
        return config


# -- the embedded daemon ---------------------------------------------------------------------


class _LocalDaemon:
    """``python -m hpod serve`` on a socket and state folder in a temp folder of its own."""

    def __init__(self, root: str, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.proc = proc
        self.socket_path = os.path.join(root, "s")
        self._lock = threading.Lock()
        self.released = False

    @classmethod
    def launch(cls, cpu_slots: int | None) -> _LocalDaemon:
        root = tempfile.mkdtemp(prefix="hpod")
        try:
            return cls._launch_in(root, cpu_slots)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _launch_in(cls, root: str, cpu_slots: int | None) -> _LocalDaemon:
        notify_path = os.path.join(root, "n")
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            ready.bind(notify_path)
            ready.settimeout(0.2)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            env.pop("HPOD_SOCKET", None)
            command = [
                sys.executable,
                "-m",
                "hpod",
                "serve",
                "--socket",
                os.path.join(root, "s"),
                "--state-dir",
                os.path.join(root, "state"),
                "--log-format",
                "json",
            ]
            if cpu_slots:
                command += ["--cpu-slots", str(cpu_slots)]
            with open(os.path.join(root, "daemon.log"), "wb") as log:
                # A session of its own: a Ctrl-C in the user's terminal reaches the optimizer
                # (which stops the daemon), not the daemon behind its back.
                proc = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            daemon = cls(root, proc)
            try:
                daemon._wait_ready(ready)
            except BaseException:
                daemon.release()
                raise
            return daemon
        finally:
            ready.close()

    def _wait_ready(self, ready: socket.socket) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                message = ready.recv(4096).decode(errors="replace")
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise DaemonUnavailable(
                        f"the optimizer's daemon exited {self.proc.returncode} before it was "
                        f"ready:\n{self.log_tail()}"
                    ) from None
                continue
            if "READY=1" in message.split("\n"):
                return
        raise DaemonUnavailable(
            f"the optimizer's daemon was not ready within {READY_TIMEOUT_S:g}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.root, "daemon.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def release(self, timeout: float = LOCAL_STOP_TIMEOUT_S) -> None:
        """SIGTERM (the daemon stops its trials, grace period and all), SIGKILL past
        ``timeout``; then the folder goes."""
        with self._lock:
            if self.released:
                return
            self.released = True
            try:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


class _Held:
    """What an optimizer started: its connection, its event thread, its daemon."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.pump: _EventPump | None = None
        self.local: _LocalDaemon | None = None
        self.released = False

    def release(self) -> None:
        self.released = True
        if self.pump is not None:
            self.pump.close()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.local is not None:
            self.local.release()


# -- the spec from keyword arguments ---------------------------------------------------------


def build_spec(
    command: str | Sequence[str],
    space: Mapping[str, Any],
    *,
    metric: str,
    mode: str,
    resource: str,
    name: str,
    scheduler: str | Mapping[str, Any] | None,
    searcher: str | Mapping[str, Any] | None,
    min_resource: float | None,
    max_resource: float | None,
    max_trials: int | None,
    max_concurrent: int | None,
    optimization_time: float | str | None,
    compute_time: float | str | None,
    trial_time: float | str | None,
    keep_checkpoints: int | None,
    report_period: float | str | None,
    gpus_per_trial: int,
    env: Mapping[str, str] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The study spec (as the TOML file would hold it) that the keyword arguments describe."""
    # None: the spec's default (docs/spec.md: Hyperband with BO where max_resource is given).
    sched: dict[str, Any] = (
        {"type": scheduler} if isinstance(scheduler, str) else dict(scheduler or {})
    )
    for key, value in (("min_resource", min_resource), ("max_resource", max_resource)):
        if value is not None:
            sched[key] = value
    spec: dict[str, Any] = {
        "name": name,
        "command": command if isinstance(command, str) else list(command),
        "objective": {"metric": metric, "mode": mode, "resource": resource},
        "space": {key: _param(key, value) for key, value in space.items()},
        "scheduler": sched,
        "searcher": {"type": searcher} if isinstance(searcher, str) else dict(searcher or {}),
        "resources": {"gpus_per_trial": gpus_per_trial},
    }
    limits = {
        key: value
        for key, value in (
            ("max_trials", max_trials),
            ("max_concurrent", max_concurrent),
            ("optimization_time", optimization_time),
            ("compute_time", compute_time),
            ("trial_time", trial_time),
        )
        if value is not None
    }
    if limits:
        spec["limits"] = limits
    report = {
        key: value
        for key, value in (("keep_checkpoints", keep_checkpoints), ("period", report_period))
        if value is not None
    }
    if report:
        spec["report"] = report
    if env:
        spec["env"] = dict(env)
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def _param(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple) and value and value[0] in PARAM_TYPES:
        if value[0] == "choice":
            rng = list(value[1]) if len(value) == 2 and isinstance(value[1], list) else value[1:]
            return {"param_type": "choice", "range": list(rng)}
        return {"param_type": value[0], "range": list(value[1:])}
    if isinstance(value, list):
        return {"param_type": "choice", "range": value}
    raise ValueError(
        f"space.{name}: give {{'param_type': ..., 'range': [...]}}, a tuple (type, *range) with a "
        f"type of {', '.join(PARAM_TYPES)}, or a list of choices; got {value!r}"
    )


# -- helpers ---------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _time_limit(detail: Mapping[str, Any]) -> float | None:
    """Epoch seconds at which the study's time is up: its deadline, or now plus what is left of
    its optimization_time, whichever comes first."""
    candidates: list[float] = []
    deadline = detail.get("deadline")
    if isinstance(deadline, (int, float)):
        candidates.append(float(deadline))
    usage = (detail.get("limits_detail") or {}).get("optimization_time")
    if isinstance(usage, Mapping) and detail.get("state") not in _FINAL_STATES:
        candidates.append(time.time() + float(usage["limit"]) - float(usage["used"]))
    return min(candidates) if candidates else None


def _clearml_row(row: Mapping[str, Any], metric: str) -> dict[str, Any]:
    out = dict(row)
    out.setdefault("task_id", row.get("trial"))
    out.setdefault("hyper_parameters", row.get("config"))
    if not isinstance(row.get("metrics"), Mapping):
        # Several objectives: every metric ranked, as ClearML lists each objective's.
        values = row.get("values")
        out["metrics"] = (
            dict(values) if isinstance(values, Mapping) else {metric: row.get("objective")}
        )
    return out
