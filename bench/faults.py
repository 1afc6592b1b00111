"""A kill -9 campaign against a real daemon and real trials (issue 13, "Done when").

Starts `hpod serve` on a fresh state folder, submits small studies (ASHA with pause/resume,
Hyperband, FIFO with random search) whose trials are bench/faults_trial.py, a trainer that logs
every epoch, report, answer and checkpoint to an fsynced log in its trial folder, and SIGKILLs the
daemon ``--kills`` times, restarting it after each kill. The kills are at random points and at
targeted ones: during a submit, right after a PAUSE answer, during a SIGTERM shutdown, during a
checkpoint, during a trial's launch (between its start and the store's record of its process).
Every few kills it also stops and starts the daemon cleanly. A sampler counts, every 50 ms, the
trial processes in each trial folder.

At the end it lets every study finish, stops the daemon cleanly, counts the processes left and
reads the store (read only), and prints the seven numbers that must be 0 (the exit status is 1
otherwise):

    acked_lost             an answer in a trial's log with no report row for it in the store
    counted_twice          counted report rows of one trial at one resource, past the first
    trained_twice          train_done lines of one trial and epoch, past the first
    overlap_samples        samples with more than one trial process in one trial folder
    left_after_shutdown    processes of the campaign's trials alive after the clean shutdown
    completed_below_max    completed trials whose last counted resource < the study's max_resource
    never_finished         studies not ended when the finishing deadline passed

plus the kills by kind, the restart time (SIGKILL to the first answered ping: median and max) and
the totals.

    .venv/bin/python bench/faults.py --kills 64 [--seed N] [--out DIR] [--json]

``--out DIR`` keeps the campaign's folder (state, daemon logs, trial logs) there; without it a
temporary folder is used and removed unless the campaign found a problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRIAL = Path(__file__).resolve().parent / "faults_trial.py"
KINDS = ("random", "submit", "pause", "sigterm", "checkpoint", "launch")
FINAL_STUDY = frozenset({"completed", "stopped", "failed"})
READY_TIMEOUT = 30.0
# A clean stop waits for the trials (their grace period is 5 s): past this it is a hang.
STOP_TIMEOUT = 60.0
# The seven numbers the campaign exists for; each must be 0.
ZEROS = (
    "acked_lost",
    "counted_twice",
    "trained_twice",
    "overlap_samples",
    "left_after_shutdown",
    "completed_below_max",
    "never_finished",
)


@dataclass(frozen=True)
class Summary:
    kills: int
    kills_by_kind: dict[str, int]
    targets_missed: dict[str, int]
    clean_restarts: int
    restart_median_s: float
    restart_max_s: float
    studies: int
    trials: int
    reports: int
    answers_logged: int
    reports_failed: int
    trials_failed: int
    submits_failed: int
    duplicate_studies: int
    studies_missing: int
    acked_lost: int
    counted_twice: int
    trained_twice: int
    overlap_max: int
    overlap_samples: int
    left_after_shutdown: int
    completed_below_max: int
    never_finished: int
    seconds: float
    workdir: str
    examples: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, **fields: Any) -> Summary:
        return cls(**fields)

    def failures(self) -> dict[str, int]:
        """The seven numbers, by name."""
        return {name: int(getattr(self, name)) for name in ZEROS}

    @property
    def ok(self) -> bool:
        return not any(self.failures().values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def table(self) -> str:
        rows = [
            ("acknowledged reports lost", self.acked_lost, f"of {self.answers_logged} answers"),
            ("reports counted twice", self.counted_twice, ""),
            ("epochs trained twice", self.trained_twice, ""),
            (
                "processes in one trial folder at once",
                self.overlap_samples,
                f"samples; max {self.overlap_max} in one folder",
            ),
            ("processes left after a clean shutdown", self.left_after_shutdown, ""),
            ("trials completed below max_resource", self.completed_below_max, ""),
            ("studies that never finish", self.never_finished, ""),
        ]
        width = max(len(r[0]) for r in rows)
        out = [f"{name:<{width}}  {value:>6}  {note}".rstrip() for name, value, note in rows]
        kinds = ", ".join(f"{k} {self.kills_by_kind.get(k, 0)}" for k in KINDS)
        missed = ", ".join(f"{k} {n}" for k, n in sorted(self.targets_missed.items()) if n)
        out += [
            "",
            f"kills: {self.kills} ({kinds}); clean stop+start: {self.clean_restarts}"
            + (f"; targets missed (killed at random instead): {missed}" if missed else ""),
            f"restart (SIGKILL to first answered ping): median {self.restart_median_s:.3f} s, "
            f"max {self.restart_max_s:.3f} s",
            f"studies {self.studies}, trials {self.trials} ({self.trials_failed} failed), "
            f"reports {self.reports} ({self.reports_failed} raised in a trial); "
            f"submits failed {self.submits_failed}, "
            f"studies made twice {self.duplicate_studies}, submitted but not in the store "
            f"{self.studies_missing}; {self.seconds:.0f} s",
        ]
        for name, lines in sorted(self.examples.items()):
            if lines:
                out.append(f"{name}, e.g.:")
                out += [f"  {line}" for line in lines[:5]]
        return "\n".join(out)


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    """One `hpod serve` on the campaign's state folder, started again after each kill."""

    def __init__(self, root: Path, slots: int) -> None:
        self.root = root
        # A folder of its own for the socket: --out may be a path too long for sun_path.
        self.socket = os.path.join(tempfile.mkdtemp(prefix="hpod"), "s")
        self.state_dir = root / "state"
        self.slots = slots
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env = dict(os.environ)
        # Trials run `python` from the submitter's PATH: make it this interpreter.
        self.env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + self.env.get("PATH", "")
        self.env.pop("HPOD_SOCKET", None)
        self.env.pop("NOTIFY_SOCKET", None)
        self._log: Any = None

    def spawn(self) -> socket.socket:
        """Start it; returns the bound $NOTIFY_SOCKET it will say READY=1 on."""
        notify_path = os.path.join(os.path.dirname(self.socket), f"n{self.starts}")
        self.starts += 1
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ready.bind(notify_path)
        if self._log is not None:
            self._log.close()
        self._log = open(self.root / f"daemon{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpod",
                "serve",
                "--socket",
                self.socket,
                "--state-dir",
                str(self.state_dir),
                "--cpu-slots",
                str(self.slots),
                "--log-format",
                "json",
            ],
            env=dict(self.env, NOTIFY_SOCKET=notify_path),
            # Not the caller's folder: `python -m` puts it first on sys.path, ahead of PYTHONPATH.
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return ready

    def start(self, since: float | None = None) -> float:
        """Start it and wait for a ping answer, then READY=1; returns seconds from ``since``
        (default: now) to the first answered ping."""
        t0 = time.monotonic() if since is None else since
        ready = self.spawn()
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not self.ping():
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not come up:\n{self.output()[-4000:]}")
                time.sleep(0.005)
            took = time.monotonic() - t0
            ready.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while "READY=1" not in ready.recv(4096).decode().split("\n"):
                    pass
            except TimeoutError:
                raise RuntimeError(f"no READY=1:\n{self.output()[-4000:]}") from None
            return took
        finally:
            ready.close()

    def ping(self) -> bool:
        from hpod.client import Client

        client = Client(self.socket, timeout=2.0)
        try:
            client.ping()
        except Exception:
            return False
        finally:
            client.close()
        return True

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def term(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return (self.root / f"daemon{self.starts}.log").read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            try:
                self.term(timeout=60.0)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)

    def hpodctl(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", self.socket, *args],
            env=self.env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


# -- the studies ------------------------------------------------------------------------------

_HEAD = """
name = "{name}"
command = ["{python}", "{trial}"]
stop_grace_period = "5s"

[objective]
metric = "loss"
mode = "min"
resource = "epoch"

[space]
x = {{ param_type = "uniform", range = [-1.0, 1.0] }}
epoch_s = {{ param_type = "choice", range = {epochs} }}
checkpoint_s = {{ param_type = "choice", range = [0.04] }}

[searcher]
type = "random"
seed = {seed}
"""

STUDIES: dict[str, tuple[str, str]] = {
    # kind: (epoch lengths, the rest of the spec)
    "asha": (
        "[0.02, 0.05, 0.1]",
        """
[scheduler]
type = "asha"
min_resource = 1
max_resource = 9
reduction_factor = 3
rung_type = "promotion"

[limits]
max_trials = 6
max_concurrent = 3
""",
    ),
    "hyperband": (
        "[0.03, 0.06]",
        """
[scheduler]
type = "hyperband"
min_resource = 1
max_resource = 9
reduction_factor = 3

[limits]
max_trials = 5
max_concurrent = 2
""",
    ),
    # One slow epoch length: an old process outlives a restart only if its next report is late.
    "fifo": (
        "[0.05, 0.1, 0.4]",
        """
[scheduler]
type = "fifo"
max_resource = 6

[limits]
max_trials = 3
max_concurrent = 2
""",
    ),
}


def spec_text(kind: str, name: str, seed: int) -> str:
    epochs, tail = STUDIES[kind]
    head = _HEAD.format(name=name, python=sys.executable, trial=TRIAL, epochs=epochs, seed=seed)
    return head + tail


# -- watching the trials ----------------------------------------------------------------------


class Tailer:
    """Reads new lines of the trials' faults.log files as they grow (polled by the caller)."""

    def __init__(self, state_dir: Path, live: Callable[[], frozenset[str]]) -> None:
        self.studies = state_dir / "studies"
        # The trial folders with a live process now (the sampler's): their logs are read at
        # every poll, so a targeted kill follows its event by milliseconds, not a glob period.
        self.live = live
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}
        self.grown: dict[Path, float] = {}
        self.events: list[dict[str, Any]] = []
        self._globbed = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now - self._globbed > 0.3:
            self._globbed = now
            for path in self.studies.glob("*/trials/*/faults.log"):
                if path not in self.offsets:
                    self.offsets[path] = 0
                    self.grown[path] = now
        hot = {Path(d) / "faults.log" for d in self.live()}
        for path in hot - self.offsets.keys():
            self.offsets[path] = 0
            self.grown[path] = now
        # Only the logs of live trials and those that grew lately are read at each poll; all of
        # them at each glob.
        full = now == self._globbed
        for path, offset in self.offsets.items():
            if not full and path not in hot and now - self.grown[path] > 1.0:
                continue
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self.grown[path] = now
            self.offsets[path] = offset + len(data)
            data = self.partial.pop(path, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self.partial[path] = rest
            for line in lines:
                with contextlib.suppress(ValueError):
                    self.events.append(json.loads(line))

    def wait_for(self, match: Any, after: float, timeout: float) -> dict[str, Any] | None:
        """The first event logged after wall time ``after`` that ``match`` accepts."""
        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for ev in self.events[seen:]:
                if ev.get("t", 0) > after and match(ev):
                    return ev
            seen = len(self.events)
            time.sleep(0.003)
        return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Sampler(threading.Thread):
    """Counts, every ``period`` seconds, the processes of the campaign's trials per trial folder.

    A process belongs to the campaign when its /proc/<pid>/environ has an HPOD_TRIAL_DIR under
    the campaign's state folder; it is a trial process when its cmdline runs the trial script (a
    per-trial shim carries the trial's environment too, but runs shim.py).
    """

    def __init__(self, state_dir: Path, period: float = 0.05) -> None:
        super().__init__(name="faults-sampler", daemon=True)
        self.prefix = b"HPOD_TRIAL_DIR=" + str(state_dir).encode()
        self.period = period
        self.stopped = threading.Event()
        # pid -> (its trial folder or None, whether it runs the trial script, final verdict)
        self._cache: dict[str, tuple[str | None, bool, bool]] = {}
        self.samples = 0
        self.overlap_samples = 0
        self.overlap_max = 0
        self.examples: list[str] = []
        self.lock = threading.Lock()
        self._live: frozenset[str] = frozenset()

    def live(self) -> frozenset[str]:
        """The trial folders that had a process of the campaign at the last sample."""
        return self._live

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            found = self.scan()
            self._live = frozenset(d for d, _is_trial in found)
            per_dir = Counter(d for d, is_trial in found if is_trial)
            with self.lock:
                self.samples += 1
                crowded = {d: n for d, n in per_dir.items() if n > 1}
                if crowded:
                    self.overlap_samples += 1
                    self.overlap_max = max(self.overlap_max, *crowded.values())
                    if len(self.examples) < 20:
                        d, n = next(iter(crowded.items()))
                        self.examples.append(f"{n} trial processes in {d}")

    def scan(self) -> list[tuple[str, bool]]:
        """(trial folder, is the trial script) of every live process of the campaign."""
        out: list[tuple[str, bool]] = []
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        live = set(pids)
        for pid in list(self._cache):
            if pid not in live:
                del self._cache[pid]
        for pid in pids:
            cached = self._cache.get(pid)
            if cached is None or not cached[2]:
                cached = self._classify(pid)
                if cached is None:
                    continue
                self._cache[pid] = cached
            if cached[0] is not None:
                out.append((cached[0], cached[1]))
        return out

    def _classify(self, pid: str) -> tuple[str | None, bool, bool] | None:
        try:
            cmdline = _read(f"/proc/{pid}/cmdline")
            environ = _read(f"/proc/{pid}/environ")
        except OSError:
            return None
        # A child between fork and exec still looks like its parent (the daemon, a shim):
        # look again at the next sample.
        final = bool(cmdline) and b"hpod" not in cmdline and b"shim" not in cmdline
        if b"faults_trial.py" in cmdline:
            final = True
        trial_dir = None
        for var in environ.split(b"\0"):
            if var.startswith(self.prefix):
                trial_dir = var.split(b"=", 1)[1].decode(errors="replace")
                break
        is_trial = b"faults_trial.py" in cmdline and b"shim.py" not in cmdline
        return trial_dir, is_trial, final

    def stop(self) -> None:
        self.stopped.set()
        self.join()


# -- the campaign -----------------------------------------------------------------------------


class Campaign:
    def __init__(self, workdir: Path, seed: int, slots: int) -> None:
        self.root = workdir
        self.rng = random.Random(seed)
        self.seed = seed
        self.daemon = Daemon(workdir, slots)
        self.sampler = Sampler(self.daemon.state_dir)
        self.tailer = Tailer(self.daemon.state_dir, self.sampler.live)
        self.kinds: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.restarts: list[float] = []
        self.clean = 0
        self.submitted: list[str] = []
        self.submits_failed = 0
        self.pending: list[tuple[str, subprocess.Popen[str]]] = []
        self.notes: list[str] = []

    # -- store --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def store(self) -> Iterator[sqlite3.Connection]:
        path = self.daemon.state_dir / "hpod.sqlite3"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            yield conn
        finally:
            conn.close()

    def study_states(self) -> dict[str, str]:
        try:
            with self.store() as db:
                return dict(db.execute("SELECT id, state FROM studies").fetchall())
        except sqlite3.Error:
            return {}

    # -- submits ------------------------------------------------------------------------------

    def new_spec(self) -> Path:
        n = len(self.submitted)
        kind = ("asha", "hyperband", "fifo")[n % 3]
        name = f"{kind}-{n}"
        self.submitted.append(name)
        folder = self.root / "specs" / name
        folder.mkdir(parents=True)
        path = folder / "study.toml"
        path.write_text(spec_text(kind, name, self.seed * 1000 + n))
        return path

    def submit(self) -> None:
        spec = self.new_spec()
        self.pending.append((spec.parent.name, self.daemon.hpodctl("submit", str(spec), "--json")))

    def reap_submits(self, block: bool) -> None:
        keep = []
        for name, proc in self.pending:
            if block or proc.poll() is not None:
                try:
                    _out, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _out, err = proc.communicate()
                if proc.returncode != 0:
                    self.submits_failed += 1
                    self.notes.append(
                        f"submit {name} exited {proc.returncode}: {err.strip()[-300:]}"
                    )
            else:
                keep.append((name, proc))
        self.pending = keep

    def ensure_work(self, at_least: int = 2) -> None:
        states = self.study_states()
        running = sum(1 for s in states.values() if s not in FINAL_STUDY)
        for _ in range(max(0, at_least - running)):
            self.submit()
        # Answered before the next kill: only the submit kill cuts a submit short on purpose.
        self.reap_submits(block=True)

    # -- kills --------------------------------------------------------------------------------

    def kill_and_restart(self, kind: str) -> None:
        self.kinds[kind] += 1
        t0 = time.monotonic()
        self.daemon.kill()
        self.restarts.append(self.daemon.start(since=t0))

    def one_kill(self, kind: str) -> None:
        rng = self.rng
        if kind == "random":
            time.sleep(rng.uniform(0.1, 1.5))
            self.kill_and_restart("random")
        elif kind == "submit":
            time.sleep(rng.uniform(0.0, 0.3))
            log = self.root / f"daemon{self.daemon.starts}.log"
            mark = log.stat().st_size
            self.submit()
            if rng.random() < 0.5:
                # Right after hpodctl starts: before it connects, or mid-request.
                time.sleep(rng.uniform(0.05, 0.6))
            elif not self._logged(log, mark, '"study_submitted"', timeout=10.0):
                self.notes.append("a submit kill never saw study_submitted; killed anyway")
            # else: the study is committed and its answer is on its way, or just gone.
            self.kill_and_restart("submit")
            self.reap_submits(block=True)
        elif kind == "launch":
            # Between a run's start and the store's record of its process: the run must be
            # adopted all the same, never relaunched beside itself.
            log = self.root / f"daemon{self.daemon.starts}.log"
            seen = self._logged(log, log.stat().st_size, '"trial_launch"', timeout=8.0)
            if seen:
                time.sleep(rng.uniform(0.0, 0.03))
            else:
                self.missed["launch"] += 1
            self.kill_and_restart("launch" if seen else "random")
        elif kind == "pause":
            ev = self.tailer.wait_for(
                lambda e: e.get("ev") == "answer" and str(e.get("decision")).upper() == "PAUSE",
                after=time.time(),
                timeout=8.0,
            )
            if ev is None:
                self.missed["pause"] += 1
            self.kill_and_restart("pause" if ev is not None else "random")
        elif kind == "checkpoint":
            start = time.time()
            ev = self.tailer.wait_for(
                lambda e: e.get("ev") == "checkpoint_start", after=start, timeout=8.0
            )
            killed_at = time.time()
            self.kill_and_restart("checkpoint" if ev is not None else "random")
            if ev is None:
                self.missed["checkpoint"] += 1
            elif self._done_before(ev, killed_at):
                # The tailer saw it late: the checkpoint was done before the kill.
                self.notes.append(
                    f"checkpoint target missed: seen {killed_at - ev['t']:.3f} s after its start"
                )
                self.kinds["checkpoint"] -= 1
                self.kinds["random"] += 1
                self.missed["checkpoint"] += 1
        elif kind == "sigterm":
            self.sigterm_kill()
        else:
            raise ValueError(kind)

    def sigterm_kill(self, tries: int = 3) -> None:
        """SIGKILL during a SIGTERM shutdown; one that ends first is a clean stop, tried again
        sooner, and after ``tries`` the slot's kill is a random one."""
        rng = self.rng
        late = 0.25
        for _ in range(tries):
            time.sleep(rng.uniform(0.2, 1.0))
            assert self.daemon.proc is not None
            self.daemon.proc.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0.01, late))
            t0 = time.monotonic()
            if self.daemon.alive():
                self.kinds["sigterm"] += 1
                self.daemon.kill()
                self.restarts.append(self.daemon.start(since=t0))
                return
            self.daemon.proc.wait()
            self.missed["sigterm"] += 1
            self.clean += 1
            self.restarts.append(self.daemon.start(since=t0))
            late /= 3
        self.one_kill("random")

    def _logged(self, log: Path, offset: int, needle: str, timeout: float) -> bool:
        """Whether ``needle`` shows up in the daemon's log past ``offset`` within ``timeout``."""
        deadline = time.monotonic() + timeout
        with log.open("rb") as f:
            f.seek(offset)
            seen = b""
            while time.monotonic() < deadline:
                seen += f.read()
                if needle.encode() in seen:
                    return True
                time.sleep(0.001)
        return False

    def _done_before(self, start: dict[str, Any], when: float) -> bool:
        self.tailer.poll()
        return any(
            e.get("ev") == "checkpoint_done"
            and e.get("pid") == start.get("pid")
            and start["t"] <= e.get("t", 0) <= when
            for e in self.tailer.events
        )

    def schedule(self, kills: int) -> list[str]:
        """The kinds in a shuffled round-robin, so that 6 kills have each kind."""
        out: list[str] = []
        while len(out) < kills:
            block = list(KINDS)
            self.rng.shuffle(block)
            out += block
        return out[:kills]

    def clean_stop(self, what: str) -> None:
        try:
            rc = self.daemon.term(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.notes.append(
                f"{what}: SIGTERM did not end the daemon in {STOP_TIMEOUT:g} s; killed"
            )
            self.daemon.kill()
            return
        if rc != 0:
            self.notes.append(f"{what} exited {rc}")

    def clean_restart(self) -> None:
        self.clean_stop("a clean stop")
        self.clean += 1
        self.daemon.start()

    # -- the run ------------------------------------------------------------------------------

    def run(self, kills: int, clean_every: int, finish_timeout: float) -> Summary:
        began = time.monotonic()
        self.daemon.state_dir.mkdir(parents=True)
        self.daemon.start()
        self.sampler.start()
        try:
            for _ in range(3):
                self.submit()
            self.reap_submits(block=True)
            for i, kind in enumerate(self.schedule(kills)):
                self.ensure_work()
                self.one_kill(kind)
                self.tailer.poll()
                if clean_every and (i + 1) % clean_every == 0 and i + 1 < kills:
                    time.sleep(self.rng.uniform(0.2, 0.8))
                    self.clean_restart()
            self.reap_submits(block=True)
            never = self.finish(finish_timeout)
            self.clean_stop("the final stop")
            left = self.left_after_shutdown()
        finally:
            for _name, proc in self.pending:
                proc.kill()
                proc.communicate()
            self.sampler.stop()
            self.daemon.close()
        self.tailer.poll()
        return self.summarize(never, left, time.monotonic() - began)

    def finish(self, timeout: float) -> list[str]:
        """Wait for every study to end; the ids of those that did not."""
        deadline = time.monotonic() + timeout
        while True:
            self.tailer.poll()
            states = self.study_states()
            open_ = sorted(s for s, state in states.items() if state not in FINAL_STUDY)
            if not open_ or time.monotonic() > deadline:
                return open_
            time.sleep(0.2)

    def left_after_shutdown(self) -> int:
        # A moment for what the shutdown signalled to exit; then any process still carrying a
        # campaign trial's environment counts, shim or not.
        deadline = time.monotonic() + 2.0
        left: list[tuple[str, bool]] = []
        while time.monotonic() < deadline:
            left = Sampler(self.daemon.state_dir).scan()
            if not left:
                return 0
            time.sleep(0.1)
        self.notes += [f"left after shutdown: a process of {d}" for d, _ in left[:5]]
        return len(left)

    # -- the verdict --------------------------------------------------------------------------

    def summarize(self, never: list[str], left: int, seconds: float) -> Summary:
        examples: dict[str, list[str]] = defaultdict(list)
        with self.store() as db:
            studies = db.execute("SELECT id, name, spec_toml FROM studies").fetchall()
            trials = db.execute("SELECT study_id, trial_id, state FROM trials").fetchall()
            reports = db.execute(
                "SELECT study_id, trial_id, run, resource, counted FROM reports"
            ).fetchall()
        rows = {(s, t, float(r)) for s, t, _run, r, _c in reports if r is not None}
        counted: Counter[tuple[str, int, float]] = Counter(
            (s, t, float(r)) for s, t, _run, r, c in reports if c and r is not None
        )
        events = self.tailer.events
        answers = [e for e in events if e.get("ev") == "answer"]
        lost = 0
        for e in answers:
            if (e["study"], e["trial"], float(e["epoch"])) not in rows:
                lost += 1
                examples["acknowledged reports lost"].append(
                    f"{e['study']} trial {e['trial']} epoch {e['epoch']} ({e['decision']}, "
                    f"pid {e['pid']})"
                )
        twice = 0
        for (s, t, r), n in sorted(counted.items()):
            if n > 1:
                twice += n - 1
                examples["reports counted twice"].append(f"{s} trial {t} resource {r:g}: {n}x")
        done: Counter[tuple[str, int, int]] = Counter(
            (e["study"], e["trial"], e["epoch"]) for e in events if e.get("ev") == "train_done"
        )
        retrained = 0
        for (s, t, ep), n in sorted(done.items()):
            if n > 1:
                retrained += n - 1
                examples["epochs trained twice"].append(f"{s} trial {t} epoch {ep}: {n}x")
        max_of = {}
        for sid, _name, text in studies:
            try:
                max_of[sid] = float(tomllib.loads(text)["scheduler"].get("max_resource", 10))
            except (tomllib.TOMLDecodeError, KeyError):
                max_of[sid] = 10.0
        last: dict[tuple[str, int], float] = {}
        for (s, t, r), _n in counted.items():
            last[(s, t)] = max(last.get((s, t), 0.0), r)
        below = 0
        for s, t, state in trials:
            if state == "completed" and last.get((s, t), 0.0) < max_of.get(s, 10.0):
                below += 1
                examples["trials completed below max_resource"].append(
                    f"{s} trial {t}: last counted {last.get((s, t), 0.0):g} < {max_of[s]:g}"
                )
        names = Counter(name for _sid, name, _t in studies)
        examples["studies that never finish"] += never
        examples["processes in one trial folder"] += self.sampler.examples
        examples["notes"] += self.notes
        examples["reports that raised in a trial"] += [
            f"{e['study']} trial {e['trial']} epoch {e['epoch']}: {e.get('error', '')[:160]}"
            for e in events
            if e.get("ev") == "report_failed"
        ]
        restarts = self.restarts or [0.0]
        return Summary.from_counts(
            kills=sum(self.kinds.values()),
            kills_by_kind={k: self.kinds.get(k, 0) for k in KINDS},
            targets_missed=dict(self.missed),
            clean_restarts=self.clean,
            restart_median_s=statistics.median(restarts),
            restart_max_s=max(restarts),
            studies=len(studies),
            trials=len(trials),
            reports=len(reports),
            answers_logged=len(answers),
            reports_failed=sum(1 for e in events if e.get("ev") == "report_failed"),
            trials_failed=sum(1 for _s, _t, state in trials if state == "failed"),
            submits_failed=self.submits_failed,
            duplicate_studies=sum(n - 1 for n in names.values() if n > 1),
            studies_missing=len(set(self.submitted) - names.keys()),
            acked_lost=lost,
            counted_twice=twice,
            trained_twice=retrained,
            overlap_max=self.sampler.overlap_max,
            overlap_samples=self.sampler.overlap_samples,
            left_after_shutdown=left,
            completed_below_max=below,
            never_finished=len(never),
            seconds=seconds,
            workdir=str(self.root),
            examples={k: v for k, v in examples.items() if v},
        )


def run_campaign(
    kills: int = 10,
    seed: int = 0,
    workdir: Path | str | None = None,
    *,
    slots: int = 4,
    clean_every: int = 5,
    finish_timeout: float = 120.0,
) -> Summary:
    """Run a campaign of ``kills`` SIGKILLs in ``workdir`` (a fresh temporary folder if None;
    it must be short: the daemon's socket lives in it)."""
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="hpod"))
    root.mkdir(parents=True, exist_ok=True)
    return Campaign(root, seed, slots).run(kills, clean_every, finish_timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the campaign's folder here")
    ap.add_argument("--slots", type=int, default=4, help="the daemon's --cpu-slots")
    ap.add_argument("--clean-every", type=int, default=8, help="a clean stop+start every N kills")
    ap.add_argument("--finish-timeout", type=float, default=180.0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    # The daemon's socket lives in the folder: a short path keeps it under sun_path's 108 bytes.
    workdir = args.out or Path(tempfile.mkdtemp(prefix="hpod"))
    summary = run_campaign(
        args.kills,
        args.seed,
        workdir,
        slots=args.slots,
        clean_every=args.clean_every,
        finish_timeout=args.finish_timeout,
    )
    print(summary.to_json() if args.json else summary.table())
    if summary.ok and args.out is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not summary.ok:
        print(f"the campaign's folder: {workdir}", file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
