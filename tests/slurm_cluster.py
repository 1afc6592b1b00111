"""A single-node Slurm cluster on localhost, for the Slurm executor's tests and its benchmark.

As root, with Debian's ``slurm-wlm`` and ``munge`` installed (scripts/system-packages.sh):
a munge key and ``munged`` on a socket of its own, a ``slurm.conf`` for one node (this machine,
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, state in a temporary folder),
``slurmctld`` and ``slurmd`` in the foreground; ready once ``sinfo`` shows the node idle, polled
with a deadline. :func:`why_not` says why one cannot be started here (None: it can). Clients
find it through ``SLURM_CONF`` (:attr:`Cluster.env`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
READY_TIMEOUT = 60.0


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def why_not() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (slurmd, munged)"
    missing = [b for b in BINARIES if _find(b) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/system-packages.sh installs them)"
    try:
        pwd.getpwnam("slurm")
        pwd.getpwnam("munge")
    except KeyError as exc:
        return f"no user {exc.args[0]} (the slurm-wlm and munge packages make them)"
    return None


@dataclass
class Cluster:
    root: Path
    node: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client of this cluster needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        # slurmd's jobs (their slurmstepd) are left by a slurmd that was killed: none should be.
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("munge/munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def start(cpus: int = 8) -> Cluster:
    """Start munged, slurmctld and slurmd; return once the node is idle. Raises RuntimeError
    (with the daemons' logs) when it does not come up within READY_TIMEOUT."""
    root = Path(tempfile.mkdtemp(prefix="hpod-slurm-"))
    os.chmod(root, 0o755)
    node = socket.gethostname().split(".")[0]
    cluster = Cluster(root, node)
    try:
        _start(cluster, cpus)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cluster: Cluster, cpus: int) -> None:
    root = cluster.root
    slurm = pwd.getpwnam("slurm")
    munge = pwd.getpwnam("munge")
    mdir = root / "munge"
    mdir.mkdir(mode=0o700)
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    for path in (mdir, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    # A folder of munge's own that everyone may enter: every job's user asks munged.
    sdir = root / "msock"
    sdir.mkdir(mode=0o755)
    os.chown(sdir, munge.pw_uid, munge.pw_gid)
    sock = sdir / "munge.sock"
    state = root / "state"
    spool = root / "spool"
    for folder in (state, spool):
        folder.mkdir(mode=0o755)
        os.chown(folder, slurm.pw_uid, slurm.pw_gid)
    # munged's own checks: its folders must not be writable by others.
    munged = [
        _find("munged") or "munged",
        "--foreground",
        "--force",
        f"--socket={sock}",
        f"--key-file={key}",
        f"--pid-file={mdir / 'munged.pid'}",
        f"--seed-file={mdir / 'munged.seed'}",
        f"--log-file={mdir / 'munged.log'}",
    ]
    cluster.procs.append(
        subprocess.Popen(
            munged,
            user=munge.pw_uid,
            group=munge.pw_gid,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    ctl_port, d_port = _port(), _port()
    cluster.conf.write_text(
        "\n".join(
            [
                "ClusterName=hpodtest",
                f"SlurmctldHost={cluster.node}(127.0.0.1)",
                "SlurmUser=slurm",
                "SlurmdUser=root",
                f"SlurmctldPort={ctl_port}",
                f"SlurmdPort={d_port}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                f"StateSaveLocation={state}",
                f"SlurmdSpoolDir={spool}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "MpiDefault=none",
                # More CPUs than the machine has: jobs of sleeping trials, several at once.
                "SlurmdParameters=config_overrides",
                "ReturnToService=2",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "InactiveLimit=0",
                "KillWait=5",
                "MinJobAge=600",
                "SchedulerParameters=sched_interval=1,bf_interval=1",
                "MessageTimeout=10",
                f"NodeName={cluster.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4096 "
                "State=UNKNOWN",
                f"PartitionName=debug Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    cluster.conf.chmod(0o644)
    env = {**os.environ, **cluster.env}
    _wait(lambda: sock.exists(), "munged's socket", cluster)
    cluster.procs.append(
        subprocess.Popen(
            [_find("slurmctld") or "slurmctld", "-D", "-i", "-f", str(cluster.conf)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    cluster.procs.append(
        subprocess.Popen(
            [_find("slurmd") or "slurmd", "-D", "-f", str(cluster.conf), "-N", cluster.node],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )

    def idle() -> bool:
        res = subprocess.run(
            ["sinfo", "--noheader", "--format=%T", f"--nodes={cluster.node}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
        )
        return res.returncode == 0 and res.stdout.strip() == "idle"

    _wait(idle, "the node idle in sinfo", cluster)


def _wait(ready: object, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.05
    while not ready():  # type: ignore[operator]
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{cluster.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {READY_TIMEOUT:g}s:\n{cluster.log()}")
        time.sleep(delay)  # polling a readiness condition with a deadline, not a fixed wait
        delay = min(delay * 2, 0.5)
