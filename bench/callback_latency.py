"""The delay from a trial's exit to hpod.Optimizer's on_trial_end callback (issue 14: target
under 10 ms on this machine).

Runs one study on a daemon of the optimizer's own (``start_locally``): ``--trials`` trials of
bench/callback_trial.py, ``--concurrent`` at a time, each reporting once and exiting at once
after writing its clock (CLOCK_MONOTONIC: the same clock in every process). The callback takes
the same clock first thing. Prints the median, p90, p99 and max of callback - exit over every
trial; the same to the trial_ended event's commit (the store's ``at``, wall clock, against the
exit's wall time), the daemon's part; and from that commit to the callback, the optimizer's.

    .venv/bin/python bench/callback_latency.py [--trials 200] [--concurrent 2] [--json]

What the delay holds: the kernel's exit of the trial and of its shim, the daemon's child watcher
seeing it, the exit's commit to SQLite (with its trial_ended event), the long poll of the
``events`` wire method woken by the commit, its answer over the socket, and the optimizer's
thread calling the callback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpod import Optimizer

HERE = Path(__file__).resolve().parent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "median_ms": statistics.median(values_ms),
        "p90_ms": _pct(values_ms, 0.90),
        "p99_ms": _pct(values_ms, 0.99),
        "max_ms": max(values_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    stamps = Path(tempfile.mkdtemp(prefix="hpodbench"))
    called: dict[int, float] = {}
    # Wall minus monotonic, to set the trials' monotonic exits against the store's wall `at`.
    wall_offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)

    def on_trial_end(trial: int, objective: Any, iteration: Any, config: Any, best: Any) -> None:
        called[trial] = time.clock_gettime(time.CLOCK_MONOTONIC)

    optimizer = Optimizer(
        command=[sys.executable, str(HERE / "callback_trial.py")],
        workdir=HERE,
        name="callback-latency",
        space={"x": ("uniform", 0.0, 1.0)},
        metric="loss",
        mode="min",
        resource="step",
        max_resource=1,
        max_trials=args.trials,
        max_concurrent=args.concurrent,
        env={"BENCH_STAMPS": str(stamps)},
    )
    try:
        with optimizer:
            study = optimizer.start_locally(on_trial_end=on_trial_end)
            optimizer.wait()
            local = optimizer._local
            assert local is not None
            db = sqlite3.connect(
                f"file:{Path(local.root) / 'state' / 'hpod.sqlite3'}?mode=ro", uri=True
            )
            ended_at = dict(
                db.execute(
                    "SELECT trial_id, at FROM events WHERE study_id = ? AND kind = 'trial_ended'",
                    (study,),
                ).fetchall()
            )
            db.close()
        exits = {int(p.name): float(p.read_text()) for p in stamps.iterdir()}
    finally:
        shutil.rmtree(stamps, ignore_errors=True)
    missing = sorted(set(exits) - set(called))
    to_callback = [(called[t] - exits[t]) * 1000.0 for t in exits if t in called]
    to_event = [(ended_at[t] - (exits[t] + wall_offset)) * 1000.0 for t in exits if t in ended_at]
    # The optimizer's own part: from the event's commit to the callback.
    event_to_callback = [
        (called[t] + wall_offset - ended_at[t]) * 1000.0 for t in called if t in ended_at
    ]
    result = {
        "trials": args.trials,
        "concurrent": args.concurrent,
        "cores": os.cpu_count(),
        "exit_to_callback": _figures(to_callback),
        "exit_to_event_commit": _figures(to_event),
        "event_commit_to_callback": _figures(event_to_callback),
        "callbacks_missing": missing,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("exit_to_callback", "exit_to_event_commit", "event_commit_to_callback"):
            f = result[name]
            assert isinstance(f, dict)
            print(
                f"{name:24s} n={f['n']}  median {f['median_ms']:.2f} ms  p90 {f['p90_ms']:.2f} ms"
                f"  p99 {f['p99_ms']:.2f} ms  max {f['max_ms']:.2f} ms"
            )
        if missing:
            print(f"no callback for trials {missing}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
