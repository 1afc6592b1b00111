"""A trial that only reports, timing each round trip (trial -> daemon -> decision)."""

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
latencies = []
for step in range(1, n + 1):
    if interval:
        time.sleep(interval)
    t0 = time.perf_counter_ns()
    decision = trial.report(step=step, loss=1.0 / step)
    latencies.append(time.perf_counter_ns() - t0)
    if decision is not trial.CONTINUE:
        break
(Path(os.environ["HPOD_TRIAL_DIR"]) / "latency.txt").write_text(
    "\n".join(str(x) for x in latencies)
)
