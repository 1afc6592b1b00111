"""Syne Tune's DyHPO and ASHA on hpod's benchmarks (the built-ins and the wider suite).

Syne Tune 0.13.0's DyHPO and ASHA (promotion and stopping type) run in ``bench/.venv-syne``, made
by ``bench/run-syne.sh``; Syne Tune 0.16.0's ASHA (which has only the stopping type: its
``ASHA`` baseline takes no ``type``) in ``bench/.venv-syne16``, made by ``bench/run-syne.sh
--version 0.16.0``. Syne Tune 0.13.0 pins numpy < 1.27, which the Optuna environment of
``bench/quality.py`` does not share, and neither is a dependency of hpod; this script imports only
``hpod.benchmarks`` and ``hpod.benchmarks_suite`` (numpy and the standard library; the LCDB replay
reads its gzip'd JSON with the standard library). ``bench/quality.py`` runs this script as a
subprocess and merges its JSON lines (one per method, benchmark and seed) into its table.

Syne Tune's own simulator: a :class:`~syne_tune.blackbox_repository.blackbox.Blackbox` over the
hpod benchmark's ``step(config, resource, seed)`` (its metric and the cumulative ``seconds`` as
``elapsed_time``), run by ``UserBlackboxBackend`` (checkpointing on: a resumed trial reports only
the levels past the one it paused at) under ``syne_tune.Tuner`` with ``SimulatorCallback``,
``sleep_time = 0`` and 4 workers. The methods are the library's baselines,
``DyHPO(config_space, metric, resource_attr, max_resource_attr=..., grace_period=1,
reduction_factor=3, random_seed=seed)`` and the same for ``ASHA(..., type="promotion")`` and
``ASHA(..., type="stopping")``; in 0.16.0 ``ASHA(config_space, metric, time_attr, max_t,
do_minimize, random_seed, grace_period=1, reduction_factor=3)``: the same space (translated from
the hpod ``[space]``), max_resource, rung levels (1, 3, 9, 27 at max_resource 81) and workers as
hpod's and Optuna's methods in ``bench/quality.py``. A NaN report (``cost-aware-7d``'s diverged
runs) reaches Syne Tune's schedulers as it is.

What this changes in the simulation, and why:

- ``SimulatorConfig`` delays are 0 and the tuner's simulated sleep is 0.05 s (Syne Tune's defaults:
  0.05 s per start, stop and report, 5 s per sleep), so a worker is not left idle for seconds that
  hpod's and Optuna's simulations do not have (a step costs 1 to 2 simulated seconds).
- Syne Tune's simulator charges the real time spent outside the backend (the scheduler's
  decisions) to the simulated clock. Here it does not, by default, as in hpod's and Optuna's
  simulations: the decisions are timed and reported separately, and a run is deterministic for its
  seed. ``--charge-decision-time`` restores Syne Tune's behaviour.
- The budget is counted as ``bench/quality.py`` counts it: each result the tuner hands the
  scheduler is one resource unit trained; when 20 x max_resource have been, the run stops and the
  results still in flight are not counted.

The answer at each point is ``bench/quality.py``'s rule (``Study.best()``'s, the same
``hpod.core.answer`` code): the trial with the best estimate (the mean of its last
``hpod.core.answer.WINDOW`` reports), the further one on ties, then the older one; the regret is
the benchmark's true objective of its configuration minus the optimum. ``--configs FILE`` (JSON
``{benchmark: {seed: [config, ...]}}``, written by ``bench/quality.py``) hands every ASHA the same
configurations, in the same order, as hpod's random-search-based methods get
(``points_to_evaluate``): common random numbers. DyHPO always proposes its own.

``--cache FILE`` keeps each run's JSON line (gzip'd when FILE ends in .gz), keyed by method,
benchmark, seed and a fingerprint (``RUN_VERSION``, the source file that defines the benchmark
(``hpod/benchmarks.py`` or ``hpod/benchmarks_suite.py`` and its data file), Syne Tune's version,
the budget and the configurations handed over), and answers from it when the key matches: a
DyHPO run takes minutes.

Decision times: the wall time of each ``scheduler.suggest`` call the tuner makes (a launch
decision: which trial to resume or which new configuration to start) and of each
``scheduler.on_trial_result`` call (a report decision: continue, pause or stop), kept apart,
each list sorted (a run's median and maximum are what is read of them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
# One BLAS thread: two of these run side by side on a 2-core machine, and Syne Tune's GP fits take
# about half the CPU time with one thread as with OpenBLAS's own threads there.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from runcache import append_cache, read_cache  # noqa: E402

from hpod.benchmarks import Benchmark  # noqa: E402
from hpod.benchmarks_suite import ALL, LCDB_FILE  # noqa: E402
from hpod.core.answer import WINDOW, AnswerIndex  # noqa: E402
from hpod.core.objective import Objective, ObjectiveMode  # noqa: E402

# Syne Tune 0.13.0's methods, then 0.16.0's; each environment runs the ones of its version.
METHODS_013 = ("syne-tune DyHPO", "syne-tune ASHA promotion", "syne-tune ASHA stopping")
METHODS_016 = ("syne-tune 0.16 ASHA stopping",)
METHODS = (*METHODS_013, *METHODS_016)
ASHAS = ("syne-tune ASHA promotion", "syne-tune ASHA stopping", "syne-tune 0.16 ASHA stopping")
WORKERS = 4  # as bench/quality.py
ETA = 3
FRACTIONS = (0.25, 0.5, 1.0)
MAX_ATTR = "epochs"  # Syne Tune's max_resource_attr: the resource a launch may train to
ELAPSED = "elapsed_time"
SLEEP = 0.05
RUN_VERSION = 1  # part of the cache's key: bump it with any change here that changes a run


def config_space(bench: Benchmark) -> dict[str, Any]:
    """The hpod ``[space]`` table as a Syne Tune config space, plus ``epochs = max_resource``."""
    from syne_tune import config_space as cs

    out: dict[str, Any] = {}
    for name, p in bench.space.items():
        kind, rng = p["param_type"], list(p["range"])
        if kind == "uniform":
            out[name] = cs.uniform(float(rng[0]), float(rng[1]))
        elif kind == "loguniform":
            out[name] = cs.loguniform(float(rng[0]), float(rng[1]))
        elif kind == "quniform":
            out[name] = cs.quniform(float(rng[0]), float(rng[1]), float(rng[2]))
        elif kind == "qloguniform":
            out[name] = cs.qloguniform(float(rng[0]), float(rng[1]), float(rng[2]))
        elif kind == "choice":
            out[name] = cs.choice(rng)
        else:
            raise ValueError(f"{bench.name}: no Syne Tune domain for param_type {kind!r}")
    out[MAX_ATTR] = bench.max_resource
    return out


class Recorder:
    """The tuner's results, counted as bench/quality.py counts epochs, and the answer's history."""

    def __init__(self, bench: Benchmark, budget: float) -> None:
        assert bench.true_value is not None
        self.bench = bench
        self.budget = budget
        self.used = 0.0
        # Study.best()'s rule (hpod.core.answer), over each trial's results by level.
        self.answers = AnswerIndex(Objective(bench.metric, ObjectiveMode(bench.mode)))
        self.curves: dict[int, dict[float, float]] = {}
        self.configs: dict[int, dict[str, Any]] = {}
        self.points: list[tuple[float, float]] = []
        self.last: int | None = None
        self.trials = 0

    def result(self, trial_id: int, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        if self.used >= self.budget:
            return  # in flight when the budget ran out: not counted
        self.used += 1
        if trial_id not in self.configs:
            self.configs[trial_id] = {k: config[k] for k in self.bench.space}
        value = float(result[self.bench.metric])
        level = float(result[RESOURCE])
        curve = self.curves.setdefault(trial_id, {})
        before = next(reversed(curve), None)
        curve[level] = value if math.isfinite(value) else math.nan
        if before is not None and level < before:
            curve = self.curves[trial_id] = dict(sorted(curve.items()))
        since = before if before is not None and level > before else None
        self.answers.update(trial_id, curve, since)
        answer = self.answers.best()
        if answer is not None and answer != self.last:
            self.last = answer
            assert self.bench.true_value is not None
            self.points.append((self.used, self.bench.true_value(self.configs[self.last])))

    def done(self, status: Any) -> bool:
        return self.used >= self.budget


RESOURCE = "epoch"


def _timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)

    return wrapper


def decision_stats(launch: Sequence[float], report: Sequence[float]) -> dict[str, Any]:
    """Decision times in ms: the launch decisions (what to start or resume) and the report
    decisions (continue, pause or stop), median and max of each, and the lists."""
    out: dict[str, Any] = {}
    for kind, secs in (("launch", launch), ("report", report)):
        ms = [s * 1000.0 for s in secs]
        out[f"{kind}_decisions"] = len(ms)
        out[f"{kind}_ms_median"] = statistics.median(ms) if ms else None
        out[f"{kind}_ms_max"] = max(ms) if ms else None
        out[f"{kind}_ms"] = ms
    return out


def run(
    bench: Benchmark,
    method: str,
    seed: int,
    budget: float,
    configs: Sequence[Mapping[str, Any]] | None = None,
    charge_decision_time: bool = False,
) -> dict[str, Any]:
    from syne_tune import Tuner
    from syne_tune.backend.simulator_backend.simulator_backend import SimulatorConfig
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.backend.trial_status import Trial
    from syne_tune.blackbox_repository.blackbox import Blackbox
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.optimizer import baselines
    from syne_tune.tuner_callback import TunerCallback

    space = config_space(bench)
    levels = np.arange(1, bench.max_resource + 1)

    def curve(config: Mapping[str, Any], top: int) -> list[dict[str, Any]]:
        """The reports of one trial from level 1 to ``top``, ``elapsed_time`` cumulative."""
        cfg = {k: config[k] for k in bench.space}
        out, elapsed = [], 0.0
        for level in range(1, top + 1):
            metrics, seconds = bench.step(cfg, level, seed)
            elapsed += float(seconds)
            out.append(
                {bench.metric: float(metrics[bench.metric]), ELAPSED: elapsed, RESOURCE: level}
            )
        return out

    class HpodBlackbox(Blackbox):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                configuration_space={k: v for k, v in space.items() if k != MAX_ATTR},
                fidelity_space={RESOURCE: space[MAX_ATTR]},
                objectives_names=[bench.metric, ELAPSED],
            )

        @property
        def fidelity_values(self) -> np.ndarray[Any, Any]:
            return levels

        def _objective_function(
            self, configuration: dict[str, Any], fidelity: Any = None, seed: int | None = None
        ) -> Any:
            rows = curve(configuration, bench.max_resource)
            if fidelity is None:
                return np.array([[r[bench.metric], r[ELAPSED]] for r in rows])
            r = rows[int(next(iter(fidelity.values()))) - 1]
            return {bench.metric: r[bench.metric], ELAPSED: r[ELAPSED]}

    class Backend(UserBlackboxBackend):  # type: ignore[misc]
        def config_objectives(self, config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
            # As the parent's, but the benchmark is computed only up to the launch's
            # max_resource (the parent computes every level, then drops those above it).
            return curve(config, int(config.get(MAX_ATTR, bench.max_resource)))

        def _advance_by_outside_time(self) -> None:
            if charge_decision_time:
                super()._advance_by_outside_time()

    recorder = Recorder(bench, budget)

    class Count(TunerCallback):  # type: ignore[misc]
        def on_trial_result(
            self, trial: Trial, status: str, result: dict[str, Any], decision: str
        ) -> None:
            recorder.result(trial.trial_id, trial.config, result)

    kwargs: dict[str, Any] = {
        "metric": bench.metric,
        "mode": bench.mode,
        "resource_attr": RESOURCE,
        "max_resource_attr": MAX_ATTR,
        "grace_period": 1,
        "reduction_factor": ETA,
        "random_seed": seed,
    }
    scheduler: Any
    if method in METHODS_013 and configs is not None:
        # Syne Tune 0.13's searchers never start a configuration twice, points_to_evaluate
        # included: on a finite space (lcdb-fried) it gets the stream's distinct configurations
        # in the order they first appear there, and its random search ends when they are used up.
        configs = _distinct(configs)
    if method in ASHAS and configs is not None:
        kwargs["points_to_evaluate"] = [dict(c) for c in configs]
    if method == "syne-tune DyHPO":
        scheduler = baselines.DyHPO(space, **kwargs)
    elif method in ("syne-tune ASHA promotion", "syne-tune ASHA stopping"):
        scheduler = baselines.ASHA(space, type=method.rsplit(" ", 1)[1], **kwargs)
    elif method == "syne-tune 0.16 ASHA stopping":
        # 0.16.0's ASHA: stopping only; the rungs from grace_period and max_t, the resource
        # attribute as time_attr, the mode as do_minimize.
        scheduler = baselines.ASHA(
            space,
            metric=bench.metric,
            time_attr=RESOURCE,
            max_t=bench.max_resource,
            do_minimize=bench.mode == "min",
            random_seed=seed,
            grace_period=1,
            reduction_factor=ETA,
            points_to_evaluate=kwargs.get("points_to_evaluate"),
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    launch_times: list[float] = []
    report_times: list[float] = []
    scheduler.suggest = _timed(scheduler.suggest, launch_times)
    scheduler.on_trial_result = _timed(scheduler.on_trial_result, report_times)

    backend = Backend(
        blackbox=HpodBlackbox(),
        elapsed_time_attr=ELAPSED,
        max_resource_attr=MAX_ATTR,
        seed=seed,
        simulator_config=SimulatorConfig(
            delay_on_trial_result=0.0,
            delay_complete_after_final_report=0.0,
            delay_complete_after_stop=0.0,
            delay_start=0.0,
            delay_stop=0.0,
        ),
        tuner_sleep_time=SLEEP,
    )
    with tempfile.TemporaryDirectory(prefix="syne-") as tmp:
        os.environ["SYNETUNE_FOLDER"] = tmp
        tuner = Tuner(
            trial_backend=backend,
            scheduler=scheduler,
            stop_criterion=recorder.done,
            n_workers=WORKERS,
            sleep_time=0,
            results_update_interval=1e9,
            print_update_interval=1e9,
            callbacks=[SimulatorCallback(), Count()],
            tuner_name=f"hpod-{bench.name}-{seed}",
            save_tuner=False,
            metadata={},
        )
        started = time.perf_counter()
        tuner.run()
        seconds = time.perf_counter() - started
    if configs is not None and method in ASHAS:
        # Common random numbers only hold while the stream lasts (it has budget + workers). Trial
        # ids count the starts; a trial started as the budget ran out may have no result, and
        # (seen under load, not reproduced) one of the last few may be off by one: tolerated in
        # the last 2 x workers trials only.
        last = max(recorder.configs, default=0)
        for i, c in recorder.configs.items():
            if i < len(configs) and not all(_same(c[k], configs[i][k]) for k in bench.space):
                assert i > last - 2 * WORKERS, f"trial {i} is not the stream's configuration"
    assert bench.optimum is not None
    regret = {}
    for f in FRACTIONS:
        value = None
        for e, v in recorder.points:
            if e > f * budget + 1e-9:
                break
            value = v
        regret[str(f)] = None if value is None else value - bench.optimum
    return {
        "method": method,
        "benchmark": bench.name,
        "seed": seed,
        "budget": budget,
        "epochs_used": recorder.used,
        "trials": len(recorder.configs),
        "points": recorder.points,
        "regret": regret,
        **decision_stats(launch_times, report_times),
        "seconds": seconds,
        "common_configs": configs is not None and method in ASHAS,
    }


def _distinct(configs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    seen: set[str] = set()
    out = []
    for c in configs:
        key = json.dumps(dict(c), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    return abs(float(a) - float(b)) < 1e-12


def _quiet() -> None:
    logging.disable(logging.WARNING)  # Syne Tune logs every start, pause and resume at INFO
    warnings.filterwarnings("ignore")


def fingerprint(
    bench: Benchmark,
    method: str,
    budget: float,
    configs: Sequence[Mapping[str, Any]] | None,
    charge_decision_time: bool,
) -> str:
    import syne_tune

    # The file that defines the benchmark (for the built-ins hpod/benchmarks.py, as before the
    # suite came: their cached runs stay valid), and the replay's data.
    source = Path(inspect.getfile(bench.step))
    h = hashlib.sha256(source.read_bytes())
    if source.name == "benchmarks_suite.py":
        h.update(LCDB_FILE.read_bytes())
    # The answer's window: a row's points were ranked by it (docs/answer.md); 1 is the last
    # report, the rule the rows from before it had, so those keep their key.
    rule = [] if WINDOW == 1 else [{"answer_window": WINDOW}]
    extra = [RUN_VERSION, syne_tune.__version__, method, budget, configs, charge_decision_time]
    extra += rule
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--benchmarks", nargs="*", default=sorted(ALL), choices=sorted(ALL))
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        choices=METHODS,
        help="default: every method of the installed Syne Tune's version",
    )
    p.add_argument("--configs", type=Path, help="JSON {benchmark: {seed: [config, ...]}}")
    p.add_argument(
        "--charge-decision-time",
        action="store_true",
        help="advance the simulated clock by the decisions' real time (Syne Tune's default)",
    )
    p.add_argument("--no-times", action="store_true", help="leave out the list of decision times")
    p.add_argument("--cache", type=Path, help="reuse and keep runs in this JSON-lines file")
    p.add_argument("--refresh", action="store_true", help="run again even what the cache has")
    p.add_argument(
        "--cached-only",
        nargs="*",
        default=[],
        choices=METHODS,
        metavar="METHOD",
        help="run none of these: answer from the cache, a {missing: ...} line for each it lacks",
    )
    args = p.parse_args(argv)
    _quiet()
    if args.methods is None:
        import syne_tune

        version = tuple(int(x) for x in syne_tune.__version__.split(".")[:2])
        args.methods = list(METHODS_016 if version >= (0, 16) else METHODS_013)
    streams: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if args.configs is not None:
        streams = json.loads(args.configs.read_text())
    cache = read_cache(args.cache) if args.cache is not None and not args.refresh else {}
    out_stream = sys.stdout
    # Syne Tune prints (import notices, a summary per run): stdout carries only the JSON lines.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for name in args.benchmarks:
            bench = ALL[name]
            budget = 20.0 * bench.max_resource
            for method in args.methods:
                for seed in range(args.seeds):
                    configs = streams.get(name, {}).get(str(seed))
                    if method not in ASHAS:
                        configs = None
                    fp = fingerprint(bench, method, budget, configs, args.charge_decision_time)
                    row = cache.get((method, name, seed, fp))
                    if row is not None:
                        row = {**row, "cached": True}
                    elif method in args.cached_only:
                        missing = {"method": method, "benchmark": name, "seed": seed}
                        print(json.dumps({"missing": missing}), file=out_stream, flush=True)
                        continue
                    else:
                        row = run(bench, method, seed, budget, configs, args.charge_decision_time)
                        # Sorted: what reads them pools them for a median and a max, and the
                        # cache of sorted lists is half the size gzip'd (it was over 2 MiB).
                        for kind in ("launch_ms", "report_ms"):
                            row[kind] = sorted(round(t, 4) for t in row[kind])
                        row["fingerprint"] = fp
                        if args.cache is not None:
                            append_cache(args.cache, row)
                        row["cached"] = False
                        print(
                            f"{method} {name} seed {seed}: {row['seconds']:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                    if args.no_times:
                        row = {k: v for k, v in row.items() if k not in ("launch_ms", "report_ms")}
                    print(json.dumps(row), file=out_stream, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
