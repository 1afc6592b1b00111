"""The simulator: the daemon's own study state machine, a virtual clock, N workers, no processes.

It drives :class:`hpod.core.study.Study` exactly as the daemon does — a launch per free worker,
each report answered by ``on_report``, a trial that gets a non-CONTINUE answer reports no more and
exits, a paused trial keeps its "checkpoint" (its level) and a promoted one trains only from its
resume level — but a step costs what the benchmark says, in virtual seconds. Deterministic for a
seed: the same seed gives the same trace.

    python -m hpod.sim SPEC --benchmark NAME --workers 4 --budget EPOCHS --seeds 0-4 --json

``--benchmark`` is a built-in name (see :mod:`hpod.benchmarks`, the wider suite of
:mod:`hpod.benchmarks_suite` and, with two objectives, :mod:`hpod.benchmarks_mo`) or
``path/to/file.py:function`` with ``function(config, resource, seed) -> (metrics, seconds)``.
The budget counts resource units actually trained (a resumed trial trains only from its resume
level).

A study with several objectives is measured by the hypervolume of its measured points (every
report's metrics, each turned "smaller is better" by its mode) against a reference point: the area
the non-dominated ones dominate, after each report and at the end of the budget
(:class:`Hypervolume`, ``simulate(hypervolume=...)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpod.benchmarks import BUILTIN, Benchmark, StepFn
from hpod.benchmarks_mo import MULTI, Front, Hypervolume, MultiBenchmark
from hpod.benchmarks_suite import SUITE
from hpod.core.models import fit
from hpod.core.plans import Searcher
from hpod.core.space import Config
from hpod.core.spec import StudySpec
from hpod.core.states import Decision
from hpod.core.study import Study, make_scheduler


@dataclass(frozen=True)
class Point:
    """The study's answer (its best trial) after ``epochs`` resource units were trained."""

    epochs: float
    seconds: float
    value: float  # as observed
    true_value: float | None  # the benchmark's true objective of that configuration


_NOT_IN_JSON = ("trace", "history", "decision_seconds", "fit_seconds", "decisions", "hv_history")


@dataclass(frozen=True)
class SimResult:
    seed: int
    best_config: Config | None
    best_value: float | None
    true_value: float | None
    regret: float | None
    epochs_used: float
    trials: int
    sim_seconds: float
    trace: tuple[tuple[Any, ...], ...] = ()
    history: tuple[Point, ...] = field(default=(), repr=False)
    # Wall-clock seconds of each launch decision (fits excluded) and of each model fit: how long
    # the daemon would take to decide, and to fit off its loop. Not part of the trace.
    decision_seconds: tuple[float, ...] = field(default=(), repr=False, compare=False)
    fit_seconds: tuple[float, ...] = field(default=(), repr=False, compare=False)
    decisions: Mapping[str, int] = field(default_factory=dict, repr=False)
    # Several objectives (simulate(hypervolume=...)): the hypervolume of the measured points at
    # the end, the true one of the measured front's configurations, the front itself, and
    # (epochs used, hypervolume, true hypervolume) each time the front changed.
    hypervolume: float | None = None
    true_hypervolume: float | None = None
    front: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    hv_history: tuple[tuple[float, float, float | None], ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _NOT_IN_JSON
        }
        # JSON has no NaN: a diverged best is reported as null.
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }

    def at(self, epochs: float) -> Point | None:
        """The answer the study had when ``epochs`` units had been trained."""
        last: Point | None = None
        for p in self.history:
            if p.epochs > epochs:
                break
            last = p
        return last


@dataclass
class _Job:
    trial_id: int
    config: Config
    level: float  # the level of the step in flight
    max_resource: float


def simulate(
    spec: StudySpec,
    benchmark: StepFn,
    *,
    workers: int = 4,
    budget: float,
    seed: int = 0,
    true_value: Callable[[Mapping[str, Any]], float] | None = None,
    optimum: float | None = None,
    step_size: float = 1.0,
    searcher: Searcher | None = None,
    hypervolume: Hypervolume | None = None,
) -> SimResult:
    """Run one study on a benchmark until ``budget`` resource units are trained or it ends.

    The spec's searcher seed is replaced by ``seed``, which also seeds the benchmark's noise.
    ``searcher`` replaces the spec's searcher (a benchmark that hands every method the same
    configurations in the same order). ``hypervolume`` measures a study with several objectives
    (the answer is then its front, not one trial: ``best_*`` and ``history`` stay empty).
    """
    spec = dataclasses.replace(spec, searcher=dataclasses.replace(spec.searcher, seed=seed))
    study = Study.new(spec) if searcher is None else Study(spec, searcher, make_scheduler(spec))
    resource_key = spec.objective.resource
    now = 0.0
    used = 0.0
    seq = 0
    events: list[tuple[float, int, _Job, dict[str, Any]]] = []
    trace: list[tuple[Any, ...]] = []
    history: list[Point] = []
    free = workers
    last_best: tuple[int, float] | None = None
    front = Front(hypervolume) if hypervolume is not None else None
    hv_history: list[tuple[float, float, float | None]] = []

    def schedule(job: _Job) -> None:
        nonlocal seq
        metrics, seconds = benchmark(job.config, job.level, seed)
        report = dict(metrics)
        report.setdefault(resource_key, job.level)
        heapq.heappush(events, (now + float(seconds), seq, job, report))
        seq += 1

    decision_seconds: list[float] = []
    fit_seconds: list[float] = []

    while True:
        while free > 0 and used < budget:
            # A model-based study's fit happens here, at once: the daemon runs it in a worker
            # and decides meanwhile with the last model, but the simulator must give the same
            # trace for the same seed whatever the machine's speed.
            request = study.wants_fit()
            if request is not None:
                started = time.perf_counter()
                model = fit(request)
                fit_seconds.append(time.perf_counter() - started)
                study.install(request, model)
                trace.append((round(now, 9), "fit", request.key))
            started = time.perf_counter()
            launch = study.next_launch(now)
            decision_seconds.append(time.perf_counter() - started)
            if launch is None:
                break
            free -= 1
            trace.append(
                (round(now, 9), "launch", launch.trial_id, launch.resume_from, launch.max_resource)
            )
            # The trial picks up from its checkpoint: the level it paused at.
            first = launch.resume_from + step_size
            schedule(_Job(launch.trial_id, launch.config, first, launch.max_resource))
        if not events:
            break
        now, _, job, report = heapq.heappop(events)
        used += step_size
        outcome = study.on_report(job.trial_id, report, now)
        trace.append((round(now, 9), "report", job.trial_id, job.level, outcome.decision.value))
        if front is not None:
            if front.add(front.hv.point(report), job.config):
                hv_history.append((used, front.hypervolume(), front.true_hypervolume()))
            best = None
        else:
            best = study.best()
        if best is not None and (best.trial_id, best.objective) != last_best:
            last_best = (best.trial_id, best.objective)
            tv = true_value(best.config) if true_value is not None else None
            history.append(Point(used, now, best.objective, tv))
        if outcome.decision is not Decision.CONTINUE or job.level >= job.max_resource:
            study.on_exit(job.trial_id, 0, now)
            state = study.record(job.trial_id).state.value
            trace.append((round(now, 9), "exit", job.trial_id, state))
            free += 1
        else:
            schedule(dataclasses.replace(job, level=job.level + step_size))
        if used >= budget:
            # Out of budget: the steps still in flight are not counted, as if a limit cut them.
            break
    best = study.best() if front is None else None
    tv = true_value(best.config) if best is not None and true_value is not None else None
    return SimResult(
        seed=seed,
        best_config=None if best is None else best.config,
        best_value=None if best is None else best.objective,
        true_value=tv,
        regret=None if tv is None or optimum is None else tv - optimum,
        epochs_used=used,
        trials=len(study.trials),
        sim_seconds=now,
        trace=tuple(trace),
        history=tuple(history),
        decision_seconds=tuple(decision_seconds),
        fit_seconds=tuple(fit_seconds),
        decisions=study.decisions,
        hypervolume=None if front is None else front.hypervolume(),
        true_hypervolume=None if front is None else front.true_hypervolume(),
        front=() if front is None else tuple(sorted(p for p, _ in front.points)),
        hv_history=tuple(hv_history),
    )


def load_benchmark(name: str) -> Benchmark | MultiBenchmark:
    """A built-in by name, or ``path/to/file.py:function``."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name in SUITE:
        return SUITE[name]
    if name in MULTI:
        return MULTI[name]
    path, sep, func = name.rpartition(":")
    if not sep or not path.endswith(".py"):
        known = ", ".join(sorted([*BUILTIN, *SUITE, *MULTI]))
        raise ValueError(
            f"unknown benchmark {name!r}: use one of {known} or path/to/file.py:function"
        )
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"{path} has no function {func!r}")
    return Benchmark(name=name, step=fn, space={})


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,5`` or ``3``."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpod.sim", description=__doc__.split("\n")[0])
    p.add_argument("spec", metavar="SPEC", type=Path, help="the study spec (TOML)")
    p.add_argument("--benchmark", required=True, help="a built-in name or path/to/file.py:function")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="resource units to train (default: 20 x max_resource)",
    )
    p.add_argument("--seeds", default="0")
    p.add_argument("--json", action="store_true", help="one JSON line per seed")
    args = p.parse_args(argv)
    spec = StudySpec.from_file(args.spec)
    try:
        bench = load_benchmark(args.benchmark)
    except ValueError as exc:
        print(f"hpod.sim: {exc}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else 20 * spec.scheduler.max_resource
    for seed in parse_seeds(args.seeds):
        if isinstance(bench, MultiBenchmark):
            res = simulate(
                spec,
                bench.step,
                workers=args.workers,
                budget=budget,
                seed=seed,
                hypervolume=Hypervolume.of(bench),
            )
        else:
            res = simulate(
                spec,
                bench.step,
                workers=args.workers,
                budget=budget,
                seed=seed,
                true_value=bench.true_value,
                optimum=bench.optimum,
            )
        if args.json:
            print(json.dumps(res.to_json(), allow_nan=False))
        elif res.hypervolume is not None:
            print(
                f"seed={res.seed} hypervolume={res.hypervolume:.6g} "
                f"true_hypervolume={res.true_hypervolume:.6g} front={len(res.front)} "
                f"epochs={res.epochs_used:g} trials={res.trials} sim_seconds={res.sim_seconds:.1f}"
            )
        else:
            regret = "" if res.regret is None else f" regret={res.regret:.4g}"
            print(
                f"seed={res.seed} best={res.best_value} config={res.best_config}{regret} "
                f"epochs={res.epochs_used:g} trials={res.trials} sim_seconds={res.sim_seconds:.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
