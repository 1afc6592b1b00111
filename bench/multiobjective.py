"""Multi-objective quality: hpod's Pareto-ranked schedulers against Syne Tune 0.13's MOASHA and
Optuna's NSGA-II, by hypervolume, on the two-objective benchmarks of ``hpod/benchmarks_mo.py``.

Run it with ``bench/run-multiobjective.sh``: Optuna lives in ``bench/.venv-quality`` and Syne Tune
in ``bench/.venv-syne``, never in hpod's own environment.

Every method gets the same budget, 20 x max_resource resource units (each report counts one; a
promoted hpod trial trains only from its checkpoint; the steps in flight when the budget runs out
count for none), the same 4 workers on a virtual clock, the same 5 seeds (paired: seed s is one
draw of the configurations for all that take them). hpod runs its simulator
(``hpod.sim.simulate(hypervolume=...)``) on a spec with ``[[objective.metrics]]``: random search
to max_resource (fifo), ASHA with promotion and with stopping, Hyperband, and ASHA (promotion)
with the model-based searcher (``searcher = "bo"``: ParEGO's random Chebyshev scalarizations of
the two metrics over the GP, a new weight vector each fit); Syne Tune runs MOASHA
(its defaults: non-dominated sorting, epsilon-net within a front; stopping type) on its own
simulator backend (``bench/syne_multiobjective.py``); Optuna runs ``NSGAIISampler(seed=s)`` (its
defaults: population 50) by ask and tell on the same virtual clock, each trial trained to
max_resource and told both metrics there (Optuna prunes no multi-objective study).

The same configurations (common random numbers): on seed s, the i-th trial hpod's methods and
MOASHA start is the i-th configuration of Optuna's ``RandomSampler(seed=s)`` over the benchmark's
space. NSGA-II (its first generation is random, and within this budget it never gets past it:
that is the same stream) and hpod's BO propose their own.

The measure: the hypervolume of the measured points, every counted report's two metrics, against
the benchmark's reference point (the area the non-dominated ones dominate), at 25, 50 and 100 % of
the budget; and the true hypervolume at 100 %: that of the noise-free objectives at max_resource of
the configurations on the measured front (what the front is worth once its trials are trained to
the end). Both are to be read against the hypervolume of the true front, in the header.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hpod.benchmarks_mo import MULTI, Front, Hypervolume, MultiBenchmark
from hpod.core.plans import Suggestion
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
    "hpod BO (ParEGO) + ASHA": {"type": "asha", "min_resource": 1, "reduction_factor": ETA},
}
# Model-based: proposes its own configurations (random Chebyshev scalarizations over the GP).
HPOD_SEARCHERS: dict[str, dict[str, Any]] = {"hpod BO (ParEGO) + ASHA": {"type": "bo"}}
NSGA = "optuna NSGA-II"
MOASHA = "syne-tune MOASHA"
HERE = Path(__file__).resolve().parent
SYNE_PYTHON = HERE / ".venv-syne" / "bin" / "python"


@dataclass(frozen=True)
class Curve:
    """(epochs used, hypervolume, true hypervolume) each time the measured front changed."""

    points: tuple[tuple[float, float, float | None], ...]
    trials: int = 0

    def at(self, epochs: float) -> tuple[float, float | None]:
        out: tuple[float, float | None] = (0.0, None)
        for e, hv, true in self.points:
            if e > epochs + 1e-9:
                break
            out = (hv, true)
        return out


class Stream:
    """The configurations Optuna's ``RandomSampler(seed)`` draws over the benchmark's space."""

    needs_history = True  # as bench/quality.py's SharedStream

    def __init__(self, bench: MultiBenchmark, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        self._dists = _distributions(bench)
        self._configs: list[dict[str, Any]] = []

    def __getitem__(self, number: int) -> dict[str, Any]:
        while len(self._configs) <= number:
            self._configs.append(dict(self._study.ask(self._dists).params))
        return dict(self._configs[number])

    def suggest(self, number: int, history: Sequence[Any]) -> Suggestion | None:
        return Suggestion(self[number])


def _distributions(bench: MultiBenchmark) -> dict[str, Any]:
    import optuna

    return {k: optuna.distributions.FloatDistribution(*v["range"]) for k, v in bench.space.items()}


def run_hpod(bench: MultiBenchmark, method: str, seed: int, budget: float) -> Curve:
    raw = bench.spec_mapping(HPOD_METHODS[method])
    model_based = method in HPOD_SEARCHERS
    if model_based:
        raw["searcher"] = dict(HPOD_SEARCHERS[method])
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    res = simulate(
        spec,
        bench.step,
        workers=WORKERS,
        budget=budget,
        seed=seed,
        searcher=None if model_based else Stream(bench, seed),
        hypervolume=Hypervolume.of(bench),
    )
    return Curve(res.hv_history, res.trials)


def run_nsga(bench: MultiBenchmark, seed: int, budget: float) -> Curve:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["minimize" if m.startswith("min") else "maximize" for _, m in bench.metrics]
    study = optuna.create_study(
        directions=directions, sampler=optuna.samplers.NSGAIISampler(seed=seed)
    )
    dists = _distributions(bench)
    hv = Hypervolume.of(bench)
    front = Front(hv)
    names = [n for n, _ in bench.metrics]
    now, used, seq, running, trials = 0.0, 0.0, 0, 0, 0
    events: list[tuple[float, int, Any, int, dict[str, float]]] = []
    points: list[tuple[float, float, float | None]] = []

    def schedule(trial: Any, step: int) -> None:
        nonlocal seq
        metrics, seconds = bench.step(trial.params, step, seed)
        heapq.heappush(events, (now + seconds, seq, trial, step, metrics))
        seq += 1

    while used < budget:
        while running < WORKERS:
            trial = study.ask(dists)
            running += 1
            trials += 1
            schedule(trial, 1)
        now, _, trial, step, metrics = heapq.heappop(events)
        used += 1
        if front.add(hv.point(metrics), dict(trial.params)):
            points.append((used, front.hypervolume(), front.true_hypervolume()))
        if step >= bench.max_resource:
            study.tell(trial, [metrics[n] for n in names])
            running -= 1
        else:
            schedule(trial, step + 1)
    return Curve(tuple(points), trials)


def _job(args: tuple[str, str, int, float]) -> tuple[str, str, int, Curve, float]:
    name, method, seed, budget = args
    bench = MULTI[name]
    started = time.perf_counter()
    curve = (
        run_nsga(bench, seed, budget) if method == NSGA else run_hpod(bench, method, seed, budget)
    )
    return name, method, seed, curve, time.perf_counter() - started


def start_moasha(benchmarks: Sequence[str], seeds: int, tmp: str) -> list[subprocess.Popen[str]]:
    """Syne Tune's runs, one process per benchmark, handed the same configuration streams."""
    procs = []
    for name in benchmarks:
        bench = MULTI[name]
        head = int(20 * bench.max_resource) + WORKERS  # more than any run starts
        streams = {s: Stream(bench, s) for s in range(seeds)}
        configs = {name: {str(s): [st[i] for i in range(head)] for s, st in streams.items()}}
        path = Path(tmp) / f"configs-{name}.json"
        path.write_text(json.dumps(configs))
        cmd = [str(SYNE_PYTHON), str(HERE / "syne_multiobjective.py"), "--seeds", str(seeds)]
        cmd += ["--benchmarks", name, "--configs", str(path)]
        env = {**os.environ, "PYTHONPATH": ""}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    return procs


def read_moasha(
    procs: Sequence[subprocess.Popen[str]], notes: list[str]
) -> dict[tuple[str, int], Curve]:
    """The rows of the runs that ended; a process that failed is noted, the table made anyway."""
    out: dict[tuple[str, int], Curve] = {}
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            notes.append(f"bench/syne_multiobjective.py exited {proc.returncode}: rows missing")
        for line in stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                pts = tuple((float(e), float(h), t) for e, h, t in row["points"])
                out[(row["benchmark"], int(row["seed"]))] = Curve(pts, int(row["trials"]))
    return out


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {se:.4f}"


def table(
    results: Mapping[tuple[str, str], Mapping[int, Curve]], budget_of: Mapping[str, float]
) -> list[str]:
    head = [
        "benchmark",
        "method",
        *(f"HV {int(f * 100)} %" for f in FRACTIONS),
        "true HV 100 %",
        "trials",
    ]
    rows: list[list[str]] = []
    for (name, method), curves in results.items():
        if not curves:
            continue
        cells = [_cell([c.at(f * budget_of[name])[0] for c in curves.values()]) for f in FRACTIONS]
        true = [t for c in curves.values() if (t := c.at(budget_of[name])[1]) is not None]
        cells.append(_cell(true))
        cells.append(f"{statistics.fmean(c.trials for c in curves.values()):.0f}")
        rows.append([name, method, *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )
    return out


def paired(
    results: Mapping[tuple[str, str], Mapping[int, Curve]],
    budget_of: Mapping[str, float],
    benchmarks: Sequence[str],
) -> list[str]:
    """hpod's best method (highest mean hypervolume at 100 %) against each baseline, seed by
    seed: the mean difference, its standard error, and on how many seeds hpod was ahead."""
    out = []
    for name in benchmarks:
        budget = budget_of[name]

        def hv(method: str, seed: int, _budget: float = budget, _name: str = name) -> float:
            return results[(_name, method)][seed].at(_budget)[0]

        hpod = [m for m in HPOD_METHODS if results.get((name, m))]
        best = max(hpod, key=lambda m: statistics.fmean(hv(m, s) for s in results[(name, m)]))
        for other in (MOASHA, NSGA):
            seeds = sorted(set(results[(name, best)]) & set(results.get((name, other), {})))
            if not seeds:
                continue
            diff = [hv(best, s) - hv(other, s) for s in seeds]
            ahead = sum(d > 0 for d in diff)
            ties = sum(d == 0 for d in diff)
            out.append(
                f"{name}: {best} - {other}: {_cell(diff)} over {len(seeds)} paired seeds "
                f"(ahead on {ahead}, tied on {ties}, behind on {len(seeds) - ahead - ties})"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    p.add_argument("--benchmarks", nargs="*", default=sorted(MULTI))
    p.add_argument("--no-syne", action="store_true", help="leave out Syne Tune's MOASHA")
    args = p.parse_args(argv)
    budget_of = {name: 20.0 * MULTI[name].max_resource for name in args.benchmarks}
    methods = [*HPOD_METHODS, NSGA]
    started = time.perf_counter()
    results: dict[tuple[str, str], dict[int, Curve]] = {
        (n, m): {} for n in args.benchmarks for m in [*methods, MOASHA]
    }
    notes = []
    with tempfile.TemporaryDirectory(prefix="hpod-mo-") as tmp:
        procs = []
        if args.no_syne:
            notes.append(f"{MOASHA} left out (--no-syne)")
        elif not SYNE_PYTHON.exists():
            notes.append(f"{MOASHA} left out: no bench/.venv-syne (bench/run-syne.sh --setup)")
        else:
            procs = start_moasha(args.benchmarks, args.seeds, tmp)
        jobs = [
            (n, m, s, budget_of[n])
            for n in args.benchmarks
            for m in methods
            for s in range(args.seeds)
        ]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for name, method, seed, curve, _secs in pool.map(_job, jobs):
                results[(name, method)][seed] = curve
        for (name, seed), curve in read_moasha(procs, notes).items():
            results[(name, MOASHA)][seed] = curve
    print(
        f"mean hypervolume ± standard error over {args.seeds} paired seeds; budget 20 x "
        f"max_resource; {WORKERS} workers; eta {ETA}; {time.perf_counter() - started:.0f} s"
    )
    for name in args.benchmarks:
        b = MULTI[name]
        print(
            f"{name}: metrics {', '.join(f'{n} ({m})' for n, m in b.metrics)}; reference "
            f"{b.reference}; true front's hypervolume {b.front_hypervolume:.4f}"
        )
    print()
    for line in table(results, budget_of):
        print(line)
    print()
    for line in paired(results, budget_of, args.benchmarks):
        print(line)
    for line in notes:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
