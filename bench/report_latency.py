"""Report round trip (trial -> daemon -> decision) with 8 trial processes reporting at once.

Starts a real daemon on a temporary socket and state folder, runs one study of 8 concurrent
trials that each send REPORTS reports as fast as they can, and prints p50/p99/max of the round
trip as each trial measured it (durable store commit included: a report is answered only after
it is committed).

    .venv/bin/python bench/report_latency.py [--trials 8] [--reports 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent

SPEC = """
name = "latency"
command = ["python", "{trial}"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
interval = {{ param_type = "choice", range = [{interval}] }}
[scheduler]
type = "fifo"
max_resource = {reports}
[limits]
max_trials = {trials}
max_concurrent = {trials}
"""


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--durability", choices=["normal", "fsync"], default="normal")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        help="work between two reports of a trial (0: back to back, the worst case)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hpod"))
    sock = str(root / "s")
    state = root / "state"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    notify = root / "n"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(notify))
    ready.settimeout(60)
    conf = root / "hpod.toml"
    conf.write_text(f'durability = "{args.durability}"\n')
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpod",
            "serve",
            "--config",
            str(conf),
            "--socket",
            sock,
            "--state-dir",
            str(state),
            "--cpu-slots",
            str(args.trials),
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ],
        env=dict(env, NOTIFY_SOCKET=str(notify)),
    )
    try:
        while b"READY=1" not in ready.recv(4096):
            pass
        spec = root / "study.toml"
        spec.write_text(
            SPEC.format(
                trial=HERE / "latency_trial.py",
                reports=args.reports,
                trials=args.trials,
                interval=args.interval_ms / 1000,
            )
        )
        ctl = [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", sock]
        sid = json.loads(subprocess.check_output([*ctl, "submit", str(spec), "--json"], env=env))[
            "study"
        ]
        trials_dir = state / "studies" / sid / "trials"
        # Each trial sends one report before the barrier: wait until all 8 are connected.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = json.loads(subprocess.check_output([*ctl, "trials", sid, "--json"], env=env))
            if sum(1 for t in rows if t["resource"] is not None) >= args.trials:
                break
        (trials_dir.parent / "go").touch()
        t0 = time.monotonic()
        subprocess.run([*ctl, "wait", sid, "--json"], env=env, check=True, capture_output=True)
        wall = time.monotonic() - t0
        lat: list[float] = []
        for f in trials_dir.glob("*/latency.txt"):
            lat.extend(int(x) / 1e6 for x in f.read_text().split())
        lat.sort()
        total = len(lat)
        print(
            f"report round trip, {args.trials} trial processes reporting at once, "
            f"durability={args.durability}, {args.interval_ms:g} ms between reports"
        )
        print(f"  reports: {total} in {wall:.2f} s ({total / wall:.0f}/s)")
        print(
            f"  p50 {percentile(lat, 50):.3f} ms   p90 {percentile(lat, 90):.3f} ms   "
            f"p99 {percentile(lat, 99):.3f} ms   max {lat[-1]:.3f} ms"
        )
        print(f"  target p99 < 2 ms: {'met' if percentile(lat, 99) < 2.0 else 'NOT met'}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
