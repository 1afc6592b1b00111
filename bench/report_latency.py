"""Report round trip (trial -> daemon -> decision) with 8 trial processes reporting at once.

Starts a real daemon on a temporary socket and state folder, runs one study of 8 concurrent
trials that each send REPORTS reports as fast as they can, and prints p50/p99/max of the round
trip as each trial measured it (durable store commit included: a report is answered only after
it is committed).

    .venv/bin/python bench/report_latency.py [--trials 8] [--reports 2000]
    .venv/bin/python bench/report_latency.py --during-fit

``--during-fit`` first runs a small DyHPO study whose model fit is deliberately slow
(``--fit-iterations``) and, once that study is over and its fit still under way in the worker
process, the same 8 back-to-back trials: it prints the round trips sent while a fit was running
(between its request and its model's arrival, from the daemon's log) apart from the others.
The worker would hold one of this machine's two cores for the whole run; with reports this fast
it backs off (hpod.fit.cpu.Backoff), which is what the figure measures.

``--dyhpo-study`` measures a DyHPO study's own trials instead (rung at reports/2, slow fits):
the study pauses and resumes trials as it goes, so its round trips also carry the start-up of
some 50 trial processes (``--churn-only`` runs the same with ASHA, no model, to tell the two
apart).

``HPOD_BENCH_KEEP=1`` keeps the daemon's log, state folder and the trials' timings;
``HPOD_BENCH_PROFILE=FILE`` runs the daemon under cProfile and writes its profile there.
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

from hpod.client import Client

HERE = Path(__file__).parent

_HEAD = """
name = "{name}"
command = ["python", "{trial}"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
interval = {{ param_type = "choice", range = [{interval}] }}
"""

SPEC = (
    _HEAD
    + """
[scheduler]
type = "fifo"
max_resource = {reports}
[limits]
max_trials = {trials}
max_concurrent = {trials}
"""
)

# --dyhpo-study's study, and (small, quick, with a long fit left behind) --during-fit's.
DYHPO_SPEC = (
    _HEAD
    + """
scale = {{ param_type = "uniform", range = [0.5, 2.0] }}
[scheduler]
type = "{scheduler}"
max_resource = {reports}
rung_levels = [{rung}]
[scheduler.options]
fit_iterations = {iterations}
[searcher]
type = "dyhpo"
num_init_trials = 2
[limits]
max_trials = {max_trials}
max_concurrent = {trials}
"""
)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


def fit_windows(log_path: Path) -> list[tuple[float, float]]:
    """(requested, installed) of each fit, from the daemon's JSON log; one still running at the
    end has no end."""
    requested: list[float] = []
    installed: list[float] = []
    for line in log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "fit_requested":
            requested.append(event["requested_at"])
        elif event.get("event") == "model_fitted":
            installed.append(event["installed_at"])
    ends = [*installed, *[float("inf")] * (len(requested) - len(installed))]
    return list(zip(requested, ends, strict=True))


def during_fit_figures(
    log_path: Path, stamped: list[tuple[float, float]], client: Client, sid: str
) -> None:
    windows = fit_windows(log_path)
    inside = sorted(r for t, r in stamped if any(a <= t <= b for a, b in windows))
    outside = sorted(r for t, r in stamped if not any(a <= t <= b for a, b in windows))
    d = client.study(sid)["decisions"]
    fit_s = d.get("fit_seconds") or {"median": 0.0, "max": 0.0}
    dec_s = d.get("decide_seconds") or {"median": 0.0, "max": 0.0}
    first, last = min(t for t, _ in stamped), max(t for t, _ in stamped)
    busy = sum(max(0.0, min(b, last) - max(a, first)) for a, b in windows)
    print(
        f"  DyHPO fits finished: {d['fits']} (median {fit_s['median']:.2f} s, max "
        f"{fit_s['max']:.2f} s in the worker); a fit was under way for {busy:.1f} s of the "
        f"{last - first:.1f} s measured"
    )
    print(
        f"  decisions: {d['asha_promotions']} ASHA promotions, {d['model_promotions']} model "
        f"promotions, {d['random_starts']} random starts, {d['model_starts']} model starts; "
        f"decision time median {dec_s['median'] * 1000:.2f} ms, max {dec_s['max'] * 1000:.2f} ms"
    )
    for label, values in (("during a fit", inside), ("no fit running", outside)):
        if values:
            print(
                f"  {label}: {len(values)} reports, p50 {percentile(values, 50):.3f} ms   "
                f"p99 {percentile(values, 99):.3f} ms   max {values[-1]:.3f} ms"
            )
    if inside:
        verdict = "met" if percentile(inside, 99) < 2.0 else "NOT met"
        print(f"  target p99 < 2 ms during fits: {verdict}")


def start_daemon(
    root: Path, args: argparse.Namespace, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    notify = root / "n"
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(notify))
    ready.settimeout(60)
    conf = root / "hpod.toml"
    conf.write_text(f'durability = "{args.durability}"\n')
    modeled = args.during_fit or args.dyhpo_study
    # HPOD_BENCH_PROFILE=FILE: the daemon runs under cProfile, its profile written there.
    prof = os.environ.get("HPOD_BENCH_PROFILE")
    profile = ["-m", "cProfile", "-o", prof] if prof else []
    daemon = subprocess.Popen(
        [
            sys.executable,
            *profile,
            "-m",
            "hpod",
            "serve",
            "--config",
            str(conf),
            "--socket",
            str(root / "s"),
            "--state-dir",
            str(root / "state"),
            "--cpu-slots",
            str(args.trials),
            "--log-format",
            "json",
            "--log-level",
            "info" if modeled else "warning",
        ],
        env=dict(env, NOTIFY_SOCKET=str(notify)),
        stdout=(root / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    with ready:
        while b"READY=1" not in ready.recv(4096):
            pass
    return daemon


def run_fitting_study(client: Client, root: Path, iterations: int) -> str:
    """Run the small DyHPO study to its end; its last fit request is still in the worker."""
    spec = root / f"fitting-{iterations}.toml"
    spec.write_text(
        DYHPO_SPEC.format(
            name="fitting",
            trial=HERE / "latency_trial.py",
            interval=0.0,
            scheduler="dyhpo",
            reports=9,
            rung="1, 3",
            iterations=iterations,
            max_trials=6,
            trials=2,
        )
    )
    sid = str(client.submit(spec)["study"])
    (root / "state" / "studies" / sid).mkdir(parents=True, exist_ok=True)
    (root / "state" / "studies" / sid / "go").touch()
    client.wait(sid)
    return sid


def leave_a_fit_running(client: Client, root: Path, args: argparse.Namespace) -> None:
    # A first, short fit starts the worker and imports torch there: a one-off of a second or
    # two of a core and much disk reading, which stalled the daemon's writes for up to 0.3 s
    # when it overlapped the measurement. The figure is for a fit in a warm worker.
    warm = run_fitting_study(client, root, 50)
    deadline = time.monotonic() + 120
    while (decisions := client.study(warm)["decisions"])["fits"] < 1:
        if decisions["fit_errors"] or time.monotonic() > deadline:
            raise SystemExit(f"the warm-up fit did not finish: {decisions}")
        time.sleep(0.05)  # the harness's own wait for the warm-up, polled gently
    sid = run_fitting_study(client, root, args.fit_iterations)
    if not client.study(sid)["decisions"]["fitting"]:
        raise SystemExit("the fitting study left no fit running: raise --fit-iterations")


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
    parser.add_argument(
        "--during-fit",
        action="store_true",
        help="the same trials while a DyHPO model is being fitted in the worker",
    )
    parser.add_argument(
        "--dyhpo-study",
        action="store_true",
        help="the round trips of a DyHPO study's own trials (pauses, resumes, fits)",
    )
    parser.add_argument(
        "--churn-only",
        action="store_true",
        help="with --dyhpo-study: the same study under ASHA (trial starts, no model)",
    )
    parser.add_argument("--fit-iterations", type=int, default=0, help="0: a fit that lasts")
    parser.add_argument("--max-trials", type=int, default=40, help="--dyhpo-study: trials in all")
    args = parser.parse_args()
    if not args.fit_iterations:
        # --during-fit: a fit that outlasts the measurement (a few seconds on this machine's
        # cores); --dyhpo-study: slow fits, several per run.
        args.fit_iterations = 200_000 if args.during_fit else 3000

    root = Path(tempfile.mkdtemp(prefix="hpod"))
    state = root / "state"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # The submit below carries this process's environment to the trials (the submitter's):
    # its `python` must be this interpreter, the one with hpod installed.
    os.environ["PATH"] = env["PATH"]
    daemon = start_daemon(root, args, env)
    try:
        # The harness talks to the daemon in-process: an hpodctl started inside the measured
        # window (interpreter start-up and imports, ~0.1 s of a core) showed up as a burst of
        # slow round trips in the first 0.4 s.
        client = Client(str(root / "s"), timeout=None)
        if args.during_fit:
            leave_a_fit_running(client, root, args)
        spec = root / "study.toml"
        if args.dyhpo_study:
            text = DYHPO_SPEC.format(
                name="latency-dyhpo",
                trial=HERE / "latency_trial.py",
                scheduler="asha" if args.churn_only else "dyhpo",
                reports=args.reports,
                rung=args.reports // 2,
                iterations=args.fit_iterations,
                max_trials=args.max_trials,
                trials=args.trials,
                interval=args.interval_ms / 1000,
            )
            if args.churn_only:
                text = text.replace('type = "dyhpo"', 'type = "random"').replace(
                    "[scheduler.options]\nfit_iterations", "# fit_iterations"
                )
        else:
            text = SPEC.format(
                name="latency",
                trial=HERE / "latency_trial.py",
                reports=args.reports,
                trials=args.trials,
                interval=args.interval_ms / 1000,
            )
        spec.write_text(text)
        sid = client.submit(spec)["study"]
        trials_dir = state / "studies" / sid / "trials"
        # Each trial sends one report before the barrier: wait until all 8 are connected.
        # (A DyHPO study starts its trials as it goes: no barrier, it measures them all.)
        deadline = time.monotonic() + 120
        if args.dyhpo_study:
            (trials_dir.parent).mkdir(parents=True, exist_ok=True)
            (trials_dir.parent / "go").touch()
        while not args.dyhpo_study and time.monotonic() < deadline:
            if sum(1 for t in client.trials(sid) if t["resource"] is not None) >= args.trials:
                break
            time.sleep(0.05)  # the harness's own barrier, polled gently; not a readiness wait
        cpu0 = cpu_seconds(daemon.pid)
        (trials_dir.parent / "go").touch()
        t0 = time.monotonic()
        client.wait(sid)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(daemon.pid) - cpu0
        stamped: list[tuple[float, float]] = []  # (sent at, round trip in ms)
        for f in trials_dir.glob("*/latency.txt"):
            for line in f.read_text().splitlines():
                sent, rtt = line.split()
                stamped.append((int(sent) / 1e9, int(rtt) / 1e6))
        lat = sorted(rtt for _, rtt in stamped)
        total = len(lat)
        print(
            f"report round trip, {args.trials} trial processes reporting at once, "
            f"durability={args.durability}, {args.interval_ms:g} ms between reports"
            + (", while a DyHPO model is fitted" if args.during_fit else "")
            + (
                f", {args.max_trials} trials of a {'n ASHA' if args.churn_only else ' DyHPO'} study"
                if args.dyhpo_study
                else ""
            )
        )
        print(f"  reports: {total} in {wall:.2f} s ({total / wall:.0f}/s)")
        print(
            f"  p50 {percentile(lat, 50):.3f} ms   p90 {percentile(lat, 90):.3f} ms   "
            f"p99 {percentile(lat, 99):.3f} ms   max {lat[-1]:.3f} ms"
        )
        print(f"  target p99 < 2 ms: {'met' if percentile(lat, 99) < 2.0 else 'NOT met'}")
        # The daemon's own CPU time (user + system, all its threads) over the measured window:
        # what a report costs it, which a machine busy with other work inflates far less than
        # the round trips.
        print(f"  daemon CPU: {cpu:.2f} s, {1e6 * cpu / max(total, 1):.0f} us a report")
        if args.during_fit or (args.dyhpo_study and not args.churn_only):
            during_fit_figures(root / "daemon.log", stamped, client, sid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        if os.environ.get("HPOD_BENCH_KEEP"):
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
