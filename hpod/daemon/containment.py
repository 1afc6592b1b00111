"""Containment: nothing a trial starts outlives its run.

Each run gets a cgroup of its own (cgroup v2) where the daemon can make one, and its shim enters
it before it starts the trial, so the trial and all it ever starts, whatever session or process
group they move to, are in it. When the run ends (its shim has exited) the cgroup is killed
(``cgroup.kill``) and removed. Where no cgroup can be made, the shim's own subreaper clean-up
(hpod.daemon.shim) is all there is; under cgroups it is a second net.

Which applies (``Containment.discover``, the daemon's ``containment`` setting):

- under systemd (``INVOCATION_ID`` set, our cgroup a ``.service``) with a delegated, writable
  cgroup (``Delegate=yes``): the runs' cgroups go in ``<service>/trials``, and the daemon moves
  itself into ``<service>/daemon`` first (cgroup v2 allows no processes in a cgroup whose
  children have controllers; systemd's docs on Delegate= ask for exactly this layout);
- as root otherwise (the foreground, a container): ``<cgroup2 mount>/hpod/<12 hex of the
  sha256 of the resolved state dir>``, a subtree of this daemon's own, so two daemons on two
  state dirs never touch each other's runs;
- else (not root and not delegated, no cgroup v2, a read-only cgroup tree): ``subreaper``.

The folders are the daemon's own (root's, as root; never chowned to a trial's user), so nothing
on the way is a path a user can write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpod.errors import ContainmentUnavailable

__all__ = [
    "MODES",
    "Containment",
    "ContainmentUnavailable",
    "cgroup2_mount",
    "own_cgroup",
    "run_name",
]

Kind = Literal["cgroup", "subreaper"]
MODES = ("auto", "cgroup", "subreaper")

# How long remove() waits for a killed cgroup to empty (its processes to exit and be reaped).
REMOVE_SECONDS = 5.0


def run_name(study_id: str, trial_id: int, run: int) -> str:
    """The cgroup of one run: ``<study>.<trial>.<run>``."""
    return f"{study_id}.{trial_id}.{run}"


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in a path as octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 3 < len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mount(mountinfo: str | None = None) -> tuple[Path, str] | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified in
    a hybrid layout), and the cgroup its mount root is; None when there is none."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5 and right.split()[:1] == ["cgroup2"]:
            return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def own_cgroup(text: str | None = None) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup)."""
    if text is None:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _on_disk(mount: Path, mount_root: str, cgroup: str) -> Path | None:
    """A cgroup's folder below the mount; None when it lies outside what is mounted."""
    root = mount_root.rstrip("/") or ""
    if root and cgroup != root and not cgroup.startswith(root + "/"):
        return None
    rel = cgroup[len(root) :].lstrip("/")
    return mount / rel if rel else mount


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _own_folder(path: Path) -> None:
    """A folder of the daemon's own on the cgroup tree: made if missing, refused unless it is
    a real folder of this uid (nothing a user could have put there is used)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    st = path.lstat()
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.geteuid():
        raise PermissionError(errno.EACCES, f"{path} is not a folder of uid {os.geteuid()}")


def _probe(base: Path) -> None:
    """_NoCgroup unless a process can really be moved into a cgroup under ``base``: a tree that
    lets a folder be made may still refuse the move (a container's, a controller's
    no-internal-process rule), and then every trial's shim would fail to start."""
    probe = base / f"probe.{os.getpid()}"
    try:
        _own_folder(probe)
    except OSError as exc:
        raise _NoCgroup(f"cannot make a cgroup in {base}: {_reason(exc)}") from None
    # A child that waits for the end of its stdin (not fork(): the daemon has threads by now).
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.buffer.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={},
    )
    try:
        (probe / "cgroup.procs").write_text(str(child.pid))
    except OSError as exc:
        raise _NoCgroup(f"cannot move a process into a cgroup in {base}: {_reason(exc)}") from None
    finally:
        assert child.stdin is not None
        child.stdin.close()  # its end of file: it exits
        child.wait()
        deadline = time.monotonic() + 2.0
        while True:
            try:
                probe.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)  # the reaped child leaves the cgroup a moment later


def _populated(path: Path) -> bool | None:
    """Whether any process is in the cgroup or below it; None when it is gone."""
    try:
        events = (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return None
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() != "0"
    return True


@dataclass(frozen=True)
class Containment:
    """How this daemon keeps what a trial starts from outliving its run."""

    kind: Kind
    base: Path | None  # the folder the runs' cgroups go in ("cgroup" only)
    reason: str  # why this kind, for hpodctl show and ping

    # -- named constructors ---------------------------------------------------------------------

    @classmethod
    def subreaper(cls, reason: str) -> Containment:
        """No cgroups: the shim's subreaper clean-up only."""
        return cls("subreaper", None, reason)

    @classmethod
    def cgroups_in(cls, base: Path, reason: str) -> Containment:
        """One cgroup per run under ``base``, a folder of the daemon's own that exists."""
        return cls("cgroup", base, reason)

    @classmethod
    def discover(cls, mode: str, state_dir: Path) -> Containment:
        """The containment for the ``containment`` setting: "auto" (cgroups where they can be
        made, else the subreaper), "cgroup" (ContainmentUnavailable if none can be made) or
        "subreaper"."""
        if mode not in MODES:
            raise ValueError(f"containment {mode!r} is not one of {', '.join(MODES)}")
        if mode == "subreaper":
            return cls.subreaper('containment = "subreaper" in the configuration')
        try:
            found = cls._find_cgroups(state_dir)
        except _NoCgroup as exc:
            if mode == "cgroup":
                raise ContainmentUnavailable(
                    f'containment = "cgroup", but no cgroup can be made for trials: {exc}; '
                    "run the daemon as root or under systemd with Delegate=yes, or set "
                    'containment = "auto" to fall back to the subreaper'
                ) from None
            return cls.subreaper(f"no cgroups: {exc}; the shim's subreaper kills what is left")
        found.sweep()
        return found

    @classmethod
    def _find_cgroups(cls, state_dir: Path) -> Containment:
        mounted = cgroup2_mount()
        if mounted is None:
            raise _NoCgroup("no cgroup v2 hierarchy is mounted")
        mount, mount_root = mounted
        ours = own_cgroup()
        if ours is None:
            raise _NoCgroup("this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
        here = _on_disk(mount, mount_root, ours)
        service = ours
        if ours.endswith("/daemon") and ours.rsplit("/", 2)[-2].endswith(".service"):
            # Moved there by an earlier start of this same process (a re-exec).
            service = ours.rsplit("/", 1)[0]
        if os.environ.get("INVOCATION_ID") and service.endswith(".service"):
            folder = _on_disk(mount, mount_root, service)
            if folder is not None and os.access(folder / "cgroup.procs", os.W_OK):
                try:
                    trials = folder / "trials"
                    _own_folder(folder / "daemon")
                    _own_folder(trials)
                    if here != folder / "daemon":
                        # The no-internal-processes rule: the service's cgroup keeps none.
                        (folder / "daemon" / "cgroup.procs").write_text(str(os.getpid()))
                except OSError as exc:
                    raise _NoCgroup(
                        f"the service's cgroup {folder} cannot be used: {_reason(exc)}"
                    ) from None
                return cls.cgroups_in(
                    trials, f"systemd service with Delegate=yes: one cgroup per run in {trials}"
                )
        if os.geteuid() != 0:
            raise _NoCgroup(
                f"the daemon runs as uid {os.geteuid()}, not root, and not as a systemd "
                "service with Delegate=yes"
            )
        digest = hashlib.sha256(os.fsencode(str(state_dir.resolve()))).hexdigest()[:12]
        top = mount / "hpod"
        base = top / digest
        try:
            _own_folder(top)
            _own_folder(base)
        except OSError as exc:
            raise _NoCgroup(f"cannot make {base}: {_reason(exc)}") from None
        _probe(base)
        return cls.cgroups_in(base, f"root: one cgroup per run in {base}")

    # -- runs -------------------------------------------------------------------------------------

    @property
    def uses_cgroups(self) -> bool:
        return self.kind == "cgroup"

    def make(self, name: str) -> Path:
        """A new cgroup for one run (``run_name``); an empty one left by an earlier daemon under
        the same name is used again, one with processes in it is refused."""
        if self.base is None:
            raise ContainmentUnavailable("this daemon makes no cgroups (containment: subreaper)")
        if not name or "/" in name or "\0" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot name a cgroup")
        path = self.base / name
        if not self.base.exists():
            # Removed under us (an admin's clean-up, a release by a daemon since gone): the
            # same folder again, still the daemon's own.
            try:
                _own_folder(self.base.parent)
                _own_folder(self.base)
            except OSError as exc:
                raise ContainmentUnavailable(f"cannot make {self.base}: {_reason(exc)}") from None
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            if _populated(path):
                raise ContainmentUnavailable(
                    f"the cgroup {path} already has processes in it; not used for a new run"
                ) from None
        except OSError as exc:
            raise ContainmentUnavailable(f"cannot make the cgroup {path}: {_reason(exc)}") from None
        return path

    def kill(self, path: Path) -> None:
        """SIGKILL every process in the cgroup (``cgroup.kill``, Linux 5.14+; else each pid in
        ``cgroup.procs`` until it is empty). Nothing to do for one that is gone."""
        try:
            (path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not path.is_dir():
                return
        deadline = time.monotonic() + REMOVE_SECONDS
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
            except FileNotFoundError:
                return
            if not pids:
                return
            for pid in pids:
                # In this run's cgroup a moment ago: one of the run's own processes.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self, path: Path, timeout: float = REMOVE_SECONDS) -> bool:
        """Wait (up to ``timeout``) for the cgroup to empty, then remove it; False if it would
        not (its processes still exiting): the next start's sweep removes it."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            state = _populated(path)
            if state is None:
                return True
            if not state:
                try:
                    path.rmdir()
                    return True
                except FileNotFoundError:
                    return True
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def kill_and_remove(self, path: Path) -> bool:
        """The end of a run: nothing in its cgroup survives it, and the cgroup goes."""
        self.kill(path)
        return self.remove(path)

    def sweep(self) -> None:
        """Remove the empty run cgroups an earlier daemon left (one that died before it could).
        Those with processes in them are runs to adopt, or to kill once not adopted."""
        if self.base is None:
            return
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.is_dir() and _populated(entry) is False:
                with contextlib.suppress(OSError):
                    entry.rmdir()

    def release(self) -> None:
        """At a clean stop (not before a re-exec, which the runs outlive): the empty run cgroups
        and then the base folder itself, if nothing is left in it. A run still alive keeps both."""
        self.sweep()
        if self.base is not None:
            with contextlib.suppress(OSError):  # EBUSY: a run's cgroup is still there
                self.base.rmdir()

    def describe(self) -> dict[str, Any]:
        """What ``hpodctl show`` and ``ping`` print of it."""
        return {
            "kind": self.kind,
            "base": None if self.base is None else str(self.base),
            "reason": self.reason,
        }


class _NoCgroup(Exception):
    """Why no cgroup can be made here (auto mode falls back to the subreaper)."""
