"""Search quality: hpod's schedulers against Optuna's pruners and Syne Tune, on the simulator.

Run it with ``bench/run-quality.sh``: Optuna is installed in the benchmark's own environment
(``bench/.venv-quality``), never as a dependency of hpod.

The benchmarks (``--benchmarks``): ``builtin``, the five of ``hpod/benchmarks.py`` (the default);
``suite``, the wider suite of ``hpod/benchmarks_suite.py`` (``powerlaw``, ``slow-starters``,
``cost-aware-7d``, ``lcdb-fried``); ``all``; or names.

Every method gets the same total budget, 20 x max_resource epochs (resource units actually
trained: a promoted hpod trial trains only from its checkpoint; the steps in flight when the budget
runs out are not counted, for either), the same 4 workers on a virtual clock, and the same seeds
(``--seeds``, 10 by default, from ``--first-seed``, 0 by default: 10 gives held-out seeds 10 to
19 for hpod's and Optuna's rows), paired: seed s of every method sees the same benchmark noise and,
for the random-search-based ones, the same configurations. hpod runs its default (``hpod
default``: the spec names no scheduler type and no searcher, so it is whatever a user who names
neither gets: Hyperband with BO since issue 19, BO starting from 20 random configurations),
random search to max_resource (fifo), ASHA with promotion, ASHA with stopping, Hyperband (every
bracket), BO + ASHA, BO + Hyperband (BO with its 5 random configurations, the default before) and
DyHPO, and variants of the default: BO with 20 (the default's, a row of its own) or 40 random
configurations before its model + Hyperband.
Optuna runs SuccessiveHalvingPruner and HyperbandPruner with its RandomSampler and the pruners'
documented defaults but min_resource 1 and reduction_factor 3 (as hpod's), TPESampler (its
defaults, ``seed=s``) with the same HyperbandPruner and with MedianPruner (its defaults), asked and
told on the same virtual clock with the same 4 workers. A NaN report (a diverged run of
``cost-aware-7d``) goes to Optuna as it is (its pruners prune it); a trial that ends on one is told
FAIL.

The same configurations for every method (common random numbers): on seed s, the i-th trial any
method starts is the i-th configuration Optuna's ``RandomSampler(seed=s)`` draws (hpod is handed
that stream through ``simulate(searcher=...)``; Optuna samples on its own and the run checks the two
agree). With 5 seeds the luck of the draw is otherwise larger than the differences between the
pruners: the best of the first 350 random configurations alone differs by 0.006 in regret between
the two generators on ``curves-parallel``. ``--own-samplers`` gives hpod its own random searcher.

The regret is the benchmark's true objective (at max_resource, without noise) of the configuration a
method would answer with, minus the optimum, with one rule for all: ``Study.best()``'s (what
``hpodctl best`` says), the trial with the best estimate wherever it got to (the mean of its last
``hpod.core.answer.WINDOW`` reports, ``docs/answer.md``), the further one on ties; Optuna's and Syne
Tune's trials are ranked by the same ``hpod.core.answer`` code. ``--optuna-best-trial`` lets Optuna
answer with ``study.best_trial`` (completed trials only) instead. The table gives the mean over the
seeds and the standard error at 50 and 100 % of the budget (``--fractions``), and beside each,
against hpod's default (``--reference``) on the same benchmark and seeds, the difference of the mean
regrets relative to the default's (+: the method is behind the default) and the two-sided p-value of
the paired Wilcoxon signed-rank test (scipy's ``wilcoxon``; p = 1 when every seed ties). A second
table gives per benchmark, at 100 %, the default, hpod's best other method, the best peer and the
default against that peer.

Model-based peers beside TPE: Syne Tune 0.13.0's ASHA (promotion and stopping type) and DyHPO, and
Syne Tune 0.16.0's ASHA (stopping: the only type it has), on Syne Tune's own simulator backend, run
by ``bench/syne_baselines.py`` in ``bench/.venv-syne`` and ``bench/.venv-syne16`` (Syne Tune 0.13
pins numpy < 1.27; ``bench/run-syne.sh`` makes those environments) with the same budget counting,
workers, rung levels and answer rule; Syne Tune's ASHAs are handed the same configuration stream
(``points_to_evaluate``; 0.13.0 skips a configuration it has started, so on a finite space it gets
the stream's distinct ones and its search ends when they are used up: the output says so). Without
an environment its rows are left out, and the output says so. DyHPO takes minutes a run, so the
Syne Tune rows are cached (``bench/results/syne-baselines.jsonl.gz``, keyed by seed, benchmark and a
hash of the code that makes them); the output says which rows came from the cache.
``--methods`` and ``--skip`` choose the rows.

Decision times, in ms, the median and the max over every decision of the seeds: a launch decision
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
from hpod.benchmarks_suite import ALL, SUITE
from hpod.core.answer import AnswerIndex
from hpod.core.objective import Objective, ObjectiveMode
from hpod.core.plans import Suggestion
from hpod.core.spec import SearcherType, StudySpec
from hpod.core.study import Study
from hpod.sim import simulate

FRACTIONS = (0.5, 1.0)
WORKERS = 4
ETA = 3

# What a user gets who names no scheduler and no searcher (the spec's defaults, whatever they are
# now): the reference the p-values compare every other method with.
DEFAULT = "hpod default"
HPOD_METHODS: dict[str, dict[str, Any]] = {
    DEFAULT: {},
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
    "hpod BO + Hyperband": {"type": "hyperband", "min_resource": 1, "reduction_factor": ETA},
    "hpod DyHPO": {"type": "dyhpo", "min_resource": 1, "reduction_factor": ETA},
    # Variants of the default (issue 19), rows of their own so the default's stay comparable.
    "hpod BO(20 random) + Hyperband": {
        "type": "hyperband",
        "min_resource": 1,
        "reduction_factor": ETA,
    },
    "hpod BO(40 random) + Hyperband": {
        "type": "hyperband",
        "min_resource": 1,
        "reduction_factor": ETA,
    },
    "hpod BO(20 random, 1/4 random) + Hyperband": {
        "type": "hyperband",
        "min_resource": 1,
        "reduction_factor": ETA,
    },
}
# The model-based ones propose their own configurations (the shared stream is random draws); their
# fits run synchronously in the simulator and are not counted in the decision times.
HPOD_SEARCHERS: dict[str, dict[str, Any]] = {
    "hpod BO + ASHA": {"type": "bo"},
    "hpod BO + Hyperband": {"type": "bo"},
    "hpod DyHPO": {"type": "dyhpo"},
    # 20 random configurations before the model is used, not 5: the model is then also of a
    # level 20 configurations reached (BOSearcher's min_points), a lower one under Hyperband.
    "hpod BO(20 random) + Hyperband": {"type": "bo", "num_init_trials": 20},
    "hpod BO(40 random) + Hyperband": {"type": "bo", "num_init_trials": 40},  # how sensitive
    # A quarter of the model's turns drawn at random (searcher.random_fraction, BOHB's idea).
    "hpod BO(20 random, 1/4 random) + Hyperband": {
        "type": "bo",
        "num_init_trials": 20,
        "random_fraction": 0.25,
    },
}
OPTUNA_METHODS = (
    "optuna SuccessiveHalving",
    "optuna Hyperband",
    "optuna TPE + Hyperband",
    "optuna TPE + Median",
)
HERE = Path(__file__).resolve().parent
# Syne Tune's methods by the environment that runs them (bench/run-syne.sh makes both).
SYNE_ENVS: dict[str, tuple[str, ...]] = {
    ".venv-syne": ("syne-tune ASHA promotion", "syne-tune ASHA stopping", "syne-tune DyHPO"),
    ".venv-syne16": ("syne-tune 0.16 ASHA stopping",),
}
SYNE_METHODS = tuple(m for ms in SYNE_ENVS.values() for m in ms)
SYNE_CACHE = HERE / "results" / "syne-baselines.jsonl.gz"
GROUPS = {"builtin": sorted(BUILTIN), "suite": sorted(SUITE), "all": sorted(ALL)}


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
    """The benchmark's ``[space]`` as Optuna distributions (the kinds the benchmarks use)."""
    import optuna

    out: dict[str, Any] = {}
    for k, v in bench.space.items():
        kind, rng = v["param_type"], v["range"]
        if kind == "uniform":
            out[k] = optuna.distributions.FloatDistribution(*rng)
        elif kind == "loguniform" and len(rng) == 2:
            out[k] = optuna.distributions.FloatDistribution(*rng, log=True)
        elif kind == "choice":
            out[k] = optuna.distributions.CategoricalDistribution(list(rng))
        else:
            raise ValueError(f"{bench.name}: no Optuna distribution for {kind} {rng}")
    return out


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
    if method == DEFAULT:
        raw["searcher"] = {}  # the default searcher too
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    # A random searcher gets the shared stream; a model-based one proposes its own.
    shared = shared and spec.searcher.type is SearcherType.RANDOM
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
    elif method == "optuna TPE + Median":
        pruner = optuna.pruners.MedianPruner()  # its defaults: 5 startup trials, no warm-up
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=bench.max_resource, reduction_factor=ETA
        )
    tpe = method.startswith("optuna TPE")
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
    # Study.best()'s rule (hpod.core.answer), over each trial's reports by step.
    answers = AnswerIndex(Objective(bench.metric, ObjectiveMode(bench.mode)))
    curves: dict[int, dict[float, float]] = {}
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
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a diverged run
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
        # A diverged report (NaN, or an infinity) ranks last, as in Study.best().
        curve = curves.setdefault(trial.number, {})
        before = next(reversed(curve), None)
        curve[float(step)] = float(value) if math.isfinite(value) else math.nan
        since = before if before is not None and step > before else None
        answers.update(trial.number, curve, since)
        answer = _optuna_best_trial(study, optuna, answers) if best_trial else answers.best()
        if answer is not None and answer != last:
            last = answer
            points.append((used, true_value(params[last])))
    return Curve(tuple(points), tuple(launch_ms), tuple(report_ms))


def _optuna_best_trial(study: Any, optuna: Any, answers: AnswerIndex) -> int | None:
    """Optuna's own answer: ``study.best_trial`` (completed trials only, by the value told, its
    last report); before any trial completed, Study.best()'s rule."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if done:
        return int(study.best_trial.number)
    return answers.best()


def _job(args: tuple[str, str, int, float, bool, bool]) -> tuple[str, str, int, Curve, float]:
    name, method, seed, budget, shared, best_trial = args
    bench = ALL[name]
    started = time.perf_counter()
    if method in HPOD_METHODS:
        curve = run_hpod(bench, method, seed, budget, shared)
    else:
        curve = run_optuna(bench, method, seed, budget, shared, best_trial)
    return name, method, seed, curve, time.perf_counter() - started


Results = dict[tuple[str, str], dict[int, Curve]]  # (benchmark, method): {seed: curve}


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


def regrets(curves: Mapping[int, Curve], optimum: float, epochs: float) -> dict[int, float]:
    """Each seed's regret at ``epochs`` (seeds that had no answer yet left out)."""
    return {s: v - optimum for s, c in curves.items() if (v := c.at(epochs)) is not None}


def paired(
    mine: Mapping[int, float], ref: Mapping[int, float]
) -> tuple[float | None, float | None]:
    """(relative difference of the mean regrets, ``(mine - ref) / ref``; the two-sided p-value of
    the Wilcoxon signed-rank test on the seeds both have). ``None`` where it cannot be said:
    fewer than two paired seeds, or a reference mean of 0 for the difference. Every difference 0:
    p = 1."""
    from scipy.stats import wilcoxon

    seeds = sorted(set(mine) & set(ref))
    if len(seeds) < 2:
        return None, None
    a = [mine[s] for s in seeds]
    b = [ref[s] for s in seeds]
    ref_mean = statistics.fmean(b)
    rel = (statistics.fmean(a) - ref_mean) / ref_mean if ref_mean > 0 else None
    if all(abs(x - y) < 1e-12 for x, y in zip(a, b, strict=True)):
        return rel, 1.0
    return rel, float(wilcoxon(a, b).pvalue)


def _vs(rel: float | None, p: float | None) -> str:
    if p is None:
        return "-"
    diff = "" if rel is None else f"{rel * 100:+.0f} % "
    return f"{diff}p={p:.2g}"


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )
    return out


def table(
    results: Results,
    budget_of: Mapping[str, float],
    seeds: int | None = None,
    reference: str = DEFAULT,
    fractions: Sequence[float] = FRACTIONS,
) -> list[str]:
    """One row per benchmark and method: the mean regret ± standard error at each fraction of
    the budget, and against ``reference`` on the same benchmark the relative difference of the
    mean regrets and the paired Wilcoxon p-value (a positive difference: the method is behind)."""
    head = ["benchmark", "method"]
    for f in fractions:
        head += [f"{f * 100:g} % budget", f"vs default {f * 100:g} %"]
    head += ["launch ms med / max", "report ms med / max"]
    rows: list[list[str]] = []
    for (name, method), curves in results.items():
        if not curves:
            continue
        optimum = ALL[name].optimum
        assert optimum is not None
        ref = results.get((name, reference), {})
        cells = []
        for f in fractions:
            mine = regrets(curves, optimum, f * budget_of[name])
            mark = "" if len(mine) == len(curves) else f" ({len(curves) - len(mine)} no answer)"
            cells.append(_cell(list(mine.values())) + mark)
            if method == reference:
                cells.append("(reference)")
            else:
                cells.append(_vs(*paired(mine, regrets(ref, optimum, f * budget_of[name]))))
        label = method
        if seeds is not None and len(curves) != seeds:
            label = f"{method} ({len(curves)} of {seeds} seeds)"
        cells.append(_ms([t for c in curves.values() for t in c.launch_ms]))
        cells.append(_ms([t for c in curves.values() for t in c.report_ms]))
        rows.append([name, label, *cells])
    return _markdown(head, rows)


def summary(
    results: Results, budget_of: Mapping[str, float], reference: str = DEFAULT
) -> list[str]:
    """Per benchmark, at 100 % of the budget: the reference, hpod's best method, the best peer
    (lowest mean regret) and the reference against that peer, among the rows over every seed the
    reference has."""
    head = ["benchmark", reference, "hpod's best", "best peer", "default vs best peer (-: ahead)"]
    rows = []
    for name in dict.fromkeys(n for n, _ in results):
        optimum = ALL[name].optimum
        assert optimum is not None
        means: dict[str, float] = {}
        regret: dict[str, dict[int, float]] = {}
        for (n, method), curves in results.items():
            if n == name and curves:
                regret[method] = regrets(curves, optimum, budget_of[name])
                if regret[method]:
                    means[method] = statistics.fmean(regret[method].values())
        if reference not in means:
            continue
        # Only rows over every seed the reference has: a mean over fewer is another sample.
        full = {m: v for m, v in means.items() if set(regret[reference]) <= set(regret[m])}
        hpod = {m: v for m, v in full.items() if m.startswith("hpod ") and m != reference}
        peers = {m: v for m, v in full.items() if not m.startswith("hpod ")}
        best_hpod = min(hpod, key=hpod.__getitem__, default=None)
        best_peer = min(peers, key=peers.__getitem__, default=None)
        rows.append(
            [
                name,
                f"{means[reference]:.4f}",
                "-" if best_hpod is None else f"{best_hpod} {hpod[best_hpod]:.4f}",
                "-" if best_peer is None else f"{best_peer} {peers[best_peer]:.4f}",
                "-" if best_peer is None else _vs(*paired(regret[reference], regret[best_peer])),
            ]
        )
    return _markdown(head, rows)


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
    methods: Sequence[str] = SYNE_METHODS,
) -> tuple[Results, list[str]]:
    """Syne Tune's rows, from ``bench/syne_baselines.py`` in each of its environments (``jobs``
    processes, one share of the benchmarks each), and lines that say where they came from."""
    out: Results = {}
    notes: list[str] = []
    cached: dict[str, int] = {}
    seconds: dict[str, float] = {}
    missing: dict[tuple[str, str], list[int]] = {}
    early: dict[tuple[str, str, float], list[tuple[int, float]]] = {}
    configs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if shared:
        # Syne Tune's ASHAs get the stream hpod's methods get (budget + workers covers it).
        configs = {
            name: {str(seed): _stream_head(ALL[name], seed) for seed in range(seeds)}
            for name in benchmarks
        }
    with tempfile.TemporaryDirectory(prefix="hpod-quality-") as tmp:
        path = Path(tmp) / "configs.json"
        path.write_text(json.dumps(configs))
        for env, env_methods in SYNE_ENVS.items():
            wanted = [m for m in env_methods if m in methods]
            if not wanted:
                continue
            python = HERE / env / "bin" / "python"
            if not python.exists():
                notes.append(
                    f"{', '.join(wanted)}: left out, no bench/{env} (bench/run-syne.sh "
                    + ("--version 0.16.0 " if env.endswith("16") else "")
                    + "--setup makes it)"
                )
                continue
            cmd = [str(python), str(HERE / "syne_baselines.py"), "--seeds", str(seeds)]
            cmd += ["--cache", str(SYNE_CACHE), "--methods", *wanted]
            cmd += ["--refresh"] if refresh else []
            cmd += (
                ["--cached-only", "syne-tune DyHPO"] if cached_only and env == ".venv-syne" else []
            )
            cmd += ["--configs", str(path)] if shared else []
            shares = [list(benchmarks[i::jobs]) for i in range(jobs) if benchmarks[i::jobs]]
            env_vars = {**os.environ, "PYTHONPATH": ""}
            procs = [
                subprocess.Popen(
                    [*cmd, "--benchmarks", *share], stdout=subprocess.PIPE, text=True, env=env_vars
                )
                for share in shares
            ]
            for proc in procs:
                stdout, _ = proc.communicate()
                if proc.returncode != 0:
                    notes.append(
                        f"{', '.join(wanted)}: left out, bench/syne_baselines.py in bench/{env} "
                        f"exited {proc.returncode}"
                    )
                    continue
                for line in stdout.splitlines():
                    if not line.startswith("{"):
                        continue
                    row = json.loads(line)
                    if "missing" in row:
                        gone = row["missing"]
                        key = (gone["method"], gone["benchmark"])
                        missing.setdefault(key, []).append(gone["seed"])
                        continue
                    m = row["method"]
                    curve = Curve(
                        tuple((float(e), float(v)) for e, v in row["points"]),
                        tuple(row["launch_ms"]),
                        tuple(row["report_ms"]),
                    )
                    out.setdefault((row["benchmark"], m), {})[int(row["seed"])] = curve
                    cached[m] = cached.get(m, 0) + int(row["cached"])
                    seconds[m] = seconds.get(m, 0.0) + float(row["seconds"])
                    if float(row["epochs_used"]) < float(row["budget"]):
                        early.setdefault((m, row["benchmark"], row["budget"]), []).append(
                            (int(row["seed"]), float(row["epochs_used"]))
                        )
    notes[:0] = [
        f"{m}: {seconds[m]:.0f} s of Syne Tune runs, "
        + (
            f"{cached[m]} of them from {SYNE_CACHE.relative_to(HERE.parent)}"
            if cached[m]
            else "none cached"
        )
        for m in sorted(seconds)
    ]
    notes.extend(
        f"{m} on {name}: ended early on seeds {', '.join(str(s) for s, _ in sorted(runs))}, after "
        f"{min(e for _, e in runs):g} to {max(e for _, e in runs):g} of {budget:g} epochs (its "
        "searcher had no new configuration left)"
        for (m, name, budget), runs in sorted(early.items())
    )
    notes.extend(
        f"{m} on {name}: seeds {', '.join(map(str, sorted(s)))} not in the cache, left out "
        "(--syne-cached-only); its row is over the other seeds"
        for (m, name), s in sorted(missing.items())
    )
    return out, notes


def save_curves(path: Path, results: Results, append: bool = False) -> None:
    with path.open("a" if append else "w") as f:
        for (name, method), curves in results.items():
            for seed, c in sorted(curves.items()):
                row = {"benchmark": name, "method": method, "seed": seed, "points": c.points}
                row |= {"launch_ms": c.launch_ms, "report_ms": c.report_ms}
                f.write(json.dumps(row) + "\n")


def load_curves(path: Path) -> Iterator[tuple[tuple[str, str], int, Curve]]:
    for line in path.read_text().splitlines():
        row = json.loads(line)
        points = tuple((float(e), float(v)) for e, v in row["points"])
        curve = Curve(points, tuple(row["launch_ms"]), tuple(row["report_ms"]))
        yield (row["benchmark"], row["method"]), int(row["seed"]), curve


def _benchmarks(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for n in GROUPS.get(name, [name]):
            if n not in ALL:
                raise SystemExit(f"quality.py: unknown benchmark {n!r}: {', '.join(sorted(ALL))}")
            if n not in out:
                out.append(n)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the first of them (default 0; e.g. 10 for held-out seeds 10 to 19); hpod's and "
        "Optuna's rows only: Syne Tune's runs and cache are of seeds 0 up",
    )
    p.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    p.add_argument(
        "--benchmarks",
        nargs="*",
        default=["builtin"],
        help="names, or builtin (the five of hpod/benchmarks.py, the default), suite (those of "
        "hpod/benchmarks_suite.py) or all",
    )
    every = [*HPOD_METHODS, *OPTUNA_METHODS, *SYNE_METHODS]
    p.add_argument("--methods", nargs="*", default=every, choices=every, metavar="METHOD")
    p.add_argument("--skip", nargs="*", default=[], choices=every, metavar="METHOD")
    p.add_argument(
        "--reference",
        default=DEFAULT,
        choices=list(HPOD_METHODS),
        help=f"the method the p-values compare the others with (default {DEFAULT!r})",
    )
    p.add_argument(
        "--fractions",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=FRACTIONS,
        help="fractions of the budget to give the regret at (default 0.5,1)",
    )
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
    p.add_argument("--save", type=Path, help="write every run's curve here (JSON lines) for --load")
    p.add_argument(
        "--load",
        type=Path,
        nargs="*",
        default=[],
        help="curves of an earlier --save: the runs they have are not run again",
    )
    p.add_argument(
        "--only-loaded",
        action="store_true",
        help="run nothing of hpod's and Optuna's: the rows are what --load has (over its seeds)",
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
    benchmarks = _benchmarks(args.benchmarks)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    chosen = [m for m in args.methods if m not in args.skip]
    if args.first_seed and not args.no_syne:
        chosen = [m for m in chosen if m not in SYNE_METHODS]
    if args.reference not in chosen:
        chosen.insert(0, args.reference)
    methods = [m for m in chosen if m not in SYNE_METHODS]
    budget_of = {name: 20.0 * ALL[name].max_resource for name in benchmarks}
    started = time.perf_counter()
    results: Results = {(name, method): {} for name in benchmarks for method in chosen}
    for path in args.load:
        for key, seed, curve in load_curves(path):
            if key in results and seed in seeds:
                results[key][seed] = curve
    # Seed by seed: a run cut short has every method on its first seeds (--save keeps each run as
    # it ends, and --load takes them up again).
    jobs = [
        (name, method, seed, budget_of[name], not args.own_samplers, args.optuna_best_trial)
        for seed in seeds
        for name in benchmarks
        for method in methods
        if seed not in results[(name, method)] and not args.only_loaded
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, method, seed, curve, secs in pool.map(_job, jobs):
            print(f"{method} {name} seed {seed}: {secs:.1f} s", file=sys.stderr, flush=True)
            results[(name, method)][seed] = curve
            if args.save is not None:
                save_curves(args.save, {(name, method): {seed: curve}}, append=True)
    syne_notes = ["Syne Tune rows left out (--no-syne)"]
    if args.first_seed and not args.no_syne:
        syne_notes = [f"Syne Tune rows left out (--first-seed {args.first_seed})"]
    syne_methods = [m for m in chosen if m in SYNE_METHODS]
    if not args.no_syne and syne_methods:
        syne, syne_notes = run_syne(
            benchmarks,
            args.seeds,
            args.jobs,
            not args.own_samplers,
            args.syne_refresh,
            args.syne_cached_only,
            syne_methods,
        )
        for key, curves in syne.items():
            if key in results:
                results[key] = curves
    if args.save is not None:
        save_curves(args.save, {k: v for k, v in results.items() if k[1] in SYNE_METHODS}, True)
    print(
        f"mean regret ± standard error over {args.seeds} seeds"
        + (f" ({seeds.start} to {seeds.stop - 1})" if args.first_seed else "")
        + "; budget 20 x max_resource "
        f"epochs; {WORKERS} workers; eta {ETA}; "
        + ("each its own sampler" if args.own_samplers else "the same configurations for all")
        + ("; Optuna answers best_trial" if args.optuna_best_trial else "")
        + f"; vs default: the mean regret's difference to {args.reference!r} (+: behind it) and "
        "the paired Wilcoxon p-value over the seeds" + f"; {time.perf_counter() - started:.0f} s"
    )
    for line in table(results, budget_of, args.seeds, args.reference, args.fractions):
        print(line)
    print()
    for line in summary(results, budget_of, args.reference):
        print(line)
    for line in syne_notes:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
