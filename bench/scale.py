"""How hpod holds up as a study grows: decision times, the daemon's memory and its loop's stalls.

Three parts, each on its own with ``--part``:

``decisions``: a study of N finished trials (1,000 and 10,000) built from trial records as the
store would restore them (a history shaped as the scheduler leaves it: with ASHA, each rung holds
the best 1/eta of the rung below), then 300 more trials run through it by a simulated pool of 4
slots: every free slot's ``next_launch`` and every report's ``on_report`` timed, per scheduler
(fifo, median, ASHA promotion and stopping, Hyperband, BO, DyHPO). Model fits (BO, DyHPO) are
run once before the timing and are not in it (the daemon runs them in its worker).

``daemon``: a real daemon on a state folder that holds a study of N finished trials per
scheduler (written into its store before it starts), which then runs 24 quick trials of 4
epochs through it, 4 at a time; the daemon's event loop is timed callback by callback
(``bench/loopprobe``: every handle the loop runs, so the longest one is the longest stall),
and its RSS is read after it restored the studies and at the end. Then ``hpodctl trials --json``
on each loaded study (a 10,000-trial one did not fit in a line before).

``concurrent``: ``bench/scale_concurrent.py`` (concurrent sleep trials: launch time, reports/s,
round trips, RSS and CPU), when it is there.

    .venv/bin/python bench/scale.py [--sizes 1000 10000] [--part decisions daemon concurrent]
        [--schedulers fifo asha asha_stop hyperband hyperband_adaptive median bo dyhpo]

Targets (issue 20): at 10,000 trials, decisions under 0.5 ms median and 5 ms max for fifo, ASHA
(both types) and Hyperband; no loop stall over 20 ms; daemon RSS under 150 MB with a 10,000-trial
study loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

MAX_RESOURCE = 27
ETA = 3
LEVELS = (1.0, 3.0, 9.0)  # min_resource 1, eta 3, max_resource 27
EXTRA_TRIALS = 300
SLOTS = 4
BUDGET_S = 45.0  # each scheduler and size: the timed run stops there (the old code was slow)

SCHEDULERS: dict[str, dict[str, Any]] = {
    "fifo": {"scheduler": {"type": "fifo"}},
    "median": {"scheduler": {"type": "median", "grace_period": 1, "min_trials": 3}},
    "asha": {"scheduler": {"type": "asha", "rung_type": "promotion"}},
    "asha_stop": {"scheduler": {"type": "asha", "rung_type": "stopping"}},
    "hyperband": {"scheduler": {"type": "hyperband", "brackets": 3}},
    # The default's Hyperband: brackets weighted by the study's rank agreement.
    "hyperband_adaptive": {
        "scheduler": {"type": "hyperband", "brackets": 3, "adaptive_brackets": True}
    },
    "bo": {"scheduler": {"type": "fifo"}, "searcher": {"type": "bo"}},
    "dyhpo": {
        "scheduler": {"type": "dyhpo", "options": {"fit_iterations": 20}},
        "searcher": {"type": "dyhpo"},
    },
}
TARGETED = ("fifo", "asha", "asha_stop", "hyperband", "hyperband_adaptive")


def spec_mapping(kind: str, max_trials: int, command: list[str] | None = None) -> dict[str, Any]:
    extra = SCHEDULERS[kind]
    sched = {"min_resource": 1, "max_resource": MAX_RESOURCE, "reduction_factor": ETA}
    sched.update(extra["scheduler"])
    if sched["type"] in ("fifo", "median"):
        sched.pop("min_resource")
        sched.pop("reduction_factor")
    raw: dict[str, Any] = {
        "name": f"scale-{kind}",
        "command": command or ["true"],
        "objective": {"metric": "loss", "mode": "min", "resource": "epoch"},
        "space": {
            "lr": {"param_type": "loguniform", "range": [1e-4, 1e-1]},
            "width": {"param_type": "uniform", "range": [0.0, 1.0]},
        },
        "scheduler": sched,
        "limits": {"max_trials": max_trials, "max_concurrent": SLOTS},
    }
    if "searcher" in extra:
        raw["searcher"] = {**extra["searcher"], "seed": 0}
    return raw


def loss(q: float, epoch: float) -> float:
    return round(q * (1.0 + 2.0 / epoch), 6)


def shaped(kind: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """N finished trials as the scheduler would have left them (see the module's docstring)."""
    rng = random.Random(seed)
    brackets = 3 if kind.startswith("hyperband") else 1
    promotion = kind in ("asha", "hyperband", "hyperband_adaptive", "dyhpo")
    rungs = kind in ("asha", "asha_stop", "hyperband", "hyperband_adaptive", "dyhpo")
    out = []
    for i in range(n):
        q = rng.random()
        b = i % brackets
        tops = [*LEVELS[b:], float(MAX_RESOURCE)]
        if rungs:
            # Reaches its bracket's k-th rung when it is among the best eta**-k (by q).
            k = 0
            while k + 1 < len(tops) and q < ETA ** -(k + 1):
                k += 1
            last = tops[k]
        else:
            last = float(MAX_RESOURCE)
        curve = [(float(e), loss(q, e)) for e in range(1, int(last) + 1)]
        done = last >= MAX_RESOURCE
        state = "completed" if done else ("paused" if promotion else "stopped")
        out.append(
            {
                "trial_id": i,
                "config": {"lr": 10 ** (-4 + 3 * rng.random()), "width": q},
                "state": state,
                "bracket": b,
                "resume_from": 0.0 if not promotion else (tops[k - 1] if k else 0.0),
                "max_resource": last,
                "runs": k + 1 if promotion else 1,
                "curve": curve,
            }
        )
    return out


# -- part 1: decisions in the core ------------------------------------------------------------


def decisions(kind: str, n: int) -> dict[str, Any]:
    from hpod.core.models import fit
    from hpod.core.spec import StudySpec
    from hpod.core.states import Decision, TrialState
    from hpod.core.study import Study, TrialRecord

    spec = StudySpec.from_mapping(spec_mapping(kind, n + EXTRA_TRIALS), base_dir=Path("."))
    records = [
        TrialRecord(
            trial_id=r["trial_id"],
            config=r["config"],
            state=TrialState(r["state"]),
            bracket=r["bracket"],
            resume_from=r["resume_from"],
            max_resource=r["max_resource"],
            runs=r["runs"],
            curve=tuple(r["curve"]),
        )
        for r in shaped(kind, n)
    ]
    t0 = time.perf_counter()
    study = Study.restore(spec, records)
    restore_s = time.perf_counter() - t0
    fit_s: list[float] = []

    def fits() -> None:
        req = study.wants_fit()
        if req is not None:
            t = time.perf_counter()
            study.install(req, fit(req))
            fit_s.append(time.perf_counter() - t)

    fits()
    rng = random.Random(1)
    slot_s: list[float] = []
    report_s: list[float] = []
    cpu_s: list[float] = []  # each decision's CPU time (this thread's), both kinds
    running: dict[int, float] = {}  # trial -> its quality
    quality: dict[int, float] = {}
    launched = 0
    clock = 1e9
    stop_at = time.monotonic() + BUDGET_S
    while time.monotonic() < stop_at:
        while len(running) < SLOTS and launched < EXTRA_TRIALS * 2:
            t, c = time.perf_counter(), time.thread_time()
            launch = study.next_launch(clock)
            slot_s.append(time.perf_counter() - t)
            cpu_s.append(time.thread_time() - c)
            if launch is None:
                break
            launched += 1
            q = quality.setdefault(launch.trial_id, rng.random())
            running[launch.trial_id] = q
        if not running:
            break
        for tid in list(running):
            clock += 0.01
            rec = study.record(tid)
            epoch = float(int(max(rec.resume_from, max((r for r, _ in rec.curve), default=0))) + 1)
            t, c = time.perf_counter(), time.thread_time()
            out = study.on_report(tid, {"epoch": epoch, "loss": loss(running[tid], epoch)}, clock)
            report_s.append(time.perf_counter() - t)
            cpu_s.append(time.thread_time() - c)
            if out.decision is not Decision.CONTINUE:
                study.on_exit(tid, 0, clock)
                del running[tid]
        if kind in ("bo", "dyhpo") and len(slot_s) % 50 == 0:
            fits()
    return {
        "restore_s": restore_s,
        "slot": slot_s,
        "report": report_s,
        "cpu": cpu_s,
        "fits": fit_s,
        "launched": launched,
    }


def ms(xs: list[float], f: Callable[[list[float]], float]) -> str:
    return f"{f(xs) * 1e3:8.3f}" if xs else "       -"


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def part_decisions(kinds: list[str], sizes: list[int]) -> None:
    print(
        "decision time (ms) in the core: free slot (next_launch) and report (on_report), wall"
        " time; cpu max: the longest in this thread's CPU time (the machine is shared)"
    )
    print(
        f"  {'scheduler':10} {'trials':>6}  slot p50 slot p99 slot max   rep p50  rep p99  rep max"
        "  all p50  all max  cpu max"
    )
    for n in sizes:
        for kind in kinds:
            if kind == "dyhpo" and n > 1000 and not os.environ.get("HPOD_BENCH_DYHPO_BIG"):
                print(f"  {kind:10} {n:6}  (skipped: HPOD_BENCH_DYHPO_BIG=1 to run; quality's)")
                continue
            r = decisions(kind, n)
            both = r["slot"] + r["report"]
            mark = ""
            if kind in TARGETED and n >= 10_000:
                ok = statistics.median(both) < 0.5e-3 and max(both) < 5e-3
                ok_cpu = statistics.median(r["cpu"]) < 0.5e-3 and max(r["cpu"]) < 5e-3
                mark = "  target " + ("met" if ok else "NOT met") + " (wall), "
                mark += ("met" if ok_cpu else "NOT met") + " (cpu)"
            fits = f" fits {len(r['fits'])} max {max(r['fits']):.2f}s" if r["fits"] else ""
            print(
                f"  {kind:10} {n:6}  {ms(r['slot'], statistics.median)} {ms(r['slot'], p99)}"
                f" {ms(r['slot'], max)}  {ms(r['report'], statistics.median)}"
                f" {ms(r['report'], p99)} {ms(r['report'], max)}"
                f"  {ms(both, statistics.median)} {ms(both, max)} {ms(r['cpu'], max)}"
                f"  (restore {r['restore_s']:.2f}s, {len(r['slot'])} slots,"
                f" {len(r['report'])} reports{fits}){mark}",
                flush=True,
            )


# -- part 2: a real daemon --------------------------------------------------------------------

TRIAL = """
from hpod import trial
c = trial.config()
for e in range(trial.resume_from() + 1, trial.max_resource() + 1):
    if trial.report(epoch=e, loss=c["width"] * (1 + 2 / e)).value != "CONTINUE":
        break
"""


def _write_store(state: Path, kind: str, n: int, trial_py: Path) -> str:
    """A study of ``n`` finished trials in the daemon's store, as it would have stored them."""
    from hpod.core.spec import StudySpec
    from hpod.core.states import Decision, StudyState, TrialState
    from hpod.daemon import store as st

    raw = spec_mapping(kind, n + 24, [sys.executable, str(trial_py)])
    text = _toml(raw)
    StudySpec.from_toml(text, base_dir=state)  # it parses
    sid = f"scale-{kind.replace('_', '')}-{n}"
    (state / "studies" / sid / "trials").mkdir(parents=True, mode=0o700)
    now = time.time()
    with st.Store.open(state) as store:
        seq = store.next_study_seq()
        ops = [
            st.insert_study_op(
                st.StudyRow(
                    id=sid,
                    seq=seq,
                    name=f"scale-{kind}-{n}",
                    owner_uid=os.getuid(),
                    spec_toml=text,
                    base_dir=str(state),
                    state=StudyState.RUNNING,
                    created_at=now,
                )
            )
        ]
        store.write_sync(*ops)
        batch: list[Any] = []
        for r in shaped(kind, n):
            batch.append(
                st.insert_trial_op(
                    st.TrialRow(
                        study_id=sid,
                        trial_id=r["trial_id"],
                        config=r["config"],
                        state=TrialState(r["state"]),
                        token="0" * 32,
                        bracket=r["bracket"],
                        resume_from=r["resume_from"],
                        max_resource=r["max_resource"],
                        runs=r["runs"],
                        created_at=now,
                        started_at=now,
                        ended_at=now,
                        exit_code=0,
                    )
                )
            )
            last = len(r["curve"]) - 1
            for i, (e, v) in enumerate(r["curve"]):
                decision = Decision.CONTINUE
                if i == last:
                    decision = Decision.PAUSE if r["state"] == "paused" else Decision.STOP
                batch.append(
                    st.report_op(
                        sid, r["trial_id"], r["runs"], e, {"epoch": e, "loss": v}, decision, now
                    )
                )
            if len(batch) > 5000:
                store.write_sync(*batch)
                batch = []
        if batch:
            store.write_sync(*batch)
    return sid


def _toml(raw: dict[str, Any], prefix: str = "") -> str:
    """The spec mapping as TOML (strings, numbers, lists of them, tables)."""

    def value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict) or prefix]
    out = "\n".join(lines) + "\n"
    if not prefix:
        for k, v in raw.items():
            if isinstance(v, dict):
                out += f"[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items()) + "\n"
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _short(what: str) -> str:
    # "<TaskStepMethWrapper ...>" or "<bound method Task.__step of <Task ... coro=<X() ...>"
    if "coro=<" in what:
        return what.split("coro=<", 1)[1].split("(", 1)[0]
    return what[:50]


def part_daemon(kinds: list[str], sizes: list[int]) -> None:
    print("the daemon: a study of N finished trials loaded, 24 more run through it 4 at a time")
    print(
        "  longest loop callback once serving, in wall time and in the loop thread's CPU time"
        " (wall includes other processes holding the CPU), and how many were over 20 ms"
    )
    print(
        f"  {'scheduler':10} {'trials':>6}  wall ms  >20   cpu ms  >20  RSS loaded   end"
        "  hpodctl trials --json"
    )
    for n in sizes:
        for kind in kinds:
            if kind == "dyhpo" and n > 1000 and not os.environ.get("HPOD_BENCH_DYHPO_BIG"):
                print(f"  {kind:10} {n:6}  (skipped: HPOD_BENCH_DYHPO_BIG=1 to run)")
                continue
            print("  " + _one_daemon(kind, n), flush=True)


def _one_daemon(kind: str, n: int) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="hpod"))
    state, sock = tmp / "state", tmp / "s.sock"
    state.mkdir()
    trial_py = tmp / "trial.py"
    trial_py.write_text(TRIAL)
    probe_out = tmp / "probe.json"
    try:
        sid = _write_store(state, kind, n, trial_py)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE / "loopprobe"), str(ROOT)])
        env["HPOD_BENCH_LOOP_PROBE"] = str(probe_out)
        log = (tmp / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpod",
                "serve",
                "--socket",
                str(sock),
                "--state-dir",
                str(state),
                "--cpu-slots",
                str(SLOTS),
                "--log-level",
                "info",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            from hpod.client import Client

            t0 = time.monotonic()
            # Traced (HPOD_BENCH_TRACEMALLOC), the restore takes minutes.
            patience = 900 if os.environ.get("HPOD_BENCH_TRACEMALLOC") else 120
            while not sock.exists():
                if daemon.poll() is not None or time.monotonic() - t0 > patience:
                    raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()}")
                time.sleep(0.05)
            client = Client(str(sock))
            # The socket file is there a moment before the daemon listens on it.
            from hpod.errors import DaemonUnavailable

            while True:
                try:
                    client.ping()
                    break
                except DaemonUnavailable:
                    if daemon.poll() is not None or time.monotonic() - t0 > 120:
                        raise
                    time.sleep(0.05)
            ready_at = time.time()
            started_s = time.monotonic() - t0
            rss_loaded = _rss_kb(daemon.pid)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                info = client.study(sid)
                if info.get("state") != "running":
                    break
                time.sleep(0.2)
            rss_end = _rss_kb(daemon.pid)
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hpod.cli.hpodctl",
                    "--socket",
                    str(sock),
                    "trials",
                    sid,
                    "--json",
                ],
                # Not the probe's file: hpodctl's exit would write its own (empty) probe over it.
                env={k: v for k, v in env.items() if k != "HPOD_BENCH_LOOP_PROBE"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if cli.returncode == 0:
                got = len(json.loads(cli.stdout))
                listing = f"{got} trials" + ("" if got >= n else " (NOT all)")
            else:
                listing = f"exit {cli.returncode}: {cli.stderr.strip()[-60:]}"
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                print(f"  {kind} {n}: the daemon did not stop within 60 s of SIGTERM (killed)")
        probe = json.loads(probe_out.read_text()) if probe_out.exists() else {"stalls": []}
        served = [(ms, cpu, what) for at, ms, cpu, what in probe["stalls"] if at >= ready_at]
        wall = max((ms for ms, _, _ in served), default=0.0)
        over = sum(1 for ms, _, _ in served if ms > 20)
        by_cpu = sorted(served, key=lambda s: -s[1])
        cpu_max = by_cpu[0][1] if by_cpu else 0.0
        cpu_over = sum(1 for _, cpu, _ in served if cpu > 20)
        top = ", ".join(f"{cpu:.0f}ms {what}" for _, cpu, what in by_cpu[:3])
        # The collector's longest pause once serving (inside some callback's time above).
        pauses = [(ms, gen) for at, ms, gen in probe.get("gc", []) if at >= ready_at]
        gc_max = max(pauses, default=(0.0, -1))
        return (
            f"{kind:10} {n:6}  {wall:7.1f} {over:4}  {cpu_max:7.1f} {cpu_over:4}"
            f"  {rss_loaded / 1024:7.1f}MB {rss_end / 1024:6.1f}MB  {listing}"
            f"  (up in {started_s:.1f}s; most CPU: {top}; longest gc {gc_max[0]:.0f}ms"
            f" gen {gc_max[1]}, {len(pauses)} over 2 ms)"
        )
    finally:
        if not os.environ.get("HPOD_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000])
    p.add_argument("--part", nargs="*", default=["decisions", "daemon", "concurrent"])
    p.add_argument("--schedulers", nargs="*", default=list(SCHEDULERS))
    args = p.parse_args()
    load = os.getloadavg()
    print(
        f"hpod scale bench, {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if "decisions" in args.part:
        part_decisions(args.schedulers, args.sizes)
    if "daemon" in args.part:
        part_daemon(args.schedulers, args.sizes)
    if "concurrent" in args.part:
        conc = HERE / "scale_concurrent.py"
        if conc.exists():
            sys.stdout.flush()
            subprocess.run([sys.executable, str(conc)], check=False)
        else:
            print("concurrent sleep trials: bench/scale_concurrent.py is not there (yet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
