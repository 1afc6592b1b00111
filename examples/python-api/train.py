"""The example's trial: a stand-in for a training script, stdlib only, a few milliseconds a step.

    val_loss = (log10(lr) + 2)^2 + (width / 64 - 1)^2 + penalty(opt) + 1 / epoch

so the best configuration is lr = 0.01, width = 64, opt = "adam", whatever the epoch. It reports
`epoch` and `val_loss` each epoch (and `train_loss`, a second metric for `top(all_metrics=True)`),
and stops when told to.
"""

from __future__ import annotations

import math
import time

from hpod import trial

cfg = trial.config(defaults={"lr": 0.01, "width": 64, "opt": "adam"})
lr, width, opt = float(cfg["lr"]), float(cfg["width"]), str(cfg["opt"])
bowl = (math.log10(lr) + 2.0) ** 2 + (width / 64.0 - 1.0) ** 2 + (0.0 if opt == "adam" else 0.3)

for epoch in range(trial.resume_from() + 1, trial.max_resource() + 1):
    time.sleep(0.02)  # "training"
    decision = trial.report(epoch=epoch, val_loss=bowl + 1.0 / epoch, train_loss=bowl + 0.5 / epoch)
    if decision is not trial.CONTINUE:
        break
