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

Model-based peers: Optuna's TPESampler (its defaults, ``seed=s``) with the same HyperbandPruner, on
the same clock (it proposes its own configurations); and Syne Tune 0.13.0's promotion-type ASHA and
DyHPO on Syne Tune's own simulator backend, run by ``bench/syne_baselines.py`` in
``bench/.venv-syne`` (Syne Tune pins numpy < 1.27; ``bench/run-quality.sh`` makes that environment)
with the same budget counting, workers, rung levels and answer rule; Syne Tune's ASHA is handed the
same configuration stream (``points_to_evaluate``). Without that environment those rows are left
out, and the output says so. DyHPO takes minutes a run, so its rows are cached
(``bench/results/syne-baselines.jsonl``, keyed by seed, benchmark and a hash of the code that makes
them); the output says which rows came from the cache.

Decision times, in ms, the median and the max over every decision of the 5 seeds: a launch decision
picks what a free worker runs (hpod: ``Study.next_launch`` without the time the shared stream takes
to draw; Optuna: ``study.ask``; Syne Tune: ``scheduler.suggest``), a report decision answers a
report (hpod: ``Study.on_report``; Optuna: ``trial.report``, ``should_prune`` and ``tell``; Syne
Tune: ``scheduler.on_trial_result``).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One BLAS thread, before numpy loads: the GP fits of hpod's BO are small and OpenBLAS's second
# thread only spins on a 2-core machine (3x slower fits), and the jobs run in parallel anyway.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hpod.benchmarks import BUILTIN, Benchmark
from hpod.core.plans import Suggestion
from hpod.core.spec import StudySpec
from hpod.core.study import Study
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
    "hpod BO + ASHA": {"type": "asha", "min_resource": 1, "reduction_factor": ETA},
    "hpod DyHPO": {"type": "dyhpo", "min_resource": 1, "reduction_factor": ETA},
}
# The model-based ones propose their own configurations (the shared stream is random draws); their
# fits run synchronously in the simulator and are not counted in the decision times.
HPOD_SEARCHERS: dict[str, dict[str, Any]] = {
    "hpod BO + ASHA": {"type": "bo"},
    "hpod DyHPO": {"type": "dyhpo"},
}
OPTUNA_METHODS = ("optuna SuccessiveHalving", "optuna Hyperband", "optuna TPE + Hyperband")
SYNE_METHODS = ("syne-tune ASHA promotion", "syne-tune DyHPO")
HERE = Path(__file__).resolve().parent
SYNE_PYTHON = HERE / ".venv-syne" / "bin" / "python"
SYNE_CACHE = HERE / "results" / "syne-baselines.jsonl"


@dataclass(frozen=True)
class Curve:
    """(epochs used, true objective of the answer) each time the answer changed."""

    points: tuple[tuple[float, float], ...]
    launch_ms: tuple[float, ...] = ()  # the run's decision times (see the module's docstring)
    report_ms: tuple[float, ...] = ()

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
        self.seconds = 0.0  # spent drawing: not hpod's decision time

    def __getitem__(self, number: int) -> dict[str, Any]:
        started = time.perf_counter()
        while len(self._configs) <= number:
            trial = self._study.ask(self._dists)
            self._configs.append(dict(trial.params))
        self.seconds += time.perf_counter() - started
        return dict(self._configs[number])

    # It ignores the history, but the study built it for every searcher that did not say so,
    # and the measured decision times include that: kept, so they stay comparable.
    needs_history = True

    def suggest(self, number: int, history: Sequence[Any]) -> Suggestion | None:
        return Suggestion(self[number])


def _distributions(bench: Benchmark) -> dict[str, Any]:
    import optuna

    return {k: optuna.distributions.FloatDistribution(*v["range"]) for k, v in bench.space.items()}


@contextlib.contextmanager
def _timed_study(
    stream: SharedStream | None, launch: list[float], report: list[float]
) -> Iterator[None]:
    """Times ``Study.next_launch`` (less the stream's drawing) and ``Study.on_report``, in ms."""
    next_launch, on_report = Study.next_launch, Study.on_report

    def timed_launch(self: Study, *args: Any, **kwargs: Any) -> Any:
        drawn = stream.seconds if stream is not None else 0.0
        started = time.perf_counter()
        try:
            return next_launch(self, *args, **kwargs)
        finally:
            extra = (stream.seconds - drawn) if stream is not None else 0.0
            launch.append((time.perf_counter() - started - extra) * 1000.0)

    def timed_report(self: Study, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return on_report(self, *args, **kwargs)
        finally:
            report.append((time.perf_counter() - started) * 1000.0)

    Study.next_launch, Study.on_report = timed_launch, timed_report  # type: ignore[method-assign]
    try:
        yield
    finally:
        Study.next_launch, Study.on_report = next_launch, on_report  # type: ignore[method-assign]


def run_hpod(bench: Benchmark, method: str, seed: int, budget: float, shared: bool = True) -> Curve:
    raw = bench.spec_mapping(HPOD_METHODS[method])
    if method in HPOD_SEARCHERS:
        raw["searcher"] = dict(HPOD_SEARCHERS[method])
        shared = False
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    stream = SharedStream(bench, seed) if shared else None
    launch: list[float] = []
    report: list[float] = []
    with _timed_study(stream, launch, report):
        res = simulate(
            spec,
            bench.step,
            workers=WORKERS,
            budget=budget,
            seed=seed,
            true_value=bench.true_value,
            searcher=stream,
        )
    return Curve(
        tuple((p.epochs, p.true_value) for p in res.history if p.true_value is not None),
        tuple(launch),
        tuple(report),
    )


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
    tpe = method == "optuna TPE + Hyperband"
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.TPESampler(seed=seed) if tpe else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(
        # A fixed name: HyperbandPruner assigns brackets by a hash of it, so a random one would
        # make the run irreproducible.
        study_name=f"{bench.name}-{seed}",
        direction="minimize" if bench.mode == "min" else "maximize",
        sampler=sampler,
        pruner=pruner,
    )
    dists = _distributions(bench)
    stream = SharedStream(bench, seed) if shared and not tpe else None
    launch_ms: list[float] = []
    report_ms: list[float] = []
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
            started = time.perf_counter()
            trial = study.ask(dists)
            launch_ms.append((time.perf_counter() - started) * 1000.0)
            # The sampler is Optuna's own; this only checks that the stream hpod got is its.
            assert stream is None or trial.params == stream[trial.number], "streams differ"
            running += 1
            params[trial.number] = dict(trial.params)
            schedule(trial, 1)
        now, _, trial, step, value = heapq.heappop(events)
        used += 1
        started = time.perf_counter()
        trial.report(value, step)
        if step >= bench.max_resource:
            study.tell(trial, value)
            running -= 1
            go_on = False
        elif trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            running -= 1
            go_on = False
        else:
            go_on = True
        report_ms.append((time.perf_counter() - started) * 1000.0)
        if go_on:
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
    return Curve(tuple(points), tuple(launch_ms), tuple(report_ms))


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


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3g} / {max(values):.3g}"


def table(
    results: Mapping[tuple[str, str], list[Curve]],
    budget_of: Mapping[str, float],
    seeds: int | None = None,
) -> list[str]:
    head = [
        "benchmark",
        "method",
        *(f"{int(f * 100)} % budget" for f in FRACTIONS),
        "launch ms med / max",
        "report ms med / max",
    ]
    rows: list[list[str]] = []
    for (name, method), curves in results.items():
        if not curves:
            continue
        optimum = BUILTIN[name].optimum
        assert optimum is not None
        cells = []
        for f in FRACTIONS:
            vals = [v - optimum for c in curves if (v := c.at(f * budget_of[name])) is not None]
            mark = "" if len(vals) == len(curves) else f" ({len(curves) - len(vals)} no answer)"
            cells.append(_cell(vals) + mark)
        if seeds is not None and len(curves) != seeds:
            method = f"{method} ({len(curves)} of {seeds} seeds)"
        cells.append(_ms([t for c in curves for t in c.launch_ms]))
        cells.append(_ms([t for c in curves for t in c.report_ms]))
        rows.append([name, method, *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )
    return out


def _stream_head(bench: Benchmark, seed: int) -> list[dict[str, Any]]:
    """The first budget + workers configurations of the shared stream: more than any run starts."""
    stream = SharedStream(bench, seed)
    return [stream[i] for i in range(int(20 * bench.max_resource) + WORKERS)]


def run_syne(
    benchmarks: Sequence[str],
    seeds: int,
    jobs: int,
    shared: bool,
    refresh: bool,
    cached_only: bool = False,
) -> tuple[dict[tuple[str, str], list[Curve]], list[str]]:
    """Syne Tune's rows, from ``bench/syne_baselines.py`` in ``bench/.venv-syne`` (``jobs``
    processes, one share of the benchmarks each), and lines that say where they came from."""
    if not SYNE_PYTHON.exists():
        return {}, [
            f"Syne Tune rows left out: no {SYNE_PYTHON.relative_to(HERE.parent)} "
            "(bench/run-syne.sh --setup makes it)"
        ]
    out: dict[tuple[str, str], list[Curve]] = {}
    cached: dict[str, int] = {}
    seconds: dict[str, float] = {}
    missing: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="hpod-quality-") as tmp:
        cmd = [str(SYNE_PYTHON), str(HERE / "syne_baselines.py"), "--seeds", str(seeds)]
        cmd += ["--cache", str(SYNE_CACHE)] + (["--refresh"] if refresh else [])
        cmd += ["--cached-only", "syne-tune DyHPO"] if cached_only else []
        if shared:
            # Syne Tune's ASHA gets the stream hpod's methods get (budget + workers covers it).
            configs = {
                name: {str(seed): _stream_head(BUILTIN[name], seed) for seed in range(seeds)}
                for name in benchmarks
            }
            path = Path(tmp) / "configs.json"
            path.write_text(json.dumps(configs))
            cmd += ["--configs", str(path)]
        shares = [list(benchmarks[i::jobs]) for i in range(jobs) if benchmarks[i::jobs]]
        env = {**os.environ, "PYTHONPATH": ""}
        procs = [
            subprocess.Popen(
                [*cmd, "--benchmarks", *share], stdout=subprocess.PIPE, text=True, env=env
            )
            for share in shares
        ]
        for proc in procs:
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                return {}, [
                    f"Syne Tune rows left out: bench/syne_baselines.py exited {proc.returncode}"
                ]
            for line in stdout.splitlines():
                if not line.startswith("{"):
                    continue
                row = json.loads(line)
                if "missing" in row:
                    gone = row["missing"]
                    missing.setdefault((gone["method"], gone["benchmark"]), []).append(gone["seed"])
                    continue
                m = row["method"]
                curve = Curve(
                    tuple((float(e), float(v)) for e, v in row["points"]),
                    tuple(row["launch_ms"]),
                    tuple(row["report_ms"]),
                )
                out.setdefault((row["benchmark"], m), []).append(curve)
                cached[m] = cached.get(m, 0) + int(row["cached"])
                seconds[m] = seconds.get(m, 0.0) + float(row["seconds"])
    notes = [
        f"{m}: {seconds[m]:.0f} s of Syne Tune runs, "
        + (
            f"{cached[m]} of them from {SYNE_CACHE.relative_to(HERE.parent)}"
            if cached[m]
            else "none cached"
        )
        for m in sorted(seconds)
    ]
    notes.extend(
        f"{m} on {name}: seeds {', '.join(map(str, sorted(s)))} not in the cache, left out "
        "(--syne-cached-only); its row is over the other seeds"
        for (m, name), s in sorted(missing.items())
    )
    return out, notes


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
    p.add_argument("--no-syne", action="store_true", help="leave out Syne Tune's rows")
    p.add_argument(
        "--syne-refresh", action="store_true", help="run Syne Tune again, not from its cache"
    )
    p.add_argument(
        "--syne-cached-only",
        action="store_true",
        help="Syne Tune rows from the cache only (DyHPO takes minutes a run); lists what it lacks",
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
        (name, method): [] for name in args.benchmarks for method in [*methods, *SYNE_METHODS]
    }
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, method, _seed, curve, _secs in pool.map(_job, jobs):
            results[(name, method)].append(curve)
    syne_notes = ["Syne Tune rows left out (--no-syne)"]
    if not args.no_syne:
        syne, syne_notes = run_syne(
            args.benchmarks,
            args.seeds,
            args.jobs,
            not args.own_samplers,
            args.syne_refresh,
            args.syne_cached_only,
        )
        for key, curves in syne.items():
            results[key] = curves
    print(
        f"mean regret ± standard error over {args.seeds} seeds; budget 20 x max_resource "
        f"epochs; {WORKERS} workers; eta {ETA}; "
        + ("each its own sampler" if args.own_samplers else "the same configurations for all")
        + ("; Optuna answers best_trial" if args.optuna_best_trial else "")
        + f"; {time.perf_counter() - started:.0f} s"
    )
    for line in table(results, budget_of, args.seeds):
        print(line)
    for line in syne_notes:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
