"""A test trial: loss = (x - 0.3)^2 + (y + 0.2)^2 + 1/step, with knobs the e2e tests turn.

It appends every acknowledged report to ``acked.log`` in its trial folder, so a test can check that
no acknowledged report is missing from the store. ``crash = true`` fails it on purpose, ``delay``
slows each step, ``gate = N`` holds trials N and up until the test opens the gate, and
``hang = true`` makes it ignore SIGTERM after its first report. It also
appends each step it trains, and each resume with the level its checkpoint holds, to
``trained.log``, so a test can check that a promoted trial resumed from its checkpoint and trained
no step twice.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from hpod import trial

cfg = trial.config()
if cfg.get("crash"):
    print("boom: deliberate failure for the tests", file=sys.stderr)
    sys.exit(3)
x, y = float(cfg.get("x", 0.0)), float(cfg.get("y", 0.0))
delay = float(cfg.get("delay", 0.0))
acked = Path(os.environ["HPOD_TRIAL_DIR"]) / "acked.log"
ckpt = trial.checkpoint_dir() / "state.json"
terminated = False


def on_term(signum: int, frame: object) -> None:
    global terminated
    terminated = True


signal.signal(signal.SIGTERM, on_term)
# ``gate = N``: trials N and up wait for the file ``go`` in the study's folder, which a test
# creates once the daemon has done what the test waits for (a model fitted).
if cfg.get("gate") is not None and trial.trial_id() >= int(cfg["gate"]):
    go = Path(os.environ["HPOD_TRIAL_DIR"]).parent.parent / "go"
    while not go.exists():
        time.sleep(0.005)
trained = Path(os.environ["HPOD_TRIAL_DIR"]) / "trained.log"
if trial.resume_from():
    saved = json.loads(ckpt.read_text())["step"] if ckpt.exists() else None
    with trained.open("a") as f:
        f.write(f"resume {trial.resume_from()} checkpoint {saved}\n")
start = trial.resume_from() + 1
for step in range(start, trial.max_resource() + 1):
    if delay:
        time.sleep(delay)
    loss = (x - 0.3) ** 2 + (y + 0.2) ** 2 + 1.0 / step
    with trained.open("a") as f:
        f.write(f"step {step}\n")
    decision = trial.report(step=step, loss=loss)
    with acked.open("a") as f:
        f.write(f"{trial.study_id()} {trial.trial_id()} {step}\n")
    if cfg.get("hang"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.1)
    if decision is not trial.CONTINUE or terminated:
        ckpt.write_text(json.dumps({"step": step}))
        break
