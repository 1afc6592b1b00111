"""The digits example with ASHA promotion against fifo, with a real daemon and real trials.

    python bench/asha_vs_fifo_digits.py          # needs torch and scikit-learn (the .venv has them)

Runs ``examples/digits/study-asha.toml`` and the same study with ``type = "fifo"`` (the same 27
configurations: same searcher, same seed) on one `hpod serve` with 2 CPU slots, then counts the
epochs each trial really trained from its stdout.log, checks that every resume started from the
checkpoint at the level the trial was paused at and trained no epoch twice, and prints the totals.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"


def start_daemon(root: Path) -> subprocess.Popen[bytes]:
    notify = root / "notify"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(notify))
    ready.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("HPOD_SOCKET", None)
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
    out = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", str(root / "s"), *args, "--json"],
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)


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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hpod-digits") as tmp:
        root = Path(tmp)
        fifo = root / "study-fifo.toml"
        text = (DIGITS / "study-asha.toml").read_text()
        text = text.replace('name = "digits-asha"', 'name = "digits-fifo"')
        text = re.sub(r'^type = "asha".*$', 'type = "fifo"', text, flags=re.M)
        text = text.replace('workdir = "."', f"workdir = {json.dumps(str(DIGITS))}")
        fifo.write_text(text)
        proc = start_daemon(root)
        try:
            out: dict[str, Any] = {}
            for label, spec in (("asha", DIGITS / "study-asha.toml"), ("fifo", fifo)):
                t0 = time.perf_counter()
                sid = ctl(root, "submit", str(spec), "--wait")["study"]
                trials = ctl(root, "trials", sid)
                best = ctl(root, "best", sid)
                res = audit(root, sid, trials)
                res.update(
                    configs=len(trials),
                    best_val_acc=best["objective"],
                    seconds=round(time.perf_counter() - t0, 1),
                )
                if label == "asha":
                    res["rungs"] = ctl(root, "show", sid)["rungs"]
                out[label] = res
        finally:
            proc.terminate()
            proc.wait(60)
    asha, fifo_res = out["asha"], out["fifo"]
    levels = sorted({lvl for _, lvl in asha["resumes"]})
    print(f"asha: {asha['configs']} configurations, {asha['epochs']} epochs trained, "
          f"resumed from checkpoints at {levels} ({len(asha['resumes'])} resumes), "
          f"best val_acc {asha['best_val_acc']:.4f}, {asha['seconds']} s")  # fmt: skip
    print(f"fifo: {fifo_res['configs']} configurations, {fifo_res['epochs']} epochs trained, "
          f"best val_acc {fifo_res['best_val_acc']:.4f}, {fifo_res['seconds']} s")  # fmt: skip
    print(f"ratio: {asha['epochs'] / fifo_res['epochs']:.3f}")
    print(
        json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rungs"} for k, v in out.items()})
    )
    ok = asha["epochs"] < fifo_res["epochs"] / 2 and {1, 3, 9} <= set(levels)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
