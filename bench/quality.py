"""Search quality: hpod's schedulers against Optuna's pruners, on the simulator's benchmarks.

Run it with ``bench/run-quality.sh``: Optuna is installed in the benchmark's own environment
(``bench/.venv-quality``), never as a dependency of hpod.

Every method gets the same total budget, 20 x max_resource epochs (resource units actually
trained: a promoted hpod trial trains only from its checkpoint; the steps in flight when the budget
runs out are not counted, for either), the same 4 workers on a virtual clock, and the same 5 seeds.
hpod runs random search to max_resource (fifo), ASHA with promotion, ASHA with stopping and
Hyperband (every bracket). Optuna runs SuccessiveHalvingPruner and HyperbandPruner with its
RandomSampler and the pruners' documented defaults but min_resource 1 and reduction_factor 3 (as
hpod's), asked and told on the same virtual clock with the same 4 workers.

The same configurations for every method (common random numbers): on seed s, the i-th trial any
method starts is the i-th configuration Optuna's ``RandomSampler(seed=s)`` draws (hpod is handed
that stream through ``simulate(searcher=...)``; Optuna samples on its own and the run checks the two
agree). With 5 seeds the luck of the draw is otherwise larger than the differences between the
pruners: the best of the first 350 random configurations alone differs by 0.006 in regret between
the two generators on ``curves-parallel``. ``--own-samplers`` gives hpod its own random searcher.

The regret is the benchmark's true objective (at max_resource, without noise) of the configuration
a method would answer with, minus the optimum, with one rule for all: ``Study.best()``'s (what
``hpodctl best`` says), the trial with the best last report wherever it got to, the further one on
ties. ``--optuna-best-trial`` lets Optuna answer with ``study.best_trial`` (completed trials only)
instead. The table gives the mean over the seeds and the standard error, at 25, 50 and 100 % of
the budget.
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
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


class SharedStream:
    """The configurations Optuna's ``RandomSampler(seed)`` draws, in the order it draws them:
    the i-th trial any method starts on a seed is the same configuration (common random numbers),
    so the methods differ by their schedulers and pruners, not by their random number generators.
    Optuna's own runs still sample with their RandomSampler; ``run_optuna`` checks they match."""

    def __init__(self, bench: Benchmark, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        self._dists = _distributions(bench)
        self._configs: list[dict[str, Any]] = []

    def __getitem__(self, number: int) -> dict[str, Any]:
        while len(self._configs) <= number:
            trial = self._study.ask(self._dists)
            self._configs.append(dict(trial.params))
        return dict(self._configs[number])

    def suggest(self, number: int, history: Sequence[Any]) -> dict[str, Any] | None:
        return self[number]


def _distributions(bench: Benchmark) -> dict[str, Any]:
    import optuna

    return {k: optuna.distributions.FloatDistribution(*v["range"]) for k, v in bench.space.items()}


def run_hpod(bench: Benchmark, method: str, seed: int, budget: float, shared: bool = True) -> Curve:
    spec = StudySpec.from_mapping(bench.spec_mapping(HPOD_METHODS[method]), base_dir=Path("."))
    res = simulate(
        spec,
        bench.step,
        workers=WORKERS,
        budget=budget,
        seed=seed,
        true_value=bench.true_value,
        searcher=SharedStream(bench, seed) if shared else None,
    )
    return Curve(tuple((p.epochs, p.true_value) for p in res.history if p.true_value is not None))


def run_optuna(
    bench: Benchmark,
    method: str,
    seed: int,
    budget: float,
    shared: bool = True,
    best_trial: bool = False,
) -> Curve:
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
        # A fixed name: HyperbandPruner assigns brackets by a hash of it, so a random one would
        # make the run irreproducible.
        study_name=f"{bench.name}-{seed}",
        direction="minimize" if bench.mode == "min" else "maximize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=pruner,
    )
    dists = _distributions(bench)
    stream = SharedStream(bench, seed) if shared else None
    assert bench.true_value is not None
    true_value = bench.true_value
    now, used, seq = 0.0, 0.0, 0
    events: list[tuple[float, int, Any, int, float]] = []
    points: list[tuple[float, float]] = []
    last: int | None = None
    running = 0
    sign = 1.0 if bench.mode == "min" else -1.0
    latest: dict[int, tuple[float, float, int]] = {}  # trial number: its last report, as a key
    params: dict[int, dict[str, Any]] = {}

    def schedule(trial: Any, step: int) -> None:
        nonlocal seq
        metrics, seconds = bench.step(trial.params, step, seed)
        heapq.heappush(events, (now + seconds, seq, trial, step, metrics[bench.metric]))
        seq += 1

    while used < budget:
        while running < WORKERS:
            trial = study.ask(dists)
            # The sampler is Optuna's own; this only checks that the stream hpod got is its.
            assert stream is None or trial.params == stream[trial.number], "streams differ"
            running += 1
            params[trial.number] = dict(trial.params)
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
        latest[trial.number] = (sign * value, -step, trial.number)
        if best_trial:
            answer = _optuna_best_trial(study, optuna, latest)
        else:
            # Study.best()'s rule: the best last report of any trial, the further one on ties.
            answer = min(latest.values(), default=None)
        if answer is not None and answer[2] != last:
            last = answer[2]
            points.append((used, true_value(params[last])))
    return Curve(tuple(points))


def _optuna_best_trial(
    study: Any, optuna: Any, latest: Mapping[int, tuple[float, float, int]]
) -> tuple[float, float, int] | None:
    """Optuna's own answer: ``study.best_trial`` (completed trials only); before any trial
    completed, the best last report."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if done:
        return latest[study.best_trial.number]
    return min(latest.values(), default=None)


def _job(args: tuple[str, str, int, float, bool, bool]) -> tuple[str, str, int, Curve, float]:
    name, method, seed, budget, shared, best_trial = args
    bench = BUILTIN[name]
    started = time.perf_counter()
    if method in HPOD_METHODS:
        curve = run_hpod(bench, method, seed, budget, shared)
    else:
        curve = run_optuna(bench, method, seed, budget, shared, best_trial)
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
    p.add_argument(
        "--own-samplers",
        action="store_true",
        help="hpod samples with its own random searcher instead of Optuna's stream",
    )
    p.add_argument(
        "--optuna-best-trial",
        action="store_true",
        help="Optuna answers with study.best_trial (completed trials only), not by best()'s rule",
    )
    args = p.parse_args(argv)
    methods = [*HPOD_METHODS, *OPTUNA_METHODS]
    budget_of = {name: 20.0 * BUILTIN[name].max_resource for name in args.benchmarks}
    jobs = [
        (name, method, seed, budget_of[name], not args.own_samplers, args.optuna_best_trial)
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
        f"epochs; {WORKERS} workers; eta {ETA}; "
        + ("each its own sampler" if args.own_samplers else "the same configurations for all")
        + ("; Optuna answers best_trial" if args.optuna_best_trial else "")
        + f"; {time.perf_counter() - started:.0f} s"
    )
    for line in table(results, budget_of):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
