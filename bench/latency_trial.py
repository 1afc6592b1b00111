"""A trial that only reports, timing each round trip (trial -> daemon -> decision).

It appends one line per report to ``latency.txt`` in its trial folder: the wall-clock time the
report was sent (ns) and its round trip (ns)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hpod import trial

n = trial.max_resource()
# Seconds of "training" between reports; 0 reports back to back (the worst case).
interval = float(trial.config().get("interval", 0.0))
barrier = Path(os.environ["HPOD_TRIAL_DIR"]).parent.parent / "go"
# Start together, so the figure is for 8 trials reporting at once, not one after another.
trial.report(step=0.5, loss=1.0)
while not barrier.exists():
    time.sleep(0.001)
# A resumed run (a promotion) starts past its checkpoint's level and appends to the same file.
loss_scale = float(trial.config().get("scale", 1.0))
latencies = []
for step in range(int(trial.resume_from()) + 1, n + 1):
    if interval:
        time.sleep(interval)
    wall = time.time_ns()
    t0 = time.perf_counter_ns()
    decision = trial.report(step=step, loss=loss_scale / step)
    latencies.append(f"{wall} {time.perf_counter_ns() - t0}")
    if decision is not trial.CONTINUE:
        break
with (Path(os.environ["HPOD_TRIAL_DIR"]) / "latency.txt").open("a") as f:
    f.write("".join(line + "\n" for line in latencies))
