"""A trial that runs in a blink, for tests and for trying hpod without torch (stdlib only).

    loss(x, y, step) = (x - 0.3)^2 + (y + 0.2)^2 + penalty(variant) + 1 / step

The last term shrinks with the step, so every trial draws a learning curve, the same for every
configuration: the ranking at any step is the ranking of the bowl, and the optimum is
x = 0.3, y = -0.2, variant = "good", where the loss at step k is exactly 1 / k.

Configuration (from `trial.config()`; every key has a default, so `python trial.py` works
without a daemon):
    x, y      the point (default 0, 0)
    variant   "good" (default) or "bad" (adds 0.1): a choice parameter to search over
    sleep     seconds to sleep per step (default 0): long enough trials to pause, stop, time out
    fail      true (or "true"/"yes"/1): write "boom: deliberate failure for the tests" to stderr
              and exit 3 before reporting anything (the tests' failing trial)
    fail_at   a step: report the steps before it, then fail the same way at that step

It reports `step=k, loss=...` for k in resume_from()+1 .. max_resource() (10 outside hpod).
On PAUSE or STOP, and on SIGTERM (at the end of the step), it writes `state.json` into the
checkpoint folder and exits 0; a resumed run reads it and says where it left off.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from hpod import trial

DEFAULTS = {"x": 0.0, "y": 0.0, "variant": "good", "sleep": 0.0, "fail": False, "fail_at": 0}
STEPS_OUTSIDE_HPOD = 10
FAIL_MESSAGE = "boom: deliberate failure for the tests"
FAIL_EXIT = 3

_terminated = False


def _on_sigterm(signum, frame):
    # Only record; the loop acts at the end of the step.
    global _terminated
    _terminated = True


def truthy(value):
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def loss(x, y, variant, step):
    penalty = 0.0 if variant == "good" else 0.1
    return (x - 0.3) ** 2 + (y + 0.2) ** 2 + penalty + 1.0 / step


def fail():
    print(FAIL_MESSAGE, file=sys.stderr, flush=True)
    sys.exit(FAIL_EXIT)


def save_state(step, value):
    if not (trial.inside_hpod() or "HPOD_CHECKPOINT_DIR" in os.environ):
        return  # by hand: leave no files behind
    path = trial.checkpoint_dir() / "state.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "loss": value}))
    os.replace(tmp, path)  # atomic: a kill mid-write keeps the previous state whole


def main():
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = trial.config(defaults=DEFAULTS)
    if truthy(cfg["fail"]):
        fail()
    x, y, variant = float(cfg["x"]), float(cfg["y"]), str(cfg["variant"])
    pause = float(cfg["sleep"])
    fail_at = int(cfg["fail_at"])

    start = trial.resume_from()
    if start > 0:
        saved = Path(os.environ.get("HPOD_CHECKPOINT_DIR", "checkpoint")) / "state.json"
        if saved.exists():
            print(f"resumed: {saved.read_text()}", flush=True)
        else:
            print("resumed without a saved state: nothing to load anyway", flush=True)

    step, value = start, float("nan")
    for step in range(start + 1, trial.max_resource(default=STEPS_OUTSIDE_HPOD) + 1):
        if fail_at and step >= fail_at:
            fail()
        if pause:
            time.sleep(pause)
        value = loss(x, y, variant, step)
        decision = trial.report(step=step, loss=value)
        print(f"step {step} loss {value:.6f} -> {decision}", flush=True)
        if decision != trial.CONTINUE or _terminated:
            break
    save_state(step, value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
