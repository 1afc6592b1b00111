"""Live restore: what became of the runs an earlier daemon left running.

A daemon that dies (SIGKILL, a crash, an upgrade by re-exec) leaves its trials running: each is
a shim (hpod.daemon.shim) with the trial below it, in a session of its own. The store's
``live_runs`` table holds, for each run that was started and whose exit was never recorded, what
proves its process (hpod.daemon.procid) and what it was told. At the next start each such run is
one of three things, decided here before any study is restored:

- **alive**: the shim is provably the same process (pid, start time, boot id): it is adopted,
  keeps its slot, its GPUs and its token, and nothing about it changes for the trial;
- **ended**: its shim wrote the trial's exit status while no daemon watched: the exit is
  recorded as the earlier daemon would have recorded it;
- **gone**: no status and no process (or a pid another process has now, which is never
  signalled): the trial is resumed from its checkpoint, as after any crash before.

This module reads files and ``/proc``; it starts, signals and stores nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpod.daemon.procid import ProcessIdentity
from hpod.daemon.runner import TrialExit
from hpod.daemon.store import LiveRunRow

Fate = Literal["alive", "ended", "gone"]


@dataclass(frozen=True)
class LeftRun:
    """One run an earlier daemon left, and what became of it."""

    row: LiveRunRow
    fate: Fate
    why: str
    identity: ProcessIdentity | None = None
    exit: TrialExit | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.row.study_id, self.row.trial_id)


def _identity(row: LiveRunRow) -> ProcessIdentity | None:
    if row.identity is None:
        return None
    try:
        return ProcessIdentity.from_json(row.identity)
    except (KeyError, TypeError, ValueError):
        return None


def judge(row: LiveRunRow) -> LeftRun:
    """What became of one run: its status file first (a shim that wrote one is done), then
    whether its shim is provably still alive."""
    ident = _identity(row)
    if ident is None:
        # Killed between storing the launch and storing the started process: it may never
        # have started, and nothing proves which process would be it.
        return LeftRun(row, "gone", "its process was never recorded as started")
    ended = TrialExit.read(Path(ident.status_path))
    if ended is not None:
        return LeftRun(row, "ended", "it ended while no daemon watched", ident, ended)
    if ident.matches():
        return LeftRun(row, "alive", f"shim pid {ident.pid} is still running", ident)
    return LeftRun(row, "gone", f"shim pid {ident.pid} is gone (or is another process now)", ident)


def survey(rows: Sequence[LiveRunRow]) -> dict[tuple[str, int], LeftRun]:
    return {(r.study_id, r.trial_id): judge(r) for r in rows}
