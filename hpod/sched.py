"""Short CPU slices for the daemon and its fit worker (Linux's EEVDF scheduler, 6.12 and later).

On a machine with few cores a report's round trip is a chain of wake-ups (trial, event loop,
writer thread, trial again), and each waits until the task running on its CPU has used up the
slice the scheduler protects for it, 0.75-3 ms by default. A fit worker busy on one of two cores
then put ~2 ms on the p99 of every round trip, even at nice 10 or SCHED_IDLE
(bench/report_latency.py --during-fit). Asking for a short slice (``sched_attr.sched_runtime``
for a SCHED_OTHER task) does two things: the fit worker can be preempted 0.1 ms into its slice,
and the daemon's threads, whose deadlines come sooner, win the wake-up race. No privilege is
needed; kernels before 6.12 ignore the value, other systems lack the call: both are left as they
are. The daemon's slice is not passed on to the trials it starts (``SCHED_FLAG_RESET_ON_FORK``).
"""

from __future__ import annotations

import ctypes
import os
import platform

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


def short_slice(slice_ns: int = SHORTEST_NS, *, keep_for_children: bool = False) -> bool:
    """Ask for ``slice_ns`` slices for the calling thread (and the threads it starts later) at
    its current nice value; True if the kernel took the request."""
    number = _SYSCALL.get(platform.machine())
    if number is None or not hasattr(os, "sched_getscheduler"):
        return False
    try:
        if os.sched_getscheduler(0) != _SCHED_OTHER:
            return False  # a real-time or idle policy set by the administrator stays
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=_SCHED_OTHER,
        sched_flags=0 if keep_for_children else _RESET_ON_FORK,
        sched_nice=nice,
        sched_runtime=slice_ns,
    )
    return bool(libc.syscall(number, 0, ctypes.byref(attr), 0) == 0)


def current_slice_ns() -> int | None:
    """The calling thread's requested slice (0: the kernel's default), None where unknown."""
    number = _SYSCALL.get(platform.machine())
    if number is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    attr = _SchedAttr()
    if libc.syscall(number + 1, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return int(attr.sched_runtime)
