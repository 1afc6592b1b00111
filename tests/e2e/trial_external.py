"""A trial the test launches itself (not the daemon) with the environment `ask` handed out.

loss = (x - 0.3)^2 + 1/epoch, one report per epoch from resume_from + 1 to max_resource, each
answer and each epoch trained appended to ``external.log`` in the trial folder (one JSON line).
``argv[1]``: ``normal``; ``abandon`` (reports its first epoch, then exits without a word more:
its caller forgets it); ``gated`` (after its first report, waits for the file ``go`` in its
trial folder before it goes on: the test restarts the daemon in between).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hpod import trial

mode = sys.argv[1] if len(sys.argv) > 1 else "normal"
x = float(trial.config()["x"])
folder = Path(os.environ["HPOD_TRIAL_DIR"])
log = folder / "external.log"


def note(**fields: object) -> None:
    with log.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


note(event="start", resume_from=trial.resume_from(), max_resource=trial.max_resource())
for epoch in range(trial.resume_from() + 1, trial.max_resource() + 1):
    note(event="trained", epoch=epoch)
    decision = trial.report(epoch=epoch, loss=(x - 0.3) ** 2 + 1.0 / epoch)
    note(event="answer", epoch=epoch, decision=decision.value)
    if decision is not trial.CONTINUE:
        break
    if mode == "abandon":
        sys.exit(0)
    if mode == "gated" and epoch == trial.resume_from() + 1:
        go = folder / "go"
        while not go.exists():
            time.sleep(0.01)
note(event="exit")
