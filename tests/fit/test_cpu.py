from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpod.fit import cpu as sched
from hpod.fit.worker import HEADER, frame


def _in_a_thread() -> tuple[bool, int | None, int | None]:
    """short_slice in a thread of its own: the test process's threads keep their slices."""
    out: list[tuple[bool, int | None, int | None]] = []

    def run() -> None:
        before = sched.current_slice_ns()
        out.append((sched.short_slice(), before, sched.current_slice_ns()))

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=10)
    return out[0]


def test_a_short_slice_is_taken_and_not_passed_on_to_children() -> None:
    took, before, after = _in_a_thread()
    if not took or after in (None, 0, before):
        pytest.skip(f"this kernel keeps no custom slice (took={took}, slice={after})")
    assert after == sched.SHORTEST_NS
    # A child started now (as the daemon starts trials) gets the kernel's default back.
    code = "from hpod.fit import cpu; print(cpu.current_slice_ns())"
    child = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert int(child.stdout) != sched.SHORTEST_NS


def test_the_fit_worker_runs_niced_with_short_slices() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpod.fit.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert worker.stdin is not None
        assert worker.stdout is not None
        # A request it cannot fit: its error answer says it is past its set-up.
        worker.stdin.write(frame(pickle.dumps(None)))
        worker.stdin.flush()
        size = int.from_bytes(worker.stdout.read(HEADER), "big")
        status, _, _ = pickle.loads(worker.stdout.read(size))
        assert status == "error"
        fields = {}
        for line in Path(f"/proc/{worker.pid}/sched").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        assert int(fields["prio"]) == 120 + 10  # nice 10
        if "se.slice" not in fields:
            pytest.skip("this kernel shows no slice")
        assert int(fields["se.slice"]) in (sched.SHORTEST_NS, int(_default_slice()))
        took, _, after = _in_a_thread()
        if took and after == sched.SHORTEST_NS:  # the kernel keeps custom slices: so must it
            assert int(fields["se.slice"]) == sched.SHORTEST_NS
    finally:
        worker.kill()
        worker.wait(timeout=10)
        worker.stdin.close()
        worker.stdout.close()


def _default_slice() -> str:
    for line in Path("/proc/self/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return line.partition(":")[2].strip()
    return "0"


def test_a_fit_backs_off_while_reports_are_busy_and_its_steps_wait_for_a_cpu(
    tmp_path: Path,
) -> None:
    stat = tmp_path / "schedstat"
    flag = tmp_path / "busy"
    flag.write_bytes(b"\0")
    naps: list[float] = []

    def write(on_cpu_ms: float, waiting_ms: float) -> None:
        stat.write_text(f"{int(on_cpu_ms * 1e6)} {int(waiting_ms * 1e6)} 7\n")

    write(0, 0)
    backoff = sched.Backoff(
        stat, flag=flag, threshold=0.25, pause=0.2, window_ns=1_000_000, sleep=naps.append
    )
    backoff()
    write(10, 20)  # contended, but the reports are quiet (CPU-bound trials): no pause
    backoff()
    assert naps == []
    flag.write_bytes(b"\1")  # the daemon: reports are coming fast
    backoff()  # marks the start
    write(10.6, 20.2)  # 0.8 ms so far: too little to judge
    backoff()
    assert naps == []
    write(13.0, 20.4)  # 3.4 ms, an eighth of it waiting: the CPU is free enough, no pause
    backoff()
    assert naps == []
    write(14.0, 22.0)  # the next 2.6 ms, most of it waiting: others want the CPU
    backoff()
    assert naps == [0.2]
    assert backoff.pauses == 1
    flag.write_bytes(b"\0")
    write(15.0, 30.0)
    backoff()
    assert naps == [0.2]


def test_without_schedstat_or_flag_a_fit_never_backs_off(tmp_path: Path) -> None:
    naps: list[float] = []
    flag = tmp_path / "busy"
    flag.write_bytes(b"\1")
    for backoff in (
        sched.Backoff(tmp_path / "missing", flag=flag, sleep=naps.append),
        sched.Backoff(sleep=naps.append),  # no flag: no word from a daemon
        sched.Backoff(sleep=naps.append, flag=tmp_path / "no-flag"),
    ):
        backoff()
        backoff()
    assert naps == []


def test_the_real_schedstat_is_read_and_a_quiet_step_does_not_pause(tmp_path: Path) -> None:
    if not Path("/proc/thread-self/schedstat").exists():
        pytest.skip("no /proc/thread-self/schedstat here")
    flag = tmp_path / "busy"
    flag.write_bytes(b"\1")
    naps: list[float] = []
    backoff = sched.Backoff(flag=flag, sleep=naps.append, threshold=1.0)  # never over all
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:  # 20 ms of work on a CPU: past the window
        backoff()
    assert naps == []
    assert backoff._last is not None  # the file was read, and is still being read
