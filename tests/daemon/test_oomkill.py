"""Reading the kernel's records of an OOM kill: memory.events, and /dev/kmsg's lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.daemon.oomkill import cgroup_oom_kills, kernel_killed

pytestmark = pytest.mark.timeout(10)


def test_memory_events_count_the_kills(tmp_path: Path) -> None:
    assert cgroup_oom_kills(tmp_path) is None  # no memory controller there
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup_oom_kills(tmp_path) == 1
    (tmp_path / "memory.events").write_text("oom_kill 0\n")
    assert cgroup_oom_kills(tmp_path) == 0


def test_the_kernels_log_names_the_killed_process_after_the_run_started(tmp_path: Path) -> None:
    # A regular file reads whole, not a record a read; one line at a time is what counts here,
    # so each record is written as its own file read.
    log = tmp_path / "kmsg"
    log.write_bytes(
        b"6,900,5000000,-;Memory cgroup out of memory: Killed process 4242 (python) "
        b"total-vm:1000kB, anon-rss:900kB"
    )
    assert kernel_killed(4242, since=4.0, path=str(log))
    assert not kernel_killed(4242, since=6.0, path=str(log))  # before the run: another one
    assert not kernel_killed(424, since=0.0, path=str(log))
    assert not kernel_killed(4242, since=0.0, path=str(tmp_path / "missing"))
