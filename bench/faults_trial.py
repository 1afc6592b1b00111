"""The well-behaved trainer of bench/faults.py: every step it takes is in its log, fsynced.

It trains epochs (a sleep of ``epoch_s``), reports each one, saves a JSON checkpoint after each
answered report, and on PAUSE or STOP (or after a SIGTERM: it finishes the epoch, reports it and
checkpoints first) exits 0. It resumes from its own checkpoint, not from ``HPOD_RESUME_FROM``
alone: the checkpoint is the model state it has, and an epoch after it that it must train again
is an epoch trained twice, which the campaign counts.

The log is ``faults.log`` in the trial's folder, one JSON object a line, each written with
O_APPEND and fsynced before the trainer goes on, so a line in it happened even if the machine died
right after: ``start``, ``train_start``/``train_done`` (epoch), ``report_sent`` (epoch, seq if the
reporter has one), ``answer`` (epoch, decision), ``report_failed`` (epoch, error),
``checkpoint_start``/``checkpoint_done`` (epoch), ``sigterm``, ``exit``. Every line has ``pid``,
``study``, ``trial`` and ``t``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from hpod import trial

cfg = trial.config()
epoch_s = float(cfg.get("epoch_s", 0.05))
# Long enough that a kill can land between checkpoint_start and checkpoint_done on purpose.
checkpoint_s = float(cfg.get("checkpoint_s", 0.02))
x = float(cfg.get("x", 0.0))
study, trial_no = trial.study_id(), trial.trial_id()
log_fd = os.open(trial.trial_dir() / "faults.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
ckpt = trial.checkpoint_dir() / "ckpt.json"
terminated = False


def log(ev: str, **fields: Any) -> None:
    line = {"ev": ev, "pid": os.getpid(), "study": study, "trial": trial_no, "t": time.time()}
    line.update(fields)
    os.write(log_fd, (json.dumps(line) + "\n").encode())
    os.fsync(log_fd)


def on_term(signum: int, frame: object) -> None:
    global terminated
    terminated = True


def save(epoch: int) -> None:
    log("checkpoint_start", epoch=epoch)
    tmp = ckpt.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump({"epoch": epoch}, f)
        f.flush()
        os.fsync(f.fileno())
    time.sleep(checkpoint_s)  # what a real torch.save of a model costs, shrunk
    os.replace(tmp, ckpt)
    dir_fd = os.open(ckpt.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log("checkpoint_done", epoch=epoch)


def seq_of_last_report() -> int | None:
    # The reporter numbers a process's reports 1, 2, ... (hpod.trial._seq, the last one
    # stamped); an older one does not.
    value = getattr(trial, "_seq", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    saved = json.loads(ckpt.read_text())["epoch"] if ckpt.exists() else 0
    top = trial.max_resource()
    log("start", resume_from=trial.resume_from(), checkpoint=saved, max_resource=top)
    for epoch in range(saved + 1, top + 1):
        log("train_start", epoch=epoch)
        time.sleep(epoch_s)  # PEP 475: a SIGTERM does not cut the epoch short
        log("train_done", epoch=epoch)
        last = seq_of_last_report()
        log("report_sent", epoch=epoch, seq=None if last is None else last + 1)
        try:
            decision = trial.report(epoch=epoch, loss=(x - 0.3) ** 2 + 1.0 / epoch)
        except Exception as exc:
            log("report_failed", epoch=epoch, error=f"{type(exc).__name__}: {exc}"[:300])
            raise
        log("answer", epoch=epoch, decision=decision.value, seq=seq_of_last_report())
        save(epoch)
        if terminated:
            log("sigterm", epoch=epoch)
        if decision is not trial.CONTINUE or terminated:
            log("exit", epoch=epoch, decision=decision.value)
            return 0
    log("exit", epoch=top, decision=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
