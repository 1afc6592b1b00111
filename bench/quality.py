"""Search quality: hpod's schedulers against Optuna's pruners, on the simulator's benchmarks.

Run it with ``bench/run-quality.sh``: Optuna is installed in the benchmark's own environment
(``bench/.venv-quality``), never as a dependency of hpod.

Every method gets the same total budget, 20 x max_resource epochs (resource units actually
trained: a promoted hpod trial trains only from its checkpoint), the same 4 workers on a virtual
clock, and the same 5 seeds. hpod runs random search to max_resource (fifo), ASHA with promotion,
ASHA with stopping and Hyperband (every bracket). Optuna runs SuccessiveHalvingPruner and
HyperbandPruner with its RandomSampler, so that the comparison is of the pruners, not the samplers
(hpod's searcher here is random too). Optuna's trials are asked and told on the same virtual clock
with the same 4 workers.

The regret is the benchmark's true objective of the configuration each method would answer with,
minus the optimum: for hpod ``Study.best()`` (what ``hpodctl best`` says), for Optuna
``study.best_trial`` (completed trials only), or before any trial completed the trial with the
best last report. The table gives its mean over the seeds and the standard error, at 25, 50 and
100 % of the budget.
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpod.benchmarks import BUILTIN, Benchmark
from hpod.core.spec import StudySpec
from hpod.sim import simulate

FRACTIONS = (0.25, 0.5, 1.0)
WORKERS = 4
ETA = 3

HPOD_METHODS: dict[str, dict[str, Any]] = {
    "hpod random (fifo)": {"type": "fifo"},
    "hpod ASHA promotion": {"type": "asha", "min_resource": 1, "reduction_factor": ETA},
    "hpod ASHA stopping": {
        "type": "asha",
        "min_resource": 1,
        "reduction_factor": ETA,
        "rung_type": "stopping",
    },
    "hpod Hyperband": {"type": "hyperband", "min_resource": 1, "reduction_factor": ETA},
}
OPTUNA_METHODS = ("optuna SuccessiveHalving", "optuna Hyperband")


@dataclass(frozen=True)
class Curve:
    """(epochs used, true objective of the answer) each time the answer changed."""

    points: tuple[tuple[float, float], ...]

    def at(self, epochs: float) -> float | None:
        value = None
        for e, v in self.points:
            if e > epochs + 1e-9:
                break
            value = v
        return value


def run_hpod(bench: Benchmark, method: str, seed: int, budget: float) -> Curve:
    spec = StudySpec.from_mapping(bench.spec_mapping(HPOD_METHODS[method]), base_dir=Path("."))
    res = simulate(
        spec, bench.step, workers=WORKERS, budget=budget, seed=seed, true_value=bench.true_value
    )
    return Curve(tuple((p.epochs, p.true_value) for p in res.history if p.true_value is not None))


def run_optuna(bench: Benchmark, method: str, seed: int, budget: float) -> Curve:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner: optuna.pruners.BasePruner
    if method == "optuna SuccessiveHalving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA)
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=bench.max_resource, reduction_factor=ETA
        )
    study = optuna.create_study(
        direction="minimize" if bench.mode == "min" else "maximize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=pruner,
    )
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        k: optuna.distributions.FloatDistribution(*v["range"]) for k, v in bench.space.items()
    }
    assert bench.true_value is not None
    true_value = bench.true_value
    now, used, seq = 0.0, 0.0, 0
    events: list[tuple[float, int, Any, int, float]] = []
    points: list[tuple[float, float]] = []
    last: int | None = None
    running = 0

    def schedule(trial: Any, step: int) -> None:
        nonlocal seq
        metrics, seconds = bench.step(trial.params, step, seed)
        heapq.heappush(events, (now + seconds, seq, trial, step, metrics[bench.metric]))
        seq += 1

    while used < budget:
        while running < WORKERS:
            trial = study.ask(dists)
            running += 1
            schedule(trial, 1)
        now, _, trial, step, value = heapq.heappop(events)
        used += 1
        trial.report(value, step)
        if step >= bench.max_resource:
            study.tell(trial, value)
            running -= 1
        elif trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            running -= 1
        else:
            schedule(trial, step + 1)
        answer = _optuna_answer(study, optuna)
        if answer is not None and answer.number != last:
            last = answer.number
            points.append((used, true_value(answer.params)))
    return Curve(tuple(points))


def _optuna_answer(study: Any, optuna: Any) -> Any:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if done:
        return study.best_trial
    best, key = None, math.inf
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            v = t.intermediate_values[max(t.intermediate_values)]
            if v < key:
                best, key = t, v
    return best


def _job(args: tuple[str, str, int, float]) -> tuple[str, str, int, Curve, float]:
    name, method, seed, budget = args
    bench = BUILTIN[name]
    started = time.perf_counter()
    run: Callable[[Benchmark, str, int, float], Curve]
    run = run_hpod if method in HPOD_METHODS else run_optuna
    curve = run(bench, method, seed, budget)
    return name, method, seed, curve, time.perf_counter() - started


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {se:.4f}"


def table(
    results: Mapping[tuple[str, str], list[Curve]], budget_of: Mapping[str, float]
) -> list[str]:
    head = ["benchmark", "method", *(f"{int(f * 100)} % budget" for f in FRACTIONS)]
    rows: list[list[str]] = []
    for (name, method), curves in results.items():
        optimum = BUILTIN[name].optimum
        assert optimum is not None
        cells = []
        for f in FRACTIONS:
            vals = [v - optimum for c in curves if (v := c.at(f * budget_of[name])) is not None]
            mark = "" if len(vals) == len(curves) else f" ({len(curves) - len(vals)} no answer)"
            cells.append(_cell(vals) + mark)
        rows.append([name, method, *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    p.add_argument("--benchmarks", nargs="*", default=sorted(BUILTIN))
    args = p.parse_args(argv)
    methods = [*HPOD_METHODS, *OPTUNA_METHODS]
    budget_of = {name: 20.0 * BUILTIN[name].max_resource for name in args.benchmarks}
    jobs = [
        (name, method, seed, budget_of[name])
        for name in args.benchmarks
        for method in methods
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    results: dict[tuple[str, str], list[Curve]] = {
        (name, method): [] for name in args.benchmarks for method in methods
    }
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, method, _seed, curve, _secs in pool.map(_job, jobs):
            results[(name, method)].append(curve)
    print(
        f"mean regret ± standard error over {args.seeds} seeds; budget 20 x max_resource "
        f"epochs; {WORKERS} workers; eta {ETA}; {time.perf_counter() - started:.0f} s"
    )
    for line in table(results, budget_of):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
