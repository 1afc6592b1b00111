"""How long a model-based decision takes: hpod's DyHPO (and BO) on the simulator's benchmarks.

A decision is ``Study.next_launch`` at a free slot (scoring the paused trials and the new
candidates, or the acquisition over BO's candidates), on the daemon's event loop; the model fits are
not in it (the daemon runs them in its worker process; the simulator runs them synchronously,
between decisions, and they are timed apart). Prints, per benchmark, the median and max decision
time and the fits' median and max.

    .venv/bin/python bench/decision_time.py [--method dyhpo|bo] [--seeds 1] [--benchmarks ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

# One BLAS thread, before numpy loads: as the daemon's fit worker runs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hpod.benchmarks import BUILTIN
from hpod.core.spec import StudySpec
from hpod.sim import simulate

SCHEDULERS = {
    "dyhpo": {"type": "dyhpo", "min_resource": 1, "reduction_factor": 3},
    "bo": {"type": "asha", "min_resource": 1, "reduction_factor": 3},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=sorted(SCHEDULERS), default="dyhpo")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--benchmarks", nargs="*", default=sorted(BUILTIN))
    args = p.parse_args()
    print(f"hpod {args.method}: decision and fit times, 4 workers, budget 20 x max_resource")
    every: list[float] = []
    for name in args.benchmarks:
        bench = BUILTIN[name]
        decisions: list[float] = []
        fits: list[float] = []
        for seed in range(args.seeds):
            raw = bench.spec_mapping(SCHEDULERS[args.method], seed=seed)
            raw["searcher"] = {"type": args.method, "seed": seed}
            spec = StudySpec.from_mapping(raw, base_dir=Path("."))
            res = simulate(spec, bench.step, workers=4, budget=20 * bench.max_resource, seed=seed)
            decisions.extend(res.decision_seconds)
            fits.extend(res.fit_seconds)
        every.extend(decisions)
        med = statistics.median(decisions) * 1e3
        print(
            f"  {name:16} decisions {len(decisions):4}: median {med:6.2f}"
            f" ms, max {max(decisions) * 1e3:7.2f} ms | fits {len(fits):3}: median "
            f"{statistics.median(fits):.2f} s, max {max(fits):.2f} s"
        )
    med = statistics.median(every) * 1e3
    print(
        f"  all: median {med:.2f} ms, max {max(every) * 1e3:.2f} ms; target median < 50 ms: "
        + ("met" if med < 50 else "NOT met")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
