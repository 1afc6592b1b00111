"""The delay from a trial's exit to a client of the event stream receiving its ``trial_ended``
(issue 14: target under 10 ms on this machine).

Starts ``hpod serve`` on a private socket and state dir, submits ``--trials`` trials of
bench/event_trial.py (one report, then its wall clock written, then ``os._exit(0)``),
``--concurrent`` at a time, and follows the study with ``hpod.Client.events``. The delay is
measured from the shim's status file (``ended_at``: the shim's clock once it has reaped the
trial and everything it left, written just before the shim exits), seen with inotify as it is
renamed into place, to the moment the client has the event; and, split:

- trial -> shim: the trial's own stamp to the shim's ``ended_at`` (the kernel's exit of the
  trial, the shim's wait and reap);
- shim -> daemon: ``ended_at`` to the event's ``at`` (the shim's own exit, the daemon's child
  watcher, the run's task recording it);
- daemon -> client: the event's ``at`` to its receipt (the exit's commit with its event, the
  long poll woken by the commit, the answer over the socket).

All wall clock (time.time()), one machine. Prints median, p90, p99, max of each.

    .venv/bin/python bench/event_latency.py [--trials 50] [--concurrent 1] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hpod.client import Client
from hpod.errors import DaemonUnavailable

HERE = Path(__file__).resolve().parent

SPEC = """
name = "latency"
command = ["{python}", "{trial}"]

[env]
BENCH_STAMPS = "{stamps}"

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
seed = 1

[limits]
max_trials = {trials}
max_concurrent = {concurrent}
"""

_IN_MOVED_TO = 0x80
_IN_CLOSE_WRITE = 0x8


class StatusWatch:
    """The shims' status files as they appear (inotify on the daemon's runs/ folder): each
    run's ``ended_at``, read the moment it is renamed into place, before the daemon removes it."""

    def __init__(self, folder: Path) -> None:
        self.ended: dict[str, float] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        folder.mkdir(parents=True, exist_ok=True)
        if self._libc.inotify_add_watch(self._fd, str(folder).encode(), _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.folder = folder
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except OSError:
                return
            at = 0
            while at < len(buf):
                _, _, _, size = struct.unpack_from("iIII", buf, at)
                name = buf[at + 16 : at + 16 + size].rstrip(b"\0").decode()
                at += 16 + size
                if not name.endswith(".json"):
                    continue
                try:
                    status = json.loads((self.folder / name).read_text())
                except (OSError, ValueError):
                    continue
                # <study>.<trial>.<run>.json
                self.ended[name.rsplit(".", 3)[1]] = float(status["ended_at"])

    def close(self) -> None:
        os.close(self._fd)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "median_ms": round(statistics.median(values_ms), 2),
        "p90_ms": round(_pct(values_ms, 0.90), 2),
        "p99_ms": round(_pct(values_ms, 0.99), 2),
        "max_ms": round(max(values_ms), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hpodlat"))
    stamps, state = root / "stamps", root / "state"
    stamps.mkdir()
    sock = str(root / "s")
    spec = root / "study.toml"
    spec.write_text(
        SPEC.format(
            python=sys.executable,
            trial=HERE / "event_trial.py",
            stamps=stamps,
            trials=args.trials,
            concurrent=args.concurrent,
        )
    )
    watch = StatusWatch(state / "runs")
    daemon = subprocess.Popen(
        [
            *(sys.executable, "-m", "hpod", "serve", "--socket", sock),
            *("--state-dir", str(state), "--cpu-slots", str(args.concurrent)),
            *("--log-format", "json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received: dict[int, float] = {}
    at: dict[int, float] = {}
    try:
        client = Client(sock)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except DaemonUnavailable:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise
                time.sleep(0.05)
        sid = client.submit(spec)["study"]
        for event in client.events(sid):
            now = time.time()
            if event["kind"] == "trial_ended":
                received[event["trial"]] = now
                at[event["trial"]] = event["at"]
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        watch.close()

    exit_ms, trial_shim, shim_daemon, daemon_client, stamp_ms = [], [], [], [], []
    for tid, got in received.items():
        ended = watch.ended.get(str(tid))
        stamp_file = stamps / str(tid)
        stamp = float(stamp_file.read_text()) if stamp_file.exists() else None
        if ended is not None:
            exit_ms.append((got - ended) * 1000)
            shim_daemon.append((at[tid] - ended) * 1000)
        if stamp is not None:
            stamp_ms.append((got - stamp) * 1000)
            if ended is not None:
                trial_shim.append((ended - stamp) * 1000)
        daemon_client.append((got - at[tid]) * 1000)
    result: dict[str, Any] = {
        "trials": args.trials,
        "concurrent": args.concurrent,
        "shim_exit_to_client": _figures(exit_ms),
        "trial_exit_to_client": _figures(stamp_ms),
        "trial_to_shim": _figures(trial_shim),
        "shim_to_daemon": _figures(shim_daemon),
        "daemon_to_client": _figures(daemon_client),
    }
    shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.trials} trials, {args.concurrent} at a time (milliseconds)")
        print(f"{'':24}{'n':>5}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}")
        for name in (
            "shim_exit_to_client",
            "trial_exit_to_client",
            "trial_to_shim",
            "shim_to_daemon",
            "daemon_to_client",
        ):
            f = result[name]
            print(
                f"{name:24}{f['n']:>5}{f['median_ms']:>9.2f}{f['p90_ms']:>9.2f}"
                f"{f['p99_ms']:>9.2f}{f['max_ms']:>9.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
