"""Syne Tune 0.13.0's MOASHA on hpod's two-objective benchmarks (``hpod/benchmarks_mo.py``).

Run in ``bench/.venv-syne`` (``bench/run-syne.sh --setup`` makes it); ``bench/multiobjective.py``
runs this script as a subprocess and merges its JSON lines (one per benchmark and seed).

The simulation is ``bench/syne_baselines.py``'s (Syne Tune's own simulator backend over the
benchmark's ``step``, checkpointing on, 4 workers, no simulated delays, decisions not charged to
the clock), with both metrics as the blackbox's objectives. The method is the library's
``MOASHA(config_space, metrics, mode=["min", "min"], time_attr, max_t, grace_period=1,
reduction_factor=3)``: its defaults otherwise (non-dominated sorting with an epsilon-net as the
priority within a front, one bracket). MOASHA samples new configurations itself, from numpy's
global generator, which is seeded with the run's seed; ``--configs FILE`` (JSON ``{benchmark:
{seed: [config, ...]}}``) hands it instead the configurations hpod's methods get, in the same
order (common random numbers, as ``points_to_evaluate`` does for ASHA in ``syne_baselines.py``).

The budget is counted as everywhere in ``bench/multiobjective.py``: each result the tuner hands the
scheduler is one resource unit trained, the run stops after 20 x max_resource of them and the
results still in flight are not counted. Every counted result is a measured point; the hypervolume
is that of the non-dominated ones (``hpod.benchmarks_mo.Front``), after each change of the front.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from syne_baselines import (  # noqa: E402
    ELAPSED,
    ETA,
    MAX_ATTR,
    RESOURCE,
    SLEEP,
    WORKERS,
    _quiet,
    _timed,
    config_space,
    decision_stats,
)

from hpod.benchmarks_mo import MULTI, Front, Hypervolume, MultiBenchmark  # noqa: E402

METHOD = "syne-tune MOASHA"


class Recorder:
    """The tuner's results, counted as bench/multiobjective.py counts epochs, and the front."""

    def __init__(self, bench: MultiBenchmark, budget: float) -> None:
        self.bench = bench
        self.budget = budget
        self.used = 0.0
        self.hv = Hypervolume.of(bench)
        self.front = Front(self.hv)
        self.points: list[tuple[float, float, float | None]] = []
        self.configs: dict[int, dict[str, Any]] = {}

    def result(self, trial_id: int, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        if self.used >= self.budget:
            return  # in flight when the budget ran out: not counted
        self.used += 1
        cfg = {k: config[k] for k in self.bench.space}
        self.configs.setdefault(trial_id, cfg)
        if self.front.add(self.hv.point(result), cfg):
            self.points.append((self.used, self.front.hypervolume(), self.front.true_hypervolume()))

    def done(self, status: Any) -> bool:
        return self.used >= self.budget


def run(
    bench: MultiBenchmark,
    seed: int,
    budget: float,
    configs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    from syne_tune import Tuner
    from syne_tune.backend.simulator_backend.simulator_backend import SimulatorConfig
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.backend.trial_status import Trial
    from syne_tune.blackbox_repository.blackbox import Blackbox
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.optimizer.scheduler import TrialSuggestion
    from syne_tune.optimizer.schedulers.multiobjective import MOASHA
    from syne_tune.tuner_callback import TunerCallback

    np.random.seed(seed)
    space = config_space(bench)  # type: ignore[arg-type]
    names = [n for n, _ in bench.metrics]
    levels = np.arange(1, bench.max_resource + 1)

    def curve(config: Mapping[str, Any], top: int) -> list[dict[str, Any]]:
        cfg = {k: config[k] for k in bench.space}
        out, elapsed = [], 0.0
        for level in range(1, top + 1):
            metrics, seconds = bench.step(cfg, level, seed)
            elapsed += float(seconds)
            row: dict[str, Any] = {n: float(metrics[n]) for n in names}
            out.append({**row, ELAPSED: elapsed, RESOURCE: level})
        return out

    class MOBlackbox(Blackbox):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                configuration_space={k: v for k, v in space.items() if k != MAX_ATTR},
                fidelity_space={RESOURCE: space[MAX_ATTR]},
                objectives_names=[*names, ELAPSED],
            )

        @property
        def fidelity_values(self) -> Any:
            return levels

        def _objective_function(
            self, configuration: dict[str, Any], fidelity: Any = None, seed: int | None = None
        ) -> Any:
            rows = curve(configuration, bench.max_resource)
            keys = [*names, ELAPSED]
            if fidelity is None:
                return np.array([[r[k] for k in keys] for r in rows])
            r = rows[int(next(iter(fidelity.values()))) - 1]
            return {k: r[k] for k in keys}

    class Backend(UserBlackboxBackend):  # type: ignore[misc]
        def config_objectives(self, config: dict[str, Any], seed: int) -> list[dict[str, Any]]:
            return curve(config, int(config.get(MAX_ATTR, bench.max_resource)))

        def _advance_by_outside_time(self) -> None:
            pass  # decisions are not charged to the simulated clock (syne_baselines.py)

    stream = [dict(c) for c in configs] if configs is not None else None

    class StreamMOASHA(MOASHA):  # type: ignore[misc]
        """MOASHA, but new configurations come from the shared stream while it lasts."""

        def _suggest(self, trial_id: int) -> Any:
            if stream is not None and trial_id < len(stream):
                return TrialSuggestion.start_suggestion(
                    {**stream[trial_id], MAX_ATTR: bench.max_resource}
                )
            return super()._suggest(trial_id)

    recorder = Recorder(bench, budget)

    class Count(TunerCallback):  # type: ignore[misc]
        def on_trial_result(
            self, trial: Trial, status: str, result: dict[str, Any], decision: str
        ) -> None:
            recorder.result(trial.trial_id, trial.config, result)

    scheduler = StreamMOASHA(
        space,
        metrics=names,
        mode=[m for _, m in bench.metrics],
        time_attr=RESOURCE,
        max_t=bench.max_resource,
        grace_period=1,
        reduction_factor=ETA,
    )
    launch_times: list[float] = []
    report_times: list[float] = []
    scheduler.suggest = _timed(scheduler.suggest, launch_times)
    scheduler.on_trial_result = _timed(scheduler.on_trial_result, report_times)
    backend = Backend(
        blackbox=MOBlackbox(),
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
            tuner_name=f"hpod-mo-{bench.name}-{seed}",
            save_tuner=False,
            metadata={},
        )
        started = time.perf_counter()
        tuner.run()
        seconds = time.perf_counter() - started
    if stream is not None:
        # By trial id: a trial started but cut by the budget before its first result is not in
        # recorder.configs, and the ones after it keep their ids.
        for t, c in recorder.configs.items():
            if t < len(stream):
                assert all(abs(float(c[k]) - float(stream[t][k])) < 1e-12 for k in bench.space), (
                    f"trial {t} is not the stream's configuration"
                )
    return {
        "method": METHOD,
        "benchmark": bench.name,
        "seed": seed,
        "budget": budget,
        "epochs_used": recorder.used,
        "trials": len(recorder.configs),
        "points": recorder.points,
        **decision_stats(launch_times, report_times),
        "seconds": seconds,
        "common_configs": stream is not None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--benchmarks", nargs="*", default=sorted(MULTI))
    p.add_argument("--configs", type=Path, help="JSON {benchmark: {seed: [config, ...]}}")
    args = p.parse_args(argv)
    _quiet()
    streams: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if args.configs is not None:
        streams = json.loads(args.configs.read_text())
    out_stream = sys.stdout
    # Syne Tune (and MOASHA: "adding trial N") print: stdout carries only the JSON lines.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for name in args.benchmarks:
            bench = MULTI[name]
            budget = 20.0 * bench.max_resource
            for seed in range(args.seeds):
                row = run(bench, seed, budget, streams.get(name, {}).get(str(seed)))
                row.pop("launch_ms")
                row.pop("report_ms")
                print(f"{METHOD} {name} seed {seed}: {row['seconds']:.0f} s", file=sys.stderr)
                print(json.dumps(row), file=out_stream, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
