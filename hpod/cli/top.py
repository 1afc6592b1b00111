"""``hpodctl top``: a live terminal view of the daemon, driven by its event stream.

What it shows (docs/hpodctl.md): the studies (state, trials done of total, best, the share of
each limit used), the running trials (resource reached of the run's target, rate, objective,
device, config) and each GPU's holders and memory, or the CPU slots'. Everything fits 80 columns
(a narrower terminal cuts lines at its edge); ``q`` or Ctrl-C quits and gives the terminal back.

Two threads feed one :class:`TopState`; the screen is redrawn from it when it changes:

- the **events** thread follows ``Client.events`` from the stream's tail (found with a few
  one-event polls, :func:`tail_cursor`, so a daemon with a long history costs nothing to join).
  A ``trial_reported`` event moves its trial's resource, objective and rate at once; a
  ``new_best`` the study's best; the events that change which trials run (started, paused, ended,
  a study submitted or ended) ask the other thread for a fresh read at once.
- the **refresh** thread reads the snapshots: ``studies``, each running study's ``study`` (limit
  shares) and ``trials``, and ``gpus``; at once when asked, else every :data:`REFRESH_S` seconds
  (a time limit's share and a GPU's memory move without events, and a trial's reports within
  0.5 s of its last ``trial_reported`` have no event of their own).

The view itself (:meth:`TopState.lines`) is a pure function of the state, the width and the
clock, so it is tested without a terminal; curses draws it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpod import wire
from hpod.client import Client, EventStream
from hpod.core.durations import format_duration
from hpod.errors import HpodError

REFRESH_S = 2.0  # snapshots at least this often: limit shares and GPU memory move by themselves
MIN_REFRESH_S = 0.25  # and at most this often, however fast the events come
RETRY_S = 1.0  # after a failed read, before the next try
REPLAY_EVENTS = 500  # events from before the start read again, for the running trials' rates
WIDTH = 80

# Events after which a study's trials are read again: a trial started, stopped running, or the
# study itself began, ended or changed.
_RELOAD_KINDS = frozenset(
    {
        "study_submitted",
        "trial_started",
        "trial_resumed",
        "trial_paused",
        "trial_interrupted",
        "trial_ended",
        "limit_reached",
        "study_ended",
        "study_changed",
    }
)
_LIMIT_NAMES = {"optimization_time": "time", "compute_time": "compute", "max_trials": "trials"}


@dataclass(frozen=True)
class Pace:
    """The first and the last report seen of a trial's run, ``(at, resource)``: its rate."""

    first: tuple[float, float]
    last: tuple[float, float]

    def then(self, at: float, resource: float) -> Pace:
        return Pace(self.first, (at, resource))

    def rate(self) -> float | None:
        """Resource units a second, or None before two reports."""
        (t0, r0), (t1, r1) = self.first, self.last
        return (r1 - r0) / (t1 - t0) if t1 > t0 else None


@dataclass(frozen=True)
class TrialRow:
    """A running trial as the view shows it."""

    study: str
    trial: int
    resource: float | None
    max_resource: float | None
    objective: float | None
    config: Mapping[str, Any]


@dataclass(frozen=True)
class StudyRow:
    """A study as the view shows it: the summary, the shares of its limits, its best."""

    study: str
    name: str
    state: str
    done: int
    total: int
    max_trials: int | None
    metric: str | None
    mode: str | None
    unit: str | None
    best: float | None
    best_trial: int | None
    held: str | None = None
    shares: tuple[tuple[str, float], ...] = ()
    deadline: float | None = None

    @staticmethod
    def from_summary(s: Mapping[str, Any], old: StudyRow | None) -> StudyRow:
        counts = s.get("trials") if isinstance(s.get("trials"), Mapping) else {}
        assert isinstance(counts, Mapping)
        done = sum(int(counts.get(k, 0)) for k in ("completed", "stopped", "failed"))
        objective = s.get("objective") if isinstance(s.get("objective"), Mapping) else {}
        assert isinstance(objective, Mapping)
        best = s.get("best") if isinstance(s.get("best"), Mapping) else {}
        assert isinstance(best, Mapping)
        return StudyRow(
            study=str(s.get("study")),
            name=str(s.get("name") or ""),
            state=str(s.get("state") or "?"),
            done=done,
            total=int(s.get("total_trials") or sum(int(v) for v in counts.values())),
            max_trials=_int_or_none(s.get("max_trials")),
            metric=_str_or_none(objective.get("metric")),
            mode=_str_or_none(objective.get("mode")),
            unit=_str_or_none(objective.get("resource")),
            best=_number(best.get("objective")),
            best_trial=_int_or_none(best.get("trial")),
            held=_str_or_none(s.get("held")),
            shares=old.shares if old else (),
            deadline=old.deadline if old else None,
        )

    def with_detail(self, detail: Mapping[str, Any]) -> StudyRow:
        limits = detail.get("limits_detail")
        shares: list[tuple[str, float]] = []
        if isinstance(limits, Mapping):
            for name, usage in limits.items():
                share = _number(usage.get("share")) if isinstance(usage, Mapping) else None
                if share is not None:
                    shares.append((_LIMIT_NAMES.get(str(name), str(name)), share))
        return dataclasses.replace(
            self, shares=tuple(shares), deadline=_number(detail.get("deadline"))
        )


class TopState:
    """What the view shows, fed by the events and the snapshots (from two threads)."""

    def __init__(self, study: str | None, socket_path: str) -> None:
        self.only = study
        self.socket_path = socket_path
        self.lock = threading.Lock()
        self.studies: dict[str, StudyRow] = {}
        self.trials: dict[tuple[str, int], TrialRow] = {}
        self.paces: dict[tuple[str, int], Pace] = {}
        self.gpus: Mapping[str, Any] = {}
        self.daemon_version: str | None = None
        self.error: str | None = None
        self.cursor = 0
        self.read_upto = 0  # the stream's tail when the first snapshot was read
        self.events_seen = 0
        self.refreshed_at: float | None = None
        self.changed = threading.Event()  # the screen should be drawn again
        self.reload = threading.Event()  # the refresh thread should read now

    # -- the event stream ---------------------------------------------------------------------

    def apply_event(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("kind"))
        sid = str(event.get("study"))
        data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
        assert isinstance(data, Mapping)
        trial = event.get("trial")
        at = _number(event.get("at")) or time.time()
        event_id = int(event.get("id") or 0)
        with self.lock:
            self.cursor = max(self.cursor, event_id)
            self.events_seen += 1
            if self.only is not None and sid != self.only:
                return
            study = self.studies.get(sid)
            key = (sid, trial) if isinstance(trial, int) else None
            if kind == "trial_reported" and key is not None:
                row = self.trials.get(key)
                resource = _number(data.get("resource"))
                if resource is not None:
                    pace = self.paces.get(key)
                    self.paces[key] = (
                        pace.then(at, resource) if pace else Pace((at, resource), (at, resource))
                    )
                # One from before the snapshot the row was read from dates the rate only.
                if row is not None and resource is not None and event_id > self.read_upto:
                    value = _objective_of(study, data.get("metrics"), row.objective)
                    self.trials[key] = dataclasses.replace(row, resource=resource, objective=value)
                elif row is None and event_id > self.read_upto:
                    self.reload.set()  # a trial not read yet
            elif kind in ("trial_started", "trial_resumed") and key is not None:
                self.paces.pop(key, None)  # a new run: its rate counts from its own reports
            elif kind == "new_best" and study is not None:
                self.studies[sid] = dataclasses.replace(
                    study,
                    best=_number(data.get("objective")),
                    best_trial=_int_or_none(data.get("trial")),
                )
            if kind in _RELOAD_KINDS or study is None:
                self.reload.set()
        self.changed.set()

    # -- the snapshots ------------------------------------------------------------------------

    def apply_studies(self, summaries: Iterable[Mapping[str, Any]]) -> list[str]:
        """Take the studies' summaries; the ids of those whose trials to read (the running
        ones: a report's event may have been left out, at most one goes out per trial every
        0.5 s, so the trials are read again at each refresh)."""
        with self.lock:
            seen: dict[str, StudyRow] = {}
            for s in summaries:
                sid = str(s.get("study"))
                if self.only is None or sid == self.only:
                    seen[sid] = StudyRow.from_summary(s, self.studies.get(sid))
            self.studies = seen
            live = {sid for sid, s in seen.items() if s.state == "running" or sid == self.only}
            for key in [k for k in self.trials if k[0] not in live]:
                del self.trials[key]
            for key in [k for k in self.paces if k[0] not in live]:
                del self.paces[key]
        self.changed.set()
        return sorted(live)

    def apply_detail(self, sid: str, detail: Mapping[str, Any]) -> None:
        with self.lock:
            study = self.studies.get(sid)
            if study is not None:
                self.studies[sid] = study.with_detail(detail)
        self.changed.set()

    def apply_trials(self, sid: str, trials: Sequence[Mapping[str, Any]]) -> None:
        """The study's trials as read now: its running ones replace those shown."""
        with self.lock:
            study = self.studies.get(sid)
            for key in [k for k in self.trials if k[0] == sid]:
                if not any(
                    t.get("trial") == key[1] and t.get("state") == "running" for t in trials
                ):
                    del self.trials[key]
            for t in trials:
                tid = t.get("trial")
                if t.get("state") != "running" or not isinstance(tid, int):
                    continue
                config = t.get("config")
                self.trials[(sid, tid)] = TrialRow(
                    study=sid,
                    trial=tid,
                    resource=_number(t.get("resource")),
                    max_resource=_number(t.get("max_resource")),
                    objective=_number(_as_reported(study, t)),
                    config=config if isinstance(config, Mapping) else {},
                )
        self.changed.set()

    def apply_gpus(self, view: Any) -> None:
        with self.lock:
            self.gpus = view if isinstance(view, Mapping) else {}
        self.changed.set()

    def set_error(self, message: str | None) -> None:
        with self.lock:
            self.error = message
        self.changed.set()

    # -- the view -----------------------------------------------------------------------------

    def lines(
        self, width: int = WIDTH, height: int | None = None, now: float | None = None
    ) -> list[str]:
        """The screen: a head line, the studies, the running trials, the GPUs, a status line;
        each line cut at ``width``. With ``height``, the trials are cut to fit (``... N more``)."""
        now = time.time() if now is None else now
        with self.lock:
            studies = sorted(self.studies.values(), key=_study_order)
            trials = sorted(self.trials.values(), key=lambda t: (t.study, t.trial))
            rates = {k: p.rate() for k, p in self.paces.items()}
            gpus = dict(self.gpus)
            head = self._head(studies, now)
            status = self._status(now)
        devices = _devices(gpus)
        out = [head, ""]
        hidden = 0
        if height is not None and len(studies) > max(3, height // 3):
            # The running ones come first: the ended ones past a third of the screen are left out.
            keep = max(3, height // 3) - 1
            hidden, studies = len(studies) - keep, studies[:keep]
        if studies:
            out += _table(
                ["STUDY", "STATE", "TRIALS", "BEST", "LIMITS"],
                [
                    [
                        s.study,
                        s.state + (" (held)" if s.held else ""),
                        f"{s.done}/{s.max_trials if s.max_trials is not None else s.total}",
                        _fmt_best(s),
                        _fmt_shares(s, now),
                    ]
                    for s in studies
                ],
            )
        else:
            out.append("no studies")
        if hidden:
            out.append(f"... {hidden} more studies")
        out.append("")
        trial_lines = (
            _table(
                ["STUDY", "TRIAL", "RESOURCE", "RATE", "OBJECTIVE", "DEVICE", "CONFIG"],
                [
                    [
                        t.study,
                        str(t.trial),
                        f"{_num(t.resource)}/{_num(t.max_resource)}",
                        _fmt_rate(rates.get((t.study, t.trial))),
                        _num(t.objective),
                        devices.get((t.study, t.trial), "-"),
                        _fmt_config(t.config),
                    ]
                    for t in trials
                ],
            )
            if trials
            else ["no running trials"]
        )
        gpu_lines = _gpu_lines(gpus)
        if height is not None:
            room = height - len(out) - len(gpu_lines) - 3
            if len(trial_lines) > max(room, 2):
                keep = max(room, 2) - 1
                cut = len(trial_lines) - keep
                trial_lines = [*trial_lines[:keep], f"... {cut} more running trials"]
        out += trial_lines
        out.append("")
        out += gpu_lines
        out.append("")
        out.append(status)
        return [line[:width].rstrip() for line in out]

    def _head(self, studies: Sequence[StudyRow], now: float) -> str:
        running = sum(1 for s in studies if s.state == "running")
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        version = self.daemon_version or "?"
        count = f"{len(studies)} {'study' if len(studies) == 1 else 'studies'}"
        return f"hpod {version}  {count}, {running} running  {clock}  (q quits)"

    def _status(self, now: float) -> str:
        if self.error:
            return f"! {self.error}"
        when = (
            "-" if self.refreshed_at is None else f"{format_duration(now - self.refreshed_at)} ago"
        )
        return f"{self.socket_path}  event #{self.cursor}  read {when}"

    def snapshot(self) -> dict[str, Any]:
        """The state as data (`hpodctl top --json`)."""
        with self.lock:
            return {
                "studies": [dataclasses.asdict(s) for s in self.studies.values()],
                "running": [
                    {**dataclasses.asdict(t), "rate": _rate(self.paces.get(k))}
                    for k, t in self.trials.items()
                ],
                "gpus": dict(self.gpus),
                "cursor": self.cursor,
            }


# -- reading ---------------------------------------------------------------------------------


def tail_cursor(client: Client, study: str | None) -> int:
    """The id of the stream's last event now (0: none), in O(log n) one-event polls."""
    params: dict[str, Any] = {"limit": 1} if study is None else {"limit": 1, "study": study}

    def after(cursor: int) -> bool:
        page = client.call("events", {**params, "after": cursor})
        return bool(isinstance(page, Mapping) and page.get("events"))

    if not after(0):
        return 0
    low, high = 0, 1024  # after(low) holds; find the first `high` past the last event
    while after(high):
        low, high = high, high * 4
    while high - low > 1:
        mid = (low + high) // 2
        if after(mid):
            low = mid
        else:
            high = mid
    return high


def refresh(client: Client, state: TopState) -> None:
    """One read of every snapshot the view shows."""
    studies = client.studies()
    reread = state.apply_studies(studies)
    for sid in reread:
        state.apply_detail(sid, client.study(sid))
        state.apply_trials(sid, client.trials(sid))
    state.apply_gpus(client.gpus())
    with state.lock:
        state.refreshed_at = time.time()
        state.error = None


class Watcher:
    """The two threads that keep a :class:`TopState` up to date, until :meth:`close`."""

    def __init__(self, socket_path: str | None, state: TopState, after: int) -> None:
        self.socket_path = socket_path
        self.state = state
        self.after = after
        self.stopping = threading.Event()
        self.stream: EventStream | None = None
        self.threads = [
            threading.Thread(target=self._follow, name="hpodctl-top-events", daemon=True),
            threading.Thread(target=self._refresh, name="hpodctl-top-refresh", daemon=True),
        ]

    def start(self) -> Watcher:
        for t in self.threads:
            t.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        self.state.reload.set()
        stream = self.stream
        if stream is not None:
            stream.close()
        for t in self.threads:
            t.join(timeout=2.0)

    def _follow(self) -> None:
        after = self.after
        while not self.stopping.is_set():
            try:
                with Client(self.socket_path) as client:
                    self.stream = stream = client.events(self.state.only, after)
                    if self.stopping.is_set():
                        return
                    for event in stream:
                        self.state.apply_event(event)
                    if self.state.only is not None:
                        return  # the study ended: nothing more comes
            except HpodError as err:
                # The stream gave up on the daemon (a minute without one): try again, on.
                if self.stream is not None:
                    after = self.stream.cursor
                self.state.set_error(f"events: {err.message}")
            self.stopping.wait(RETRY_S)

    def _refresh(self) -> None:
        client = Client(self.socket_path)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    refresh(client, self.state)
                except HpodError as err:
                    self.state.set_error(err.message)
                    self.stopping.wait(RETRY_S)
                self.state.reload.wait(REFRESH_S)
                self.state.reload.clear()
                # However fast the events come, a breath between reads.
                self.stopping.wait(max(0.0, MIN_REFRESH_S - (time.monotonic() - started)))
        finally:
            client.close()


# -- the command ------------------------------------------------------------------------------


def run(socket_path: str | None, study: str | None, *, once: bool, as_json: bool) -> int:
    """`hpodctl top [STUDY] [--once] [--json]`."""
    with Client(socket_path) as client:
        version = client.ping().get("version")
        if study is not None:
            client.study(study)  # an unknown study is NOT_FOUND now, not a blank screen
        state = TopState(study, client.socket_path)
        state.daemon_version = None if version is None else str(version)
        tail = tail_cursor(client, study)
        state.read_upto = state.cursor = tail
        refresh(client, state)
    # The last few hundred events again: a running trial's reports in them date its rate.
    after = max(0, tail - REPLAY_EVENTS)
    if as_json:
        print(json.dumps(wire.tag(state.snapshot()), indent=2, allow_nan=False))
        return 0
    if once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        width = shutil.get_terminal_size((WIDTH, 24)).columns
        print("\n".join(state.lines(width)))
        return 0
    watcher = Watcher(socket_path, state, after).start()
    try:
        _curses_loop(state)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits as q does; curses.wrapper gave the terminal back
    finally:
        watcher.close()
    return 0


def _curses_loop(state: TopState) -> None:
    import curses

    def loop(screen: Any) -> None:
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        screen.timeout(200)  # ms: how often a key and the state's change are looked at
        drawn_at = 0.0
        while True:
            now = time.time()
            if state.changed.is_set() or now - drawn_at >= 1.0:
                state.changed.clear()
                _draw(screen, state, now)
                drawn_at = now
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                state.changed.set()

    curses.wrapper(loop)


def _draw(screen: Any, state: TopState, now: float) -> None:
    import curses

    height, width = screen.getmaxyx()
    screen.erase()
    for row, line in enumerate(state.lines(width, height, now)[:height]):
        with contextlib.suppress(curses.error):  # the bottom-right cell cannot be written
            screen.addnstr(row, 0, line, max(width - 1, 1))
    screen.refresh()


# -- formatting -------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)), r[-1]]).rstrip()
        for r in [header, *rows]
    ]


def _gpu_lines(view: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    gpus = view.get("gpus") or []
    if gpus:
        lines += _table(
            ["GPU", "MEMORY", "UTIL", "HELD BY"],
            [
                [
                    str(g.get("index")),
                    f"{_num(g.get('memory_used_mib'))}/{_num(g.get('memory_total_mib'))} MiB",
                    f"{_num(g.get('utilization'))}%",
                    ", ".join(f"{h['study']}/{h['trial']}" for h in g.get("holders") or [])
                    or ("(another program's)" if g.get("foreign") else "-"),
                ]
                for g in gpus
            ],
        )
    cpu = view.get("cpu_slots")
    if isinstance(cpu, Mapping) and (cpu.get("holders") or not gpus):
        held = ", ".join(f"{h['study']}/{h['trial']}" for h in cpu.get("holders") or [])
        lines.append(
            f"cpu slots: {_num(cpu.get('free'))} free of {_num(cpu.get('size'))}"
            + (f"; held by {held}" if held else "")
        )
    return lines or ["no GPUs"]


def _devices(view: Mapping[str, Any]) -> dict[tuple[str, int], str]:
    """Each holder's device: ``gpu0`` (``gpu0,1`` for several), ``cpu`` for a CPU slot."""
    out: dict[tuple[str, int], str] = {}
    for g in view.get("gpus") or []:
        for h in g.get("holders") or []:
            key = (str(h.get("study")), int(h.get("trial")))
            out[key] = (out[key] + "," if key in out else "gpu") + str(g.get("index"))
    cpu = view.get("cpu_slots")
    if isinstance(cpu, Mapping):
        for h in cpu.get("holders") or []:
            out.setdefault((str(h.get("study")), int(h.get("trial"))), "cpu")
    return out


def _rate(pace: Pace | None) -> float | None:
    return None if pace is None else pace.rate()


def _study_order(s: StudyRow) -> tuple[int, str]:
    return (0 if s.state == "running" else 1, s.study)


def _objective_of(study: StudyRow | None, metrics: Any, old: float | None) -> float | None:
    """The trial's objective after a report: the metric's last value (min/max) or its best
    (min_global/max_global); the old one where the report had none."""
    if study is None or study.metric is None or not isinstance(metrics, Mapping):
        return old
    value = _number(metrics.get(study.metric))
    if value is None or math.isnan(value):
        return old
    if old is not None and study.mode == "min_global":
        return min(old, value)
    if old is not None and study.mode == "max_global":
        return max(old, value)
    return value


def _as_reported(study: StudyRow | None, trial: Mapping[str, Any]) -> Any:
    """A trial's objective as a report moves it (:func:`_objective_of`): its last counted report
    (``last``; ``objective`` is the estimate the answer ranks by), its best for ``*_global``."""
    if study is not None and study.mode in ("min_global", "max_global"):
        return trial.get("objective")
    return trial.get("last", trial.get("objective"))


def _fmt_best(s: StudyRow) -> str:
    if s.best is None:
        return "-"
    return f"{_num(s.best)} (trial {s.best_trial})"


def _fmt_shares(s: StudyRow, now: float) -> str:
    parts = [f"{name} {share:.0%}" for name, share in s.shares]
    if s.deadline is not None:
        left = s.deadline - now
        parts.append(f"deadline in {format_duration(left)}" if left > 0 else "deadline passed")
    return "  ".join(parts) if parts else "-"


def _fmt_rate(rate: float | None) -> str:
    """``2.5/s``, ``12/m``, ``3.1/h``: resource units in the largest unit that gives >= 1."""
    if rate is None or not math.isfinite(rate):
        return "-"
    for scale, unit in ((1.0, "s"), (60.0, "m"), (3600.0, "h")):
        if rate * scale >= 1.0 or unit == "h":
            return f"{rate * scale:.2g}/{unit}"
    return "-"


def _fmt_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_num(v)}" for k, v in config.items())


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
