"""What a simulated DyHPO run costs in wall time as its budget doubles (issue 19: fits that grow
too fast made a run at 3,240 epochs take 340 s against 35-65 s at 1,620).

One benchmark, one seed, 4 workers, ``max_resource`` 27 (rungs 1, 3, 9, 27), budgets 60 x and
120 x max_resource (1,620 and 3,240 epochs): each run's wall time, split into the model fits
(synchronous in the simulator; the daemon runs them in its worker) and the rest (decisions,
reports), the number of fits and the largest training set, then the ratio of the two runs.
Target: under 4x.

    .venv/bin/python bench/dyhpo_cost.py [--benchmark curves-noisy] [--seed 0]
        [--multiples 60 120] [--options '{"max_rows": 512}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hpod.benchmarks import BUILTIN
from hpod.core.models import FitRequest
from hpod.core.spec import StudySpec
from hpod.sim import simulate

MAX_RESOURCE = 27
WORKERS = 4


def run(name: str, seed: int, budget: float, options: dict[str, Any]) -> dict[str, Any]:
    bench = BUILTIN[name]
    sched = {
        "type": "dyhpo",
        "min_resource": 1,
        "reduction_factor": 3,
        "max_resource": MAX_RESOURCE,
    }
    if options:
        sched["options"] = options
    raw = bench.spec_mapping(sched)
    raw["searcher"] = {"type": "dyhpo"}
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    rows: list[int] = []
    import hpod.sim as sim

    real_fit = sim.fit

    def counting_fit(request: FitRequest) -> Any:
        rows.append(len(request.data["y"]))
        return real_fit(request)

    sim.fit = counting_fit  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        res = simulate(spec, bench.step, workers=WORKERS, budget=budget, seed=seed)
        wall = time.perf_counter() - started
    finally:
        sim.fit = real_fit  # type: ignore[assignment]
    return {
        "budget": budget,
        "wall_s": wall,
        "fit_s": sum(res.fit_seconds),
        "decide_s": sum(res.decision_seconds),
        "fits": len(res.fit_seconds),
        "max_rows": max(rows, default=0),
        "trials": res.trials,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", default="curves-noisy", choices=sorted(BUILTIN))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multiples", type=int, nargs=2, default=[60, 120])
    p.add_argument("--options", default="{}", help="[scheduler.options] as JSON")
    args = p.parse_args(argv)
    options = json.loads(args.options)
    print(
        f"DyHPO on {args.benchmark}, seed {args.seed}, {WORKERS} workers, max_resource "
        f"{MAX_RESOURCE}, options {options}"
    )
    out = []
    for m in args.multiples:
        r = run(args.benchmark, args.seed, float(m * MAX_RESOURCE), options)
        out.append(r)
        print(
            f"  {r['budget']:6.0f} epochs: {r['wall_s']:7.1f} s wall (fits {r['fit_s']:.1f} s in "
            f"{r['fits']} fits, largest {r['max_rows']} rows; decisions {r['decide_s']:.1f} s), "
            f"{r['trials']} trials",
            flush=True,
        )
    ratio = out[1]["wall_s"] / out[0]["wall_s"]
    print(f"  ratio {ratio:.2f}x (target < 4x): " + ("met" if ratio < 4 else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
