"""The time budget on the digits example, with a real daemon and real trials (issue 15).

    python bench/time_budget.py                 # seeds 0 1 2, ratios 2 and 4
    python bench/time_budget.py --seeds 0 --ratios 2

Each study is ``examples/digits/study.toml`` with its ``[scheduler]`` and ``[limits]`` replaced
by ``time_ratio = R``, ``full_resource = 20`` and ``max_concurrent = 2`` (slots, not trials):
nothing else about trials or rungs, the searcher's seed set per run. One `hpod serve` with 2 CPU
slots runs them one after another. For each it prints the study's wall time (``elapsed``, the
clock its limits count), the full training hpod measured and ``R x`` that, their ratio, the trials
it ran and the best validation accuracy, then the checks: every study ends within +-10 % of
``R x full``, every best is >= 0.95, and per seed ratio 4's best is at least ratio 2's. The load
average before and after is printed too: the machine may be shared.

The example's searcher keeps its known-good first point (``points_to_evaluate``), so each study's
first trial is the same configuration; ``--no-prior`` leaves it out.

Before the studies it times one full training of the default configuration run alone (20 epochs,
``train.py`` outside hpod), for comparison with what hpod measured from the trials' reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asha_vs_fifo_digits import start_daemon  # the same daemon: 2 CPU slots, JSON log

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"


def ctl(root: Path, *args: str, json_out: bool = True) -> Any:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    res = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", str(root / "s"), *args,
         *(["--json"] if json_out else [])],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    if json_out:
        if res.returncode != 0:
            raise SystemExit(f"hpodctl {' '.join(args)}: {res.returncode}\n{res.stderr}")
        return json.loads(res.stdout)
    return res


def budget_spec(ratio: float, seed: int, prior: bool = True) -> str:
    """study.toml without its [scheduler] and [limits], and the time budget in their place;
    without ``prior``, without its known-good first point either (random configurations only)."""
    text = (DIGITS / "study.toml").read_text()
    kept: list[str] = []
    skip = False
    for line in text.splitlines():
        header = re.match(r"\[(\w+)\]", line)
        if header:
            skip = header.group(1) in ("scheduler", "limits")
            if skip:
                continue
        if skip:
            continue
        if re.match(r"seed\s*=", line):
            line = f"seed = {seed}"
        if not prior and re.match(r"points_to_evaluate\s*=", line):
            continue
        kept.append(line.replace('name = "digits-mlp"', f'name = "budget-r{ratio:g}-s{seed}"'))
    kept += ["", "[limits]", f"time_ratio = {ratio:g}", "full_resource = 20", "max_concurrent = 2"]
    return "\n".join(kept) + "\n"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def full_training_alone() -> float:
    """20 epochs of train.py's default configuration, outside hpod, timed from launch to exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "train.py", "--epochs", "20"], cwd=DIGITS, env=env, check=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument(
        "--no-prior",
        action="store_true",
        help="leave out the example's known-good first point (random configurations only)",
    )
    args = ap.parse_args()

    print(f"load average before: {loadavg()} ({os.cpu_count()} cores)")
    alone = full_training_alone()
    print(f"one full training (20 epochs, default config) run alone: {alone:.2f}s")
    root = Path(tempfile.mkdtemp(prefix="hpodtb"))
    folder = root / "digits"
    folder.mkdir()
    shutil.copy(DIGITS / "train.py", folder / "train.py")
    daemon = start_daemon(root)
    rows: list[dict[str, Any]] = []
    try:
        for seed in args.seeds:
            for ratio in args.ratios:
                spec = folder / f"r{ratio:g}-s{seed}.toml"
                spec.write_text(budget_spec(ratio, seed, prior=not args.no_prior))
                res = ctl(root, "submit", str(spec), "--wait", json_out=False)
                sid = f"budget-r{ratio:g}-s{seed}"
                show = ctl(root, "show", sid)
                b = show["budget"] or {}
                best = (show.get("best") or {}).get("objective")
                full = b.get("full_training") or float("nan")
                row = {
                    "seed": seed,
                    "ratio": ratio,
                    "state": show["state"],
                    "submit_rc": res.returncode,
                    "elapsed": show["elapsed"],
                    "full_training": full,
                    "target": ratio * full,
                    "share": show["elapsed"] / (ratio * full),
                    "trials": show["total_trials"],
                    "max_trials": b.get("max_trials"),
                    "revisions": b.get("revisions"),
                    "estimate": b.get("estimate"),
                    "best": best,
                    "reason": show.get("end_reason"),
                }
                rows.append(row)
                print(
                    f"seed {seed} ratio {ratio:g}: elapsed {row['elapsed']:.2f}s, full training "
                    f"measured {full:.2f}s, {ratio:g} x full = {row['target']:.2f}s "
                    f"(elapsed / target {row['share']:.3f}); {row['trials']} trials "
                    f"(max_trials {row['max_trials']}), {row['revisions']} revisions, "
                    f"best val_acc {best}; {row['state']}: {row['reason']}",
                    flush=True,
                )
                print(f"    estimate {json.dumps(row['estimate'])}", flush=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
    print(f"load average after: {loadavg()}")

    print()
    print("| seed | ratio | elapsed s | full training s | ratio x full s | elapsed / target | "
          "trials | best val_acc |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['ratio']:g} | {r['elapsed']:.2f} | {r['full_training']:.2f} | "
            f"{r['target']:.2f} | {r['share']:.3f} | {r['trials']} | {r['best']:.4f} |"
        )
    within = all(abs(r["share"] - 1) <= 0.10 for r in rows)
    good = all(r["best"] is not None and r["best"] >= 0.95 for r in rows)
    by = {(r["seed"], r["ratio"]): r["best"] for r in rows}
    more = all(
        by[(s, 4.0)] >= by[(s, 2.0)] for s in args.seeds if (s, 4.0) in by and (s, 2.0) in by
    )
    print(f"\nevery study within +-10% of ratio x full training: {within}")
    print(f"every best val_acc >= 0.95: {good}")
    print(f"ratio 4's best >= ratio 2's on each seed: {more}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if within and good and more else 1


if __name__ == "__main__":
    sys.exit(main())
