"""Many trials at once against a real daemon: how fast they launch, and the reports after.

    .venv/bin/python bench/scale_concurrent.py [--sizes 64,256,1000] [--after 10] [--warm]
    .venv/bin/python bench/scale_concurrent.py --sizes 5000 --warm   # see "limits" below

For each size N: a fresh ``hpod serve`` (``--cpu-slots N``, connection limits raised to fit N),
one fifo study of N trials, all at once, each ``bench/scale_trial.py``: a sleep trial that
reports every ``--interval`` seconds (1 s). It prints:

- launch: from the submit's answer to the N-th trial's first report, and N divided by it;
- reports/s over the ``--after`` seconds that follow the launch (N per second is what the
  trials send);
- the report round trip p50/p99/max as the trials measured it, during the launch and after it
  (the reports answered before the bench stops the trials: the ones in flight then wait behind
  N exits);
- the daemon's RSS (largest sampled) and CPU (its user+system seconds over each phase).

``--warm`` runs the study with ``[executor] warm_start = true`` (warm_imports = ["hpod.trial"]):
each trial is forked from the study's pre-started interpreter instead of starting its own
(docs/warm-start.md). ``--before PATH`` runs the daemon from another checkout (a worktree of an
older commit) for a before/after. ``HPOD_BENCH_PROFILE=FILE`` runs the daemon under cProfile;
``HPOD_BENCH_LOOP_PROBE=FILE`` times every callback of its loop (bench/loopprobe) and writes the
ones over 2 ms there, with the loop thread's CPU time beside the wall time.

Limits: the daemon needs ``RLIMIT_NOFILE`` over 64 + 4 per slot (for 5,000: over 20,064; this
script raises its own soft limit to the hard one, and the daemon inherits it), and
``max_connections`` / ``max_connections_per_uid`` over N (set here in the daemon's config). Each
cold trial is a Python interpreter of ~14 MB; 5,000 of them want ~70 GB of memory, warm ones
(forked, pages shared) a fraction of it. ``bench/scale.py`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SPEC = """
name = "scale-{n}"
command = ["python", "{trial}"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
interval = {{ param_type = "choice", range = [{interval}] }}
[scheduler]
type = "fifo"
max_resource = 1000000
[limits]
max_trials = {n}
max_concurrent = {n}
"""

WARM = """
[executor]
warm_start = true
warm_imports = ["hpod.trial"]
"""


@dataclass(frozen=True)
class SizeResult:
    trials: int
    warm: bool
    launch_seconds: float
    launches_per_second: float
    reports_per_second: float
    rtt_launch_p50_ms: float
    rtt_launch_p99_ms: float
    rtt_after_p50_ms: float
    rtt_after_p99_ms: float
    rtt_after_max_ms: float
    daemon_rss_mb: float
    daemon_cpu_launch_s: float
    daemon_cpu_after_percent: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    idx = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[idx]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def daemon(root: Path, n: int, pythonpath: Path) -> Iterator[subprocess.Popen[bytes]]:
    notify = root / "n"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(notify))
    ready.settimeout(120)
    conf = root / "hpod.toml"
    conf.write_text(f"max_connections = {n + 256}\nmax_connections_per_uid = {n + 256}\n")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), PYTHONPATH=str(pythonpath))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("HPOD_SOCKET", None)
    if "HPOD_BENCH_LOOP_PROBE" in env:
        # HPOD_BENCH_LOOP_PROBE=FILE: every callback of the daemon's loop timed, the stalls over
        # 2 ms written there (bench/loopprobe; the trials do not inherit it).
        env["PYTHONPATH"] = os.pathsep.join([str(HERE / "loopprobe"), str(pythonpath)])
    # HPOD_BENCH_PROFILE=FILE: the daemon runs under cProfile, its profile written there.
    prof = os.environ.get("HPOD_BENCH_PROFILE")
    profile = ["-m", "cProfile", "-o", prof] if prof else []
    proc = subprocess.Popen(
        [sys.executable, *profile, "-m", "hpod", "serve", "--config", str(conf), "--socket",
         str(root / "s"), "--state-dir", str(root / "state"), "--cpu-slots", str(n),
         "--log-format", "json", "--log-level", "warning"],
        env=env, stdout=(root / "daemon.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with ready:
            while b"READY=1" not in ready.recv(4096):
                pass
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ctl(root: Path, pythonpath: Path, *args: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", str(root / "s"), *args, "--json"],
        capture_output=True, text=True, timeout=600, check=True, env=env,
    ).stdout  # fmt: skip
    return json.loads(out)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def one_size(
    n: int, *, after: float, interval: float, warm: bool, pythonpath: Path, keep: bool
) -> SizeResult:
    root = Path(tempfile.mkdtemp(prefix="hpod-scale"))
    try:
        spec = root / "study.toml"
        text = SPEC.format(n=n, trial=HERE / "scale_trial.py", interval=interval)
        spec.write_text(text + (WARM if warm else ""))
        with daemon(root, n, pythonpath) as proc:
            rss = _rss_mb(proc.pid)
            submitted = time.time()
            sid = _ctl(root, pythonpath, "submit", str(spec))["study"]
            cpu0 = _cpu_seconds(proc.pid)
            folder = root / "state" / "studies" / sid
            up = folder / "up"
            deadline = time.monotonic() + max(120.0, n * 0.5)
            while _count_lines(up) < n:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"only {_count_lines(up)} of {n} trials reported")
                rss = max(rss, _rss_mb(proc.pid))
                time.sleep(0.05)
            launched = max(int(x) for x in up.read_text().split()) / 1e9
            cpu1 = _cpu_seconds(proc.pid)
            t1 = time.monotonic()
            while time.monotonic() - t1 < after:
                rss = max(rss, _rss_mb(proc.pid))
                time.sleep(0.2)
            cpu2 = _cpu_seconds(proc.pid)
            window = time.monotonic() - t1
            stopped = time.time()
            (folder / "stop").touch()
            _ctl(root, pythonpath, "wait", sid)
        during: list[float] = []
        later: list[float] = []
        counted = 0
        for timings in (folder / "trials").glob("*/timings.txt"):
            for line in timings.read_text().splitlines():
                sent_ns, rtt_ns = (int(x) for x in line.split())
                sent = sent_ns / 1e9
                if sent <= launched:
                    during.append(rtt_ns / 1e6)
                elif sent + rtt_ns / 1e9 <= stopped:
                    # Not the reports in flight at the stop: their answers wait behind N exits.
                    later.append(rtt_ns / 1e6)
                if launched < sent <= launched + window:
                    counted += 1
        during.sort()
        later.sort()
        launch = launched - submitted
        return SizeResult(
            trials=n,
            warm=warm,
            launch_seconds=round(launch, 2),
            launches_per_second=round(n / launch, 1),
            reports_per_second=round(counted / window, 1),
            rtt_launch_p50_ms=round(percentile(during, 50), 2),
            rtt_launch_p99_ms=round(percentile(during, 99), 2),
            rtt_after_p50_ms=round(percentile(later, 50), 2),
            rtt_after_p99_ms=round(percentile(later, 99), 2),
            rtt_after_max_ms=round(later[-1] if later else float("nan"), 2),
            daemon_rss_mb=round(rss, 1),
            daemon_cpu_launch_s=round(cpu1 - cpu0, 2),
            daemon_cpu_after_percent=round(100 * (cpu2 - cpu1) / window, 1),
        )
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(
    sizes: list[int],
    *,
    after: float = 10.0,
    interval: float = 1.0,
    warm: bool = False,
    pythonpath: Path = ROOT,
    keep: bool = False,
) -> list[SizeResult]:
    """Each size in turn, printed as it is done; the results."""
    _raise_nofile()
    results = []
    for n in sizes:
        res = one_size(
            n, after=after, interval=interval, warm=warm, pythonpath=pythonpath, keep=keep
        )
        print_result(res)
        results.append(res)
    return results


def print_result(r: SizeResult) -> None:
    kind = "warm" if r.warm else "cold"
    print(
        f"{r.trials:>5} trials ({kind}): launched in {r.launch_seconds:.2f} s "
        f"({r.launches_per_second:.0f}/s); {r.reports_per_second:.0f} reports/s after; "
        f"RTT during launch p50 {r.rtt_launch_p50_ms:.2f} ms p99 {r.rtt_launch_p99_ms:.2f} ms; "
        f"after p50 {r.rtt_after_p50_ms:.2f} ms p99 {r.rtt_after_p99_ms:.2f} ms "
        f"max {r.rtt_after_max_ms:.2f} ms; daemon RSS {r.daemon_rss_mb:.0f} MB, CPU "
        f"{r.daemon_cpu_launch_s:.2f} s during launch, {r.daemon_cpu_after_percent:.0f} % after",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,256,1000")
    parser.add_argument("--after", type=float, default=10.0, help="seconds measured after")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reports")
    parser.add_argument("--warm", action="store_true", help="[executor] warm_start = true")
    parser.add_argument("--before", type=Path, default=ROOT, help="the hpod checkout to run")
    parser.add_argument("--keep", action="store_true", help="keep the state folders")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = run(
        sizes,
        after=args.after,
        interval=args.interval,
        warm=args.warm,
        pythonpath=args.before.resolve(),
        keep=args.keep,
    )
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
