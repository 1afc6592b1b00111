"""What the daemon holds in memory for a study and for each running trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from hpod.core import limits as lim
from hpod.core.spec import StudySpec
from hpod.core.study import Launch, Study
from hpod.daemon.runner import TrialProcess
from hpod.daemon.slots import Slot
from hpod.daemon.views import summary_view
from hpod.fit.fitter import FitStats


@dataclass
class TrialRun:
    """One run of one trial's process."""

    trial_id: int
    token: str
    launch: Launch
    slot: Slot
    started: float  # monotonic
    proc: TrialProcess | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    stopping: bool = False  # the daemon is ending this run itself
    interrupting: bool = False  # ... because it is shutting down: the trial runs again later
    # The last counted report (monotonic time, resource level): the study's pace is measured
    # between consecutive ones.
    mark_time: float = 0.0
    mark_resource: float = 0.0

    @property
    def devices(self) -> int:
        return max(1, len(self.slot.devices))


@dataclass
class StudyRuntime:
    id: str
    seq: int
    owner: int
    spec: StudySpec
    engine: Study
    folder: Path
    created: float
    ended: float | None = None
    runs: dict[int, TrialRun] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)
    # Seconds summed over a trial's runs (and x devices held), as the store keeps them.
    run_seconds: dict[int, float] = field(default_factory=dict)
    compute_seconds: dict[int, float] = field(default_factory=dict)
    # The clocks the limits count, as the store keeps them (across restarts), plus what the
    # running clock and the running trials add since (monotonic).
    elapsed_base: float = 0.0
    running_since: float | None = None
    compute_base: float = 0.0
    pace: lim.Pace = field(default_factory=lim.Pace)
    # Set to make the study's watcher look again (a run started or ended, shutdown).
    poke: anyio.Event = field(default_factory=anyio.Event)
    pruned: set[int] = field(default_factory=set)
    launch_order: int = 0
    # How its decisions were made and how long they and its model fits took (hpodctl show).
    fit_stats: FitStats = field(default_factory=FitStats)

    def summary(self) -> dict[str, Any]:
        return summary_view(
            self.id, self.engine, owner=self.owner, created=self.created, ended=self.ended
        )

    def elapsed(self, now: float) -> float:
        if self.running_since is None:
            return self.elapsed_base
        return self.elapsed_base + max(0.0, now - self.running_since)

    def compute(self, now: float) -> float:
        live = sum((now - r.started) * r.devices for r in self.runs.values())
        return self.compute_base + max(0.0, live)

    def clocks(self, now: float) -> lim.Clocks:
        return lim.Clocks(self.elapsed(now), self.compute(now), len(self.engine.trials))

    def devices_running(self) -> int:
        return sum(r.devices for r in self.runs.values())

    def start_clock(self, now: float) -> None:
        if self.running_since is None:
            self.running_since = now

    def stop_clock(self, now: float) -> None:
        self.elapsed_base = self.elapsed(now)
        self.running_since = None

    def wake(self) -> None:
        self.poke.set()
