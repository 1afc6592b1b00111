"""Progress while ``hpodctl wait`` and ``submit --wait`` wait (docs/hpodctl.md).

The daemon's ``wait`` blocks on the main thread; beside it a thread reads the study's detail
(``study``) when the event stream says something happened to it, and at least every second on a
terminal, and says where the study is: trials done of ``max_trials`` (or the share of its time
budget used), the best so far and an estimate of the time left. On a terminal that is one line,
redrawn in place and wiped before the summary; elsewhere (a log, a pipe) a plain line each time
the trials done or the best change. Everything goes to stderr: stdout keeps the summary alone.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

from hpod.client import Client, EventStream
from hpod.core.durations import format_duration
from hpod.errors import HpodError

TTY_EVERY_S = 1.0  # a terminal's line is redrawn at least this often (its clock moves)
PLAIN_EVERY_S = 10.0  # elsewhere the detail is read at least this often (a line only on change)
_FINAL = ("completed", "stopped", "failed")
_WAKE_KINDS = frozenset(
    {"trial_ended", "new_best", "limit_reached", "study_ended", "trial_started"}
)


def progress_line(detail: Mapping[str, Any], now: float) -> str:
    """``watched-1: 3/10 trials done, best 0.5 (trial 0), 2m05s elapsed, ~1m30s left``."""
    counts = detail.get("trials") if isinstance(detail.get("trials"), Mapping) else {}
    assert isinstance(counts, Mapping)
    done = sum(int(counts.get(k, 0)) for k in _FINAL)
    running = int(counts.get("running", 0))
    max_trials = detail.get("max_trials")
    limits = detail.get("limits_detail") if isinstance(detail.get("limits_detail"), Mapping) else {}
    assert isinstance(limits, Mapping)
    parts: list[str] = []
    if isinstance(max_trials, int):
        parts.append(f"{done}/{max_trials} trials done")
    else:
        shares = [
            (float(u["share"]), name)
            for name, u in limits.items()
            if name in ("optimization_time", "compute_time") and isinstance(u, Mapping)
        ]
        if shares:
            share, name = max(shares)
            parts.append(f"{share:.0%} of {name}")
        parts.append(f"{done} trials done")
    if running:
        parts.append(f"{running} running")
    best = detail.get("best")
    if isinstance(best, Mapping) and best.get("objective") is not None:
        parts.append(f"best {_num(best.get('objective'))} (trial {best.get('trial')})")
    elapsed = detail.get("elapsed")
    if isinstance(elapsed, (int, float)):
        parts.append(f"{format_duration(elapsed)} elapsed")
    left = time_left(detail, done, now)
    if left is not None:
        parts.append(f"{left} left")
    return f"{detail.get('study')}: " + ", ".join(parts)


def time_left(detail: Mapping[str, Any], done: int, now: float) -> str | None:
    """The nearest end the study's limits give: a time limit or the deadline as they stand, or,
    from the pace so far (marked ``~``), its compute time or its trials."""
    limits = detail.get("limits_detail") if isinstance(detail.get("limits_detail"), Mapping) else {}
    assert isinstance(limits, Mapping)
    elapsed = detail.get("elapsed")
    known: list[float] = []
    guessed: list[float] = []
    wall = limits.get("optimization_time")
    if isinstance(wall, Mapping):
        known.append(float(wall["limit"]) - float(wall["used"]))
    deadline = detail.get("deadline")
    if isinstance(deadline, (int, float)):
        known.append(float(deadline) - now)
    if isinstance(elapsed, (int, float)) and elapsed > 0:
        compute = limits.get("compute_time")
        if isinstance(compute, Mapping) and 0 < float(compute["share"]) < 1:
            share = float(compute["share"])
            guessed.append(elapsed * (1 - share) / share)
        max_trials = detail.get("max_trials")
        if isinstance(max_trials, int) and 0 < done < max_trials:
            guessed.append(elapsed * (max_trials - done) / done)
    best_known = min(known, default=math.inf)
    best_guess = min(guessed, default=math.inf)
    if math.isinf(best_known) and math.isinf(best_guess):
        return None
    if best_guess < best_known:
        return "~" + format_duration(max(0.0, best_guess))
    return format_duration(max(0.0, best_known))


class Progress:
    """The thread that shows the progress of one study until :meth:`close`."""

    def __init__(self, socket_path: str | None, study: str, out: TextIO, *, tty: bool) -> None:
        self.socket_path = socket_path
        self.study = study
        self.out = out
        self.tty = tty
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.stream: EventStream | None = None
        self.shown = ""  # what the terminal's line holds now
        self.last_key: tuple[Any, ...] | None = None
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._show, name="hpodctl-progress", daemon=True),
            threading.Thread(target=self._follow, name="hpodctl-progress-events", daemon=True),
        ]

    def start(self) -> Progress:
        for t in self.threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop, and wipe the terminal's line so that what is printed next starts clean."""
        self.stopping.set()
        self.wake.set()
        stream = self.stream
        if stream is not None:
            stream.close()
        for t in self.threads:
            t.join(timeout=2.0)
        with self.lock:
            if self.tty and self.shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self.shown = ""

    def show(self, detail: Mapping[str, Any], now: float) -> None:
        """Say where the study is: redraw the terminal's line, or a plain line if it moved."""
        line = progress_line(detail, now)
        with self.lock:
            if self.stopping.is_set():
                return
            if self.tty:
                width = _width(self.out)
                self.out.write("\r\x1b[K" + line[: max(width - 1, 10)])
                self.shown = line
            else:
                counts = detail.get("trials") or {}
                best = detail.get("best") or {}
                key = (
                    tuple(sorted(counts.items())) if isinstance(counts, Mapping) else (),
                    best.get("trial") if isinstance(best, Mapping) else None,
                    best.get("objective") if isinstance(best, Mapping) else None,
                )
                if key == self.last_key:
                    return
                self.last_key = key
                self.out.write(line + "\n")
            self.out.flush()

    def _show(self) -> None:
        every = TTY_EVERY_S if self.tty else PLAIN_EVERY_S
        with Client(self.socket_path) as client:
            while not self.stopping.is_set():
                try:
                    detail = client.study(self.study)
                except HpodError:
                    pass  # the wait itself says what went wrong
                else:
                    self.show(detail, time.time())
                self.wake.wait(every)
                self.wake.clear()

    def _follow(self) -> None:
        from hpod.cli.top import tail_cursor

        try:
            with Client(self.socket_path) as client:
                self.stream = stream = client.events(self.study, tail_cursor(client, self.study))
                if self.stopping.is_set():
                    return
                for event in stream:
                    if event.get("kind") in _WAKE_KINDS:
                        self.wake.set()
        except HpodError:
            pass  # no stream (an older daemon, a lost one): the clock alone drives the line


def interrupted_message(study: str) -> str:
    """What Ctrl-C during a wait says: the daemon runs the study on, and how to stop it."""
    return (
        f"hpodctl: stopped waiting; study {study} goes on in the daemon "
        f"(`hpodctl wait {study}` waits again, `hpodctl stop {study}` stops it)"
    )


def _width(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


def _num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return str(value)


def is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
