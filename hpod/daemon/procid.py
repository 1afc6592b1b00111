"""What identifies a trial's process for sure, so that a daemon can store it and prove it later.

A pid alone proves nothing: after the process exits the kernel hands the number to the next
process started. A pid together with its start time (``/proc/<pid>/stat`` field 22, in clock
ticks since boot) and the boot it was read in (``/proc/sys/kernel/random/boot_id``) names one
process only: a reused pid has another start time, and a reboot another boot id. Nothing whose
identity does not match is ever signalled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ProcessIdentity", "boot_id", "parent_pid", "start_ticks"]

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


_boot_id: str | None = None


def boot_id() -> str:
    """This boot's id, a UUID the kernel draws at each boot: read once per process (it cannot
    change under a running one; each run's identity asked for it again, one file read on the
    loop per start)."""
    global _boot_id
    if _boot_id is None:
        with open(_BOOT_ID_PATH, encoding="ascii") as f:
            _boot_id = f.read().strip()
    return _boot_id


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (the state) on; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        # Gone (ENOENT, or ESRCH mid-read), or hidden from us (hidepid): nothing is proven.
        return None
    # The command name (field 2, in parentheses) may hold spaces and ')': count after the last.
    return stat.rsplit(b")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])  # field 22 of the whole line


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (field 4), None when there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


@dataclass(frozen=True)
class ProcessIdentity:
    """One run's process: ``pid`` is its shim's (the process the daemon watches and signals),
    ``trial_pid``/``pgid`` the trial's leader and its group (the same number: the trial leads its
    group), ``cgroup`` the run's cgroup if one was made, ``status_path`` where the shim writes
    the trial's exit status. ``trial_start_ticks`` proves the trial's leader the same way."""

    pid: int
    start_ticks: int
    boot_id: str
    trial_pid: int
    pgid: int
    cgroup: str | None
    status_path: str
    trial_start_ticks: int | None = None

    @classmethod
    def of_shim(
        cls,
        pid: int,
        *,
        trial_pid: int,
        trial_start_ticks: int | None,
        cgroup: str | None,
        status_path: str,
        ticks: int | None = None,
    ) -> ProcessIdentity:
        """The identity of a shim this process started: ``ticks`` as read while it could not
        have exited yet (else read now: it must still be our unreaped child)."""
        if ticks is None:
            ticks = start_ticks(pid)
        if ticks is None:
            raise ProcessLookupError(pid)
        return cls(
            pid=pid,
            start_ticks=ticks,
            boot_id=boot_id(),
            trial_pid=trial_pid,
            pgid=trial_pid,
            cgroup=cgroup,
            status_path=status_path,
            trial_start_ticks=trial_start_ticks,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcessIdentity:
        ticks = raw.get("trial_start_ticks")
        cgroup = raw.get("cgroup")
        return cls(
            pid=int(raw["pid"]),
            start_ticks=int(raw["start_ticks"]),
            boot_id=str(raw["boot_id"]),
            trial_pid=int(raw["trial_pid"]),
            pgid=int(raw["pgid"]),
            cgroup=None if cgroup is None else str(cgroup),
            status_path=str(raw["status_path"]),
            trial_start_ticks=None if ticks is None else int(ticks),
        )

    def matches(self) -> bool:
        """Whether the shim is provably still this process: same boot, same pid, same start.

        A zombie still matches (it is ours until reaped); a reused pid never does."""
        try:
            same_boot = boot_id() == self.boot_id
        except OSError:
            return False
        return same_boot and start_ticks(self.pid) == self.start_ticks

    def trial_matches(self) -> bool:
        """Whether the trial's leader is provably alive (or an unreaped zombie): then its group id
        is still its own and may be signalled."""
        if self.trial_start_ticks is None:
            return False
        try:
            same_boot = boot_id() == self.boot_id
        except OSError:
            return False
        return same_boot and start_ticks(self.trial_pid) == self.trial_start_ticks
