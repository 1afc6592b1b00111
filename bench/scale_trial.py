"""bench/scale_concurrent.py's trial: reports every ``interval`` seconds until told to stop.

It appends one line to ``<study folder>/up`` at its first report (how the bench counts the runs
launched), times each report's round trip, and once ``<study folder>/stop`` exists (or the daemon
answers anything but CONTINUE, or SIGTERM comes) writes ``timings.txt`` in its trial folder: one
line per report, the wall-clock time it was sent (ns) and its round trip (ns), and exits 0."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hpod import trial

folder = Path(os.environ["HPOD_TRIAL_DIR"])
study = folder.parent.parent
interval = float(trial.config().get("interval", 1.0))
stopped = False


def _stop(signum: int, frame: object) -> None:
    global stopped
    stopped = True


signal.signal(signal.SIGTERM, _stop)
timings: list[str] = []
step = int(trial.resume_from())
while not stopped:
    step += 1
    wall = time.time_ns()
    t0 = time.perf_counter_ns()
    decision = trial.report(step=step, loss=1.0 / step)
    timings.append(f"{wall} {time.perf_counter_ns() - t0}")
    if step == int(trial.resume_from()) + 1:
        fd = os.open(study / "up", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{wall}\n".encode())
        os.close(fd)
    if decision is not trial.CONTINUE or (study / "stop").exists():
        break
    time.sleep(interval)
(folder / "timings.txt").write_text("".join(line + "\n" for line in timings))
