"""Model fits off the event loop: the daemon's side of :mod:`hpod.fit.worker`.

A model-based study (BO, DyHPO) asks for a fit when its data moved (``Study.wants_fit``); the
:class:`Fitter` sends the request to the worker process and goes back to serving; when the model
arrives it is installed and the dispatcher is woken. Meanwhile the study decides with its last
model, or with the ASHA rule and random draws before its first: the daemon never waits for a fit.

Reports only poke the fitter (an event); it looks at the studies at most every
``CHECK_SECONDS``, so a stream of reports costs the report path nothing. One worker process serves
all studies, one fit at a time; it is started at the first fit, so a daemon without model-based
studies never starts it, and restarted if it dies.

Reports come first: every report is counted (:meth:`Fitter.count_report`), and while they come
faster than BUSY_REPORTS_PER_S the worker is told so and its fits back off
(:class:`hpod.fit.cpu.Backoff`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

from hpod.core.models import FitRequest
from hpod.core.study import Study
from hpod.fit.worker import HEADER, frame

log = structlog.get_logger("hpod.fit.fitter")

CHECK_SECONDS = 0.2
# Above this many reports a second (all studies), the report path is busy: the worker then backs
# off between a fit's steps while it has to wait for a CPU (hpod.fit.cpu.Backoff). Measured on 2
# cores with a fit running: 8 trials at 800 reports/s kept a p99 of 1.3-1.8 ms without backing
# off; back to back (~7,800/s) the p99 went to 2.1-3.5 ms, and back to the 1.5-1.9 ms of no fit
# with it. Below the rate a fit runs at nice 10, whatever the trials do with the CPUs.
BUSY_REPORTS_PER_S = 1000.0
# Short: at 8,000 reports a second, each LOAD_SECONDS of a fit at full speed is 160 round trips.
LOAD_SECONDS = 0.02
_ONE_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class FitFailed(Exception):
    pass


@dataclass
class FitStats:
    """How a study's decisions were made: its fits (shell side) and its decision times."""

    fits: int = 0
    errors: int = 0
    in_flight: bool = False
    last_error: str | None = None
    fit_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    decide_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def view(self, decisions: dict[str, int]) -> dict[str, Any]:
        return {
            "asha_promotions": decisions.get("asha_promotions", 0),
            "model_promotions": decisions.get("model_promotions", 0),
            "random_starts": decisions.get("random_starts", 0),
            "model_starts": decisions.get("model_starts", 0),
            "fits": self.fits,
            "fit_errors": self.errors,
            "fitting": self.in_flight,
            "fit_seconds": _spread(self.fit_seconds),
            "decide_seconds": _spread(self.decide_seconds),
            "last_fit_error": self.last_error,
        }


def _spread(values: Iterable[float]) -> dict[str, float] | None:
    vals = list(values)
    if not vals:
        return None
    return {"median": statistics.median(vals), "max": max(vals), "count": len(vals)}


class FitWorker:
    """The worker process, started on first use; one request at a time."""

    def __init__(self, flag_dir: Path) -> None:
        self._proc: anyio.abc.Process | None = None
        self._out: BufferedByteReceiveStream | None = None
        self._lock = anyio.Lock()
        self.started = 0
        self._flag_dir = flag_dir  # where the busy flag lives: the daemon's state directory
        self._flag: int | None = None  # the busy flag's file, shared with the worker
        self._flag_path = ""
        self.busy = False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def set_busy(self, busy: bool) -> None:
        """Tell the worker whether the report path is busy (one byte in a file it maps)."""
        self.busy = busy
        if self._flag is not None:
            with contextlib.suppress(OSError):
                os.pwrite(self._flag, b"\1" if busy else b"\0", 0)

    async def _start(self) -> None:
        if self._flag is None:
            # A fixed name: a daemon killed with SIGKILL leaves one file, the next reuses it.
            self._flag_path = str(self._flag_dir / "fit-busy")
            self._flag = os.open(self._flag_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self.set_busy(self.busy)
        env = dict(os.environ, **_ONE_THREAD, HPOD_BUSY_FLAG=self._flag_path)
        self._proc = await anyio.open_process(
            [sys.executable, "-m", "hpod.fit.worker"], env=env, stderr=None
        )
        assert self._proc.stdout is not None
        self._out = BufferedByteReceiveStream(self._proc.stdout)
        self.started += 1
        log.info("fit_worker_started", pid=self._proc.pid)

    async def fit(self, request: FitRequest) -> tuple[Any, float]:
        """The model and the seconds the worker spent on it."""
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self._start()
            assert self._proc is not None
            assert self._proc.stdin is not None
            assert self._out is not None
            try:
                await self._proc.stdin.send(frame(pickle.dumps(request)))
                size = int.from_bytes(await self._out.receive_exactly(HEADER), "big")
                data = await self._out.receive_exactly(size)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                await self._kill()
                raise FitFailed(f"the fit worker died: {exc!r}") from exc
            except BaseException:
                # Cancelled mid-exchange: the pipe is out of step, so the worker goes.
                with anyio.CancelScope(shield=True):
                    await self._kill()
                raise
        status, value, seconds = pickle.loads(data)
        if status != "ok":
            raise FitFailed(str(value))
        return value, float(seconds)

    async def _kill(self) -> None:
        proc, self._proc, self._out = self._proc, None, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()
        with contextlib.suppress(Exception):
            await proc.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._kill()
        if self._flag is not None:
            os.close(self._flag)
            with contextlib.suppress(OSError):
                os.unlink(self._flag_path)
            self._flag = None


class Fitter:
    """Watches the model-based studies and keeps their models fresh, off the event loop."""

    def __init__(self, on_installed: Callable[[], None], flag_dir: Path) -> None:
        self.worker = FitWorker(flag_dir)
        self.studies: dict[str, tuple[Study, FitStats]] = {}
        self._poke = anyio.Event()
        self._on_installed = on_installed
        self.reports = 0  # every report of every study (count_report)
        self._window_start = 0  # self.reports when the current LOAD_SECONDS window began
        self._window_cap = BUSY_REPORTS_PER_S * LOAD_SECONDS

    def count_report(self) -> None:
        """On the report path: one more report. The worker hears at once when a window has had
        too many, not at its end (at 8,000 reports a second, 20 ms are 160 round trips)."""
        self.reports += 1
        over = self.reports - self._window_start > self._window_cap
        if over and not self.worker.busy and self.worker.alive:
            self.worker.set_busy(True)

    def add(self, study_id: str, engine: Study) -> FitStats:
        stats = FitStats()
        if engine.modeled:
            self.studies[study_id] = (engine, stats)
            self.poke()
        return stats

    def poke(self) -> None:
        self._poke.set()

    async def _watch_load(self) -> None:
        """Every LOAD_SECONDS a new window; one that had no more than BUSY_REPORTS_PER_S allows
        tells the worker the reports are quiet again (count_report says when they are not)."""
        began = time.monotonic()
        while True:
            await anyio.sleep(LOAD_SECONDS if self.worker.alive else CHECK_SECONDS)
            now = time.monotonic()
            count = self.reports - self._window_start
            self._window_start, began, seconds = self.reports, now, now - began
            if self.worker.busy and count <= BUSY_REPORTS_PER_S * seconds:
                self.worker.set_busy(False)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_load)
                while True:
                    await self._poke.wait()
                    self._poke = anyio.Event()
                    for sid, (engine, stats) in list(self.studies.items()):
                        if stats.in_flight:
                            continue
                        if engine.state.is_final:
                            del self.studies[sid]
                            continue
                        request = engine.wants_fit()
                        if request is not None:
                            stats.in_flight = True
                            tg.start_soon(self._fit, sid, engine, stats, request)
                    # Reports poke often; looking at most this often keeps the loop free.
                    await anyio.sleep(CHECK_SECONDS)
        finally:
            await self.worker.aclose()

    async def _fit(self, sid: str, engine: Study, stats: FitStats, request: FitRequest) -> None:
        started = time.monotonic()
        started_at = time.time()
        log.info("fit_requested", study=sid, key=list(request.key), requested_at=started_at)
        try:
            model, seconds = await self.worker.fit(request)
        except FitFailed as exc:
            stats.errors += 1
            stats.last_error = str(exc)
            log.warning("fit_failed", study=sid, key=list(request.key), error=str(exc))
            return
        finally:
            stats.in_flight = False
            self.poke()  # data may have moved meanwhile
        engine.install(request, model)
        stats.fits += 1
        stats.fit_seconds.append(seconds)
        log.info(
            "model_fitted",
            study=sid,
            key=list(request.key),
            seconds=round(seconds, 4),
            waited=round(time.monotonic() - started, 4),
            requested_at=started_at,
            installed_at=time.time(),
        )
        self._on_installed()
