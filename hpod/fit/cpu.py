"""How the fit worker keeps out of the report path's way on a machine with few cores.

A report's round trip is a chain of wake-ups (trial, event loop, writer thread, trial again), and
on Linux's EEVDF scheduler (6.6 and later) each may wait until the task running on its CPU has
used up the slice the scheduler protects for it, 0.75-3 ms by default. A fit busy on one of two
cores put 1-2 ms on the p99 of 8 trials reporting back to back, at nice 10 or SCHED_IDLE alike
(bench/report_latency.py --during-fit). Two remedies, both in the worker only:

- :func:`short_slice`: 0.1 ms slices (``sched_attr.sched_runtime`` for a SCHED_OTHER task, Linux
  6.12 and later; no privilege needed; older kernels ignore it and other systems lack the call),
  so a waking task preempts the fit within 0.1 ms. The daemon keeps the default: with short slices
  of its own it was preempted by its own trials, and its round trips got slower.
- :class:`Backoff`: while the daemon says reports are busy and the fit's steps wait for a CPU, it
  sleeps between steps.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

# sched_setattr(2); glibc has no wrapper.
_SYSCALL = {"x86_64": 314, "aarch64": 274}
_RESET_ON_FORK = 0x01
_SCHED_OTHER = 0
SHORTEST_NS = 100_000  # the kernel's floor for a custom slice


class _SchedAttr(ctypes.Structure):
    _fields_ = (
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("util_min", ctypes.c_uint32),
        ("util_max", ctypes.c_uint32),
    )


def _sched_setattr() -> tuple[ctypes.CDLL, int] | None:
    """libc and sched_setattr's syscall number (sched_getattr's is the next), where both exist."""
    number = _SYSCALL.get(platform.machine())
    if number is None:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True), number
    except OSError:
        return None


def short_slice(slice_ns: int = SHORTEST_NS) -> bool:
    """Ask for ``slice_ns`` slices for the calling thread at its current nice value; True if the
    kernel took the request. Threads and processes it starts later get the default back
    (``SCHED_FLAG_RESET_ON_FORK``)."""
    call = _sched_setattr()
    if call is None or not hasattr(os, "sched_getscheduler"):
        return False
    libc, number = call
    try:
        if os.sched_getscheduler(0) != _SCHED_OTHER:
            return False  # a real-time or idle policy set by the administrator stays
        nice = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=_SCHED_OTHER,
        sched_flags=_RESET_ON_FORK,
        sched_nice=nice,
        sched_runtime=slice_ns,
    )
    return bool(libc.syscall(number, 0, ctypes.byref(attr), 0) == 0)


def current_slice_ns() -> int | None:
    """The calling thread's requested slice (0: the kernel's default), None where unknown."""
    call = _sched_setattr()
    if call is None:
        return None
    libc, number = call
    attr = _SchedAttr()
    if libc.syscall(number + 1, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return int(attr.sched_runtime)


class Backoff:
    """Called between a fit's steps in the worker process. While the daemon says its report path
    is busy (a byte in the file ``flag``, see :mod:`hpod.fit.fitter`) and the steps wait for a CPU
    more than ``threshold`` of the time, it sleeps ``pause`` seconds after each step: a fit then
    yields a saturated machine to the reports almost entirely, and goes on at full speed when the
    reports slow down or the machine has cores to spare. CPU-bound trials alone never slow a fit
    down further than its nice value does.

    Short slices alone left a fit on one of two cores adding 0.5-1.5 ms to the p99 of 8 trials
    reporting back to back (bench/report_latency.py --during-fit). The waiting is measured from
    the thread's own ``schedstat`` (time on a CPU, time runnable but waiting), so a machine with
    cores to spare never pauses a fit; without that file, or without the flag, it does nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "/proc/thread-self/schedstat",
        *,
        flag: str | os.PathLike[str] | None = None,
        threshold: float = 0.25,
        pause: float = 0.5,
        window_ns: int = 1_000_000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._path = Path(path)
        self._threshold = threshold
        self._pause = pause
        self._window_ns = window_ns
        self._sleep = sleep
        self._last: tuple[int, int] | None = None
        self._busy = _map_flag(flag)
        self.pauses = 0

    def _read(self) -> tuple[int, int] | None:
        try:
            on_cpu, waiting = self._path.read_text().split()[:2]
            return int(on_cpu), int(waiting)
        except (OSError, ValueError):
            return None

    def __call__(self) -> None:
        if self._busy is None or not self._busy[0]:
            self._last = None
            return
        now = self._read()
        if now is None:
            return
        if self._last is None:
            self._last = now  # busy from now on: judge the steps from here
            return
        ran, waited = now[0] - self._last[0], now[1] - self._last[1]
        if ran + waited < self._window_ns:
            return  # too little to judge yet: keep counting from the same mark
        self._last = now
        if waited > self._threshold * (ran + waited):
            self.pauses += 1
            self._sleep(self._pause)
            self._last = self._read()  # the sleep is neither running nor waiting


def _map_flag(path: str | os.PathLike[str] | None) -> mmap.mmap | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 1, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
