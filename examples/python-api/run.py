"""A small real study end to end from Python, with a daemon of its own: no hpod daemon needs to
be running. `python examples/python-api/run.py` (with hpod installed: `.venv/bin/python`).

It searches train.py's three parameters with ASHA for 24 trials, two at a time, prints each trial
as it ends (the callback, ClearML's job_complete_callback), then the top three and the best.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hpod import Optimizer

HERE = Path(__file__).resolve().parent


def on_trial_end(
    trial: int,
    objective: float | None,
    iteration: float | None,
    config: dict[str, Any],
    best: int | None,
) -> None:
    value = "-" if objective is None else f"{objective:.4f}"
    print(f"trial {trial:2d} ended at epoch {iteration}: val_loss {value}  {config}  best: {best}")


def main() -> int:
    optimizer = Optimizer(
        command=[sys.executable, "train.py"],
        workdir=HERE,
        name="python-api",
        space={
            "lr": ("loguniform", 1e-4, 1e-1),
            "width": ("qloguniform", 16, 256, 16, 2),
            "opt": ["sgd", "adam"],
        },
        metric="val_loss",
        mode="min",
        resource="epoch",
        scheduler={"type": "asha", "reduction_factor": 3, "rung_type": "stopping"},
        min_resource=1,
        max_resource=9,
        searcher={"type": "random", "seed": 1},
        max_trials=24,
        max_concurrent=2,
        optimization_time="5m",
    )
    with optimizer:
        study = optimizer.start_locally(on_trial_end=on_trial_end)
        print(f"study {study} on a daemon of its own at {optimizer.socket_path}")
        optimizer.wait()
        print("top 3:")
        for row in optimizer.top(3):
            print(f"  trial {row['task_id']}: {row['objective']:.4f}  {row['hyper_parameters']}")
        best = optimizer.best()
        print(f"best: trial {best['trial']}, val_loss {best['objective']:.4f}, {best['config']}")
        if optimizer.callback_errors:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
