"""How well DyHPO's model knows its own errors: the share of held-out points whose true value
lies within its +-1 and +-2 standard deviations (a calibrated Gaussian: 68 % and 95 %).

A simulated DyHPO run (4 workers, max_resource 27, rungs 1, 3, 9, 27) on a built-in benchmark;
then its last model, conditioned on every row of the study as a decision conditions it, predicts
300 points it never saw: random configurations at each rung in turn, each with its own curve below
the rung (the benchmark's reports under another seed's noise), as the candidates and paused trials
a decision scores. Printed per seed: the coverages (all points, and those at the first rung, where
new configurations are scored), the median |error| / sd, and the variance scale the fit measured
on its held-out rows (hpod.fit.dyhpo_torch).

    .venv/bin/python bench/dyhpo_calibration.py [--benchmark curves-noisy] [--budget 600]
        [--seeds 2] [--options '{}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from hpod.benchmarks import BUILTIN
from hpod.core.dyhpo import DyHPOScheduler
from hpod.core.models import FitRequest
from hpod.core.spec import StudySpec
from hpod.core.study import Study
from hpod.sim import simulate

MAX_RESOURCE = 27
POINTS = 300


def run(name: str, seed: int, budget: float, options: dict[str, Any]) -> dict[str, float]:
    bench = BUILTIN[name]
    sched_table = {"type": "dyhpo", "min_resource": 1, "reduction_factor": 3}
    raw = bench.spec_mapping({**sched_table, "max_resource": MAX_RESOURCE, "options": options})
    raw["searcher"] = {"type": "dyhpo"}
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    studies: list[Study] = []
    install = Study.install

    def keep(self: Study, request: FitRequest, model: Any) -> None:
        studies.append(self)
        install(self, request, model)

    Study.install = keep  # type: ignore[method-assign]
    try:
        simulate(spec, bench.step, workers=4, budget=budget, seed=seed)
    finally:
        Study.install = install  # type: ignore[method-assign]
    study = studies[-1]
    sched = study._scheduler
    assert isinstance(sched, DyHPOScheduler)
    assert sched.model is not None
    rows = sched._training_rows(study)
    lo, span = sched._scale(rows)
    post = sched._posterior(sched.model, rows, lo, span)
    rng = np.random.default_rng([seed, 0xCA11B])
    xs, bs, cs, ys = [], [], [], []
    for i in range(POINTS):
        config = spec.space.sample(rng)
        level = float(sched.rungs[i % len(sched.rungs)])
        curve = {
            float(r): bench.step(config, r, seed + 7919)[0][bench.metric]
            for r in range(1, int(level) + 1)
        }
        xs.append(spec.space.encode(config))
        bs.append(sched._budget(level))
        cs.append(sched._curve({r: v for r, v in curve.items() if r < level}, level, lo, span))
        ys.append((curve[level] - lo) / span)
    mu, var = post.predict(np.stack(xs), np.array(bs), np.stack(cs))
    y = (np.array(ys) - post.y_mean) / post.y_std
    scale = float(getattr(post, "var_scale", 1.0))
    noise = float(getattr(post, "noise", 0.0)) * scale
    z = np.abs(y - mu) / np.sqrt(var + noise)
    first = np.array(bs) == 0.0
    return {
        "rows": float(len(rows)),
        "within_1sd": float((z <= 1).mean()),
        "within_2sd": float((z <= 2).mean()),
        "first_rung_1sd": float((z[first] <= 1).mean()),
        "first_rung_2sd": float((z[first] <= 2).mean()),
        "median_z": float(np.median(z)),
        "var_scale": scale,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", default="curves-noisy", choices=sorted(BUILTIN))
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--options", default="{}", help="[scheduler.options] as JSON")
    args = p.parse_args(argv)
    for seed in range(args.seeds):
        r = run(args.benchmark, seed, args.budget, json.loads(args.options))
        cells = " ".join(f"{k} {v:.3g}" for k, v in r.items())
        print(f"{args.benchmark} seed {seed}: {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
