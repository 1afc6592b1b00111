from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpod import sched
from hpod.fitworker import HEADER, frame


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
    code = "from hpod import sched; print(sched.current_slice_ns())"
    child = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert int(child.stdout) != sched.SHORTEST_NS


def test_the_fit_worker_runs_niced_with_short_slices() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpod.fitworker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
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
