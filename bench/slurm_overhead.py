"""What a Slurm job costs a run, against the local executor (issue 18; docs/slurm.md).

On a real single-node Slurm on localhost (tests/slurm_cluster.py: munged, slurmctld and slurmd,
as root), one `hpod serve` runs the same FIFO study twice: once with the local executor, once
with ``[executor] type = "slurm"`` (each run a job, reporting over the TCP endpoint). Each trial
reports once and exits, and ``max_concurrent = 1``, so every run waits for the one before it.
Two overheads per run:

- **decision to running**: the daemon's ``trial_launch`` (the decision is made) to the trial's
  first line (its process runs, in its job);
- **end to slot reused**: the trial's last line before it exits, to the next ``trial_launch``
  (the daemon saw the end, recorded it, and gave the slot to the next run).

    sudo .venv/bin/python bench/slurm_overhead.py [--runs 8] [--poll 0.2s 2s]

It prints the median and the largest of each, per executor (and per ``poll`` for Slurm).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import slurm_cluster  # noqa: E402

TRIAL = """
import os, time
from pathlib import Path
from hpod import trial
folder = Path(os.environ["HPOD_TRIAL_DIR"])
(folder / "began").write_text(repr(time.time()))
trial.report(step=1, loss=float(trial.trial_id()))
(folder / "ending").write_text(repr(time.time()))
"""

SPEC = """
name = "{name}"
command = ["python", "trial.py"]

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = {{ param_type = "uniform", range = [0.0, 1.0] }}

[scheduler]
type = "fifo"
max_resource = 1

[searcher]
type = "random"

[limits]
max_trials = {runs}
max_concurrent = 1
{executor}
"""

SLURM = """
[executor]
type = "slurm"
poll = "{poll}"
checkpoint_root = "{root}"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _ctl(sock: str, *args: str, env: dict[str, str]) -> Any:
    res = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", sock, *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if res.returncode not in (0, 9):
        raise SystemExit(f"hpodctl {' '.join(args)} exited {res.returncode}: {res.stderr}")
    return json.loads(res.stdout)


def measure(
    root: Path,
    sock: str,
    env: dict[str, str],
    log: Path,
    name: str,
    runs: int,
    executor: str,
    trials_top: Path,
) -> dict[str, list[float]]:
    folder = root / name
    folder.mkdir()
    (folder / "trial.py").write_text(TRIAL)
    (folder / "study.toml").write_text(SPEC.format(name=name, runs=runs, executor=executor))
    sid = _ctl(sock, "submit", str(folder / "study.toml"), "--wait", env=env)["study"]
    launches = sorted(
        (_stamp(e["timestamp"]), e["trial"])
        for e in map(json.loads, log.read_text().splitlines())
        if e.get("event") == "trial_launch" and e.get("study") == sid
    )
    start: list[float] = []
    reuse: list[float] = []
    for i, (at, tid) in enumerate(launches):
        trial = (
            trials_top / sid / str(tid)
            if "slurm" in executor
            else (root / "state" / "studies" / sid / "trials" / str(tid))
        )
        start.append(float((trial / "began").read_text()) - at)
        if i + 1 < len(launches):
            reuse.append(launches[i + 1][0] - float((trial / "ending").read_text()))
    return {"decision to running": start, "end to slot reused": reuse}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--poll", nargs="+", default=["0.2s", "2s"])
    args = parser.parse_args()
    why = slurm_cluster.why_not()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    cluster = slurm_cluster.start()
    root = Path(tempfile.mkdtemp(prefix="hpod-bench-"))
    env = {**os.environ, **cluster.env}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    sock = str(root / "s")
    log = root / "daemon.log"
    shared = root / "shared"
    shared.mkdir()
    config = root / "hpod.toml"
    config.write_text(
        f'socket = "{sock}"\nstate_dir = "{root / "state"}"\nlog_format = "json"\n'
        f'trial_tcp = "127.0.0.1:{_free_port()}"\ncpu_slots = 1\n'
    )
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "hpod", "serve", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while '"serving"' not in log.read_text():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"the daemon did not start:\n{log.read_text()}")
            time.sleep(0.05)
        results: dict[str, dict[str, list[float]]] = {}
        results["local"] = measure(root, sock, env, log, "local", args.runs, "", shared)
        for poll in args.poll:
            executor = SLURM.format(poll=poll, root=shared)
            name = f"slurm-{poll.replace('.', '_')}"
            results[f"slurm (poll {poll})"] = measure(
                root, sock, env, log, name, args.runs, executor, shared
            )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        cluster.stop()
    print(f"overhead per run, {args.runs} runs each, one at a time (seconds: median / max)")
    print(f"{'executor':<22} {'decision to running':>22} {'end to slot reused':>22}")
    for name, figures in results.items():
        cells = []
        for key in ("decision to running", "end to slot reused"):
            values = figures[key]
            cells.append(f"{statistics.median(values):.3f} / {max(values):.3f}")
        print(f"{name:<22} {cells[0]:>22} {cells[1]:>22}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
