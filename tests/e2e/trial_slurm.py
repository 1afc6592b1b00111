"""The Slurm executor's test trial: loss = (x - 0.3)^2 + (y + 0.2)^2 + 1/step, one step every
``delay`` seconds, a JSON checkpoint after each answered report.

Each event goes to ``events.log`` in its trial folder, one JSON line with the Slurm job id
(``SLURM_JOB_ID``) and the node: ``start`` (with the level its checkpoint holds), ``step``,
``answer``, ``sigterm``, ``exit``. On PAUSE or STOP it exits 0; on SIGTERM it finishes the step,
saves, and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from hpod import trial

folder = Path(os.environ["HPOD_TRIAL_DIR"])
ckpt = trial.checkpoint_dir() / "state.json"
cfg = trial.config()
x, y = float(cfg["x"]), float(cfg["y"])
delay = float(cfg.get("delay", 0.2))
terminated = False


def note(event: str, **data: Any) -> None:
    line = {
        "event": event,
        "job": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "pid": os.getpid(),
        **data,
    }
    with (folder / "events.log").open("a") as f:
        f.write(json.dumps(line) + "\n")


def on_term(signum: int, frame: object) -> None:
    global terminated
    terminated = True
    note("sigterm")


signal.signal(signal.SIGTERM, on_term)
saved = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
note("start", resume_from=trial.resume_from(), checkpoint=saved, socket=os.environ["HPOD_SOCKET"])
for step in range(trial.resume_from() + 1, trial.max_resource() + 1):
    time.sleep(delay)
    note("step", step=step)
    decision = trial.report(step=step, loss=(x - 0.3) ** 2 + (y + 0.2) ** 2 + 1.0 / step)
    note("answer", step=step, decision=decision.value)
    ckpt.write_text(json.dumps({"step": step}))
    if decision is not trial.CONTINUE or terminated:
        break
note("exit")
