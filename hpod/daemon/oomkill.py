"""Whether the kernel's OOM killer ended a run (docs/oom.md).

A process the OOM killer ends exits by SIGKILL, which alone says nothing: hpod's own stop ends
with SIGKILL too, and so does an admin's ``kill -9``. Two records say it was the kernel, for
memory: the run's cgroup v2 ``memory.events`` (``oom_kill``: how many of its processes the
killer took, where the memory controller is enabled there), and the kernel's log
(``/dev/kmsg``: ``Killed process PID`` after an out-of-memory, readable by root), whose record
names the process and when (the monotonic clock of :func:`time.monotonic`).

Both are blocking reads of small files: the daemon calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

__all__ = ["cgroup_oom_kills", "kernel_killed"]

KMSG = "/dev/kmsg"
# "Out of memory: Killed process 123 (python) ..." and "Memory cgroup out of memory: Killed
# process 123 (python) ..." (older kernels: "Kill process"; the killed one is named after it).
_KILLED = re.compile(rb"(?:Killed process|Kill process) (\d+) \(")
# One /dev/kmsg record is at most this long; a read returns one record.
_RECORD = 8192
# Records read at the most: the kernel's buffer is a few MiB; a record of interest is recent.
_MAX_RECORDS = 100_000


def cgroup_oom_kills(cgroup: Path) -> int | None:
    """The OOM killer's kills in a cgroup v2 (``memory.events`` ``oom_kill``), or None where
    the file is not there (no memory controller for the cgroup, or the cgroup is gone)."""
    try:
        text = (cgroup / "memory.events").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def kernel_killed(pid: int, since: float, path: str = KMSG) -> bool:
    """Whether the kernel's log says its OOM killer killed ``pid`` at or after ``since`` (a
    :func:`time.monotonic` time: the log's records carry the same clock, in microseconds).
    False where the log cannot be read (not root, no /dev/kmsg)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    needle = str(pid).encode()
    try:
        for _ in range(_MAX_RECORDS):
            try:
                record = os.read(fd, _RECORD)
            except BlockingIOError:
                return False  # read to the end
            except OSError as exc:
                # EPIPE: records were overwritten under the reader; it goes on from the next.
                if exc.errno == 32:
                    continue
                return False
            if not record:
                return False
            head, _, message = record.partition(b";")
            match = _KILLED.search(message)
            if match is None or match.group(1) != needle:
                continue
            fields = head.split(b",")
            try:
                at = int(fields[2]) / 1e6
            except (IndexError, ValueError):
                continue
            if at >= since:
                return True
        return False
    finally:
        os.close(fd)
