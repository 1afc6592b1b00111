"""The digits example with ASHA promotion against fifo, with a real daemon and real trials.

    python bench/asha_vs_fifo_digits.py          # needs torch and scikit-learn (the .venv has them)
    python bench/asha_vs_fifo_digits.py --warm   # the same with [executor] warm_start = true
    python bench/asha_vs_fifo_digits.py --both   # cold and warm, one after the other

Runs ``examples/digits/study-asha.toml`` and the same study with ``type = "fifo"`` (the same 27
configurations: same searcher, same seed) on one `hpod serve` with 2 CPU slots, then counts the
epochs each trial really trained from its stdout.log, checks that every resume started from the
checkpoint at the level the trial was paused at and trained no epoch twice, and prints the totals:
epochs trained, best val_acc and wall time (from the submit to the study's end) of each.

``--warm`` runs both studies with ``[executor] warm_start = true`` and ``warm_imports`` of the
trial's heavy imports: torch, torch._dynamo (which torch.optim imports at the first optimizer),
hpod.trial and the example's digits_data (scikit-learn's digits, split and scaled at its
import): each run, new or resumed after a promotion, is forked from the study's pre-started
interpreter instead of paying its own interpreter start, ``import torch`` and the data's
loading (docs/warm-start.md). numpy's OpenBLAS starts a thread pool at import, which a fork
would not copy: the studies set ``OPENBLAS_NUM_THREADS = "1"`` (cold runs too, in this bench, so
that cold and warm differ by the start only). Before the measured studies a one-trial study
imports torch once, so that the first measured one does not pay a cold page cache for the
others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"


def _env() -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH: the submit carries PATH
    to the trials, whose ``python`` must be the one with torch."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("HPOD_SOCKET", None)
    return env


def start_daemon(root: Path) -> subprocess.Popen[bytes]:
    notify = root / "notify"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(notify))
    ready.settimeout(60)
    env = dict(_env(), NOTIFY_SOCKET=str(notify))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpod", "serve", "--socket", str(root / "s"),
         "--state-dir", str(root / "state"), "--cpu-slots", "2", "--log-format", "json"],
        env=env, stdout=(root / "daemon.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        while "READY=1" not in ready.recv(4096).decode().split("\n"):
            pass
    finally:
        ready.close()
    return proc


def ctl(root: Path, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", str(root / "s"), *args, "--json"],
        capture_output=True, text=True, timeout=900, env=_env(),
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"hpodctl {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return json.loads(done.stdout)


def audit(root: Path, sid: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Epochs trained, resumes, and the checks, from each trial's stdout.log."""
    total = 0
    resumes: list[tuple[int, int]] = []
    paused_at: dict[int, int] = {}
    for t in trials:
        log = root / "state" / "studies" / sid / "trials" / str(t["trial"]) / "stdout.log"
        text = log.read_text()
        epochs = [int(m) for m in re.findall(r"^epoch\s+(\d+)", text, re.M)]
        assert epochs == list(range(1, len(epochs) + 1)), (t["trial"], epochs)  # none twice
        for m in re.finditer(r"^resumed from .* at epoch (\d+) \(daemon: (\d+)\)", text, re.M):
            ckpt, daemon = int(m.group(1)), int(m.group(2))
            assert ckpt == daemon, (t["trial"], ckpt, daemon)
            resumes.append((t["trial"], ckpt))
        total += len(epochs)
        if t["state"] == "paused":
            paused_at[t["resource"]] = paused_at.get(t["resource"], 0) + 1
    return {"epochs": total, "resumes": resumes, "paused_at": paused_at}


WARM = """
[executor]
warm_start = true
warm_imports = ["torch", "torch._dynamo", "hpod.trial", "digits_data"]
"""
ENV = """
[env]
OPENBLAS_NUM_THREADS = "1"
"""


def spec_text(scheduler: str, *, warm: bool, env: bool, name: str | None = None) -> str:
    """examples/digits/study-asha.toml with ``scheduler``'s type, run from the example's folder;
    warm: with the warm start; env: with OPENBLAS_NUM_THREADS=1."""
    text = (DIGITS / "study-asha.toml").read_text()
    text = text.replace('workdir = "."', f"workdir = {json.dumps(str(DIGITS))}")
    label = name or f"digits-{scheduler}-{'warm' if warm else 'cold'}"
    text = text.replace('name = "digits-asha"', f'name = "{label}"')
    if scheduler != "asha":
        text = re.sub(r'^type = "asha".*$', f'type = "{scheduler}"', text, flags=re.M)
    # [env] and [executor] are tables of their own: after the last table's keys is fine, but
    # the top-level keys must come first, so they go at the end.
    return text + (ENV if env else "") + (WARM if warm else "")


def run_study(root: Path, label: str, text: str) -> dict[str, Any]:
    spec = root / f"{label}.toml"
    spec.write_text(text)
    t0 = time.perf_counter()
    sid = ctl(root, "submit", str(spec), "--wait")["study"]
    seconds = time.perf_counter() - t0
    trials = ctl(root, "trials", sid)
    best = ctl(root, "best", sid)
    res = audit(root, sid, trials)
    res.update(configs=len(trials), best_val_acc=best["objective"], seconds=round(seconds, 1))
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", action="store_true", help="[executor] warm_start = true")
    parser.add_argument("--both", action="store_true", help="cold, then warm")
    parser.add_argument("--only", choices=["asha", "fifo"], help="run one of the two only")
    parser.add_argument("--keep", action="store_true", help="keep the daemon's state folder")
    args = parser.parse_args()
    starts = ["cold", "warm"] if args.both else ["warm"] if args.warm else ["cold"]
    env = args.warm or args.both
    out: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="hpod-digits"))
    try:
        proc = start_daemon(root)
        try:
            if env:
                # One trial first: torch's files in the page cache for every measured study.
                once = spec_text("fifo", warm=False, env=True, name="digits-warmup")
                once = re.sub(r"^max_trials = .*$", "max_trials = 1", once, flags=re.M)
                run_study(root, "warmup", once)
            for start in starts:
                for scheduler in [args.only] if args.only else ["asha", "fifo"]:
                    label = f"{scheduler}-{start}"
                    text = spec_text(scheduler, warm=start == "warm", env=env)
                    out[label] = run_study(root, label, text)
                    print_one(label, out[label], flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    ok = True
    for start in [] if args.only else starts:
        asha, fifo_res = out[f"asha-{start}"], out[f"fifo-{start}"]
        levels = sorted({lvl for _, lvl in asha["resumes"]})
        print(
            f"{start}: asha {asha['seconds']} s, {asha['epochs']} epochs, best "
            f"{asha['best_val_acc']:.4f}; fifo {fifo_res['seconds']} s, {fifo_res['epochs']} "
            f"epochs, best {fifo_res['best_val_acc']:.4f}; epochs ratio "
            f"{asha['epochs'] / fifo_res['epochs']:.3f}, wall time ratio "
            f"{asha['seconds'] / fifo_res['seconds']:.3f}"
        )
        ok = ok and asha["epochs"] < fifo_res["epochs"] / 2 and {1, 3, 9} <= set(levels)
    print(json.dumps(out))
    return 0 if ok else 1


def print_one(label: str, res: dict[str, Any], *, flush: bool = False) -> None:
    levels = sorted({lvl for _, lvl in res["resumes"]})
    resumed = (
        f", resumed from checkpoints at {levels} ({len(res['resumes'])} resumes)"
        if res["resumes"]
        else ""
    )
    print(
        f"{label}: {res['configs']} configurations, {res['epochs']} epochs trained{resumed}, "
        f"best val_acc {res['best_val_acc']:.4f}, {res['seconds']} s",
        flush=flush,
    )


if __name__ == "__main__":
    sys.exit(main())
