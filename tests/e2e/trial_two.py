"""A test trial with two objectives: err = (x - 0.8)^2 + 0.5/step (min) against
lat = 10 x + 1/step (min): a small x is fast and wrong, x near 0.8 right and slow, x past 0.8
both worse. It resumes from its checkpoint's step and logs each step it trains."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpod import trial

x = float(trial.config()["x"])
ckpt = trial.checkpoint_dir() / "state.json"
trained = Path(os.environ["HPOD_TRIAL_DIR"]) / "trained.log"
start = trial.resume_from() + 1
if trial.resume_from():
    saved = json.loads(ckpt.read_text())["step"]
    with trained.open("a") as f:
        f.write(f"resume {trial.resume_from()} checkpoint {saved}\n")
for step in range(start, trial.max_resource() + 1):
    with trained.open("a") as f:
        f.write(f"step {step}\n")
    ckpt.write_text(json.dumps({"step": step}))
    decision = trial.report(step=step, err=(x - 0.8) ** 2 + 0.5 / step, lat=10 * x + 1.0 / step)
    if decision is not trial.CONTINUE:
        break
