"""Fake services for testing :class:`hpod.daemon.methods.Methods` alone (as supervisor tests its
rpcinterface against a DummySupervisor): each implements just what Methods calls, and records
the calls. The studies they hold are real core objects (a spec, a Study), only the services are
fake.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hpod.core.spec import StudySpec
from hpod.core.states import StudyState
from hpod.core.study import ReportOutcome, Study
from hpod.daemon.events import EventLog
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.slots import Slot
from hpod.daemon.store import Op
from hpod.errors import BadState, NotFound


def spec_toml(
    name: str = "s",
    *,
    command: str = '["python", "train.py", "--x", "{x}"]',
    top: str = "",
    scheduler: str = 'type = "fifo"\nmax_resource = 3',
    limits: str = "max_trials = 4",
) -> str:
    """A study spec's text: ``top`` holds more top-level keys, the others their tables."""
    return f"""
name = "{name}"
command = {command}
{top}
[objective]
metric = "loss"
mode = "min"
resource = "epoch"
[space]
x = {{ param_type = "uniform", range = [0, 1] }}
[scheduler]
{scheduler}
[limits]
{limits}
"""


def make_study(folder: Path, *, name: str = "s", seq: int = 1, owner: int = 1000) -> StudyRuntime:
    """A running study built from a real spec, its folder under ``folder``."""
    spec = StudySpec.from_toml(spec_toml(name), base_dir=folder)
    sid = f"{name}-{seq}"
    return StudyRuntime(
        id=sid,
        seq=seq,
        owner=owner,
        spec=spec,
        engine=Study.new(spec),
        folder=folder / "studies" / sid,
        created=time.time(),
    )


def start_run(study: StudyRuntime) -> TrialRun:
    """Launch the study's next trial in its engine and give it a run, as the dispatcher does."""
    launch = study.engine.next_launch(time.time())
    assert launch is not None
    run = TrialRun(launch.trial_id, secrets.token_hex(8), launch, Slot(0), time.monotonic())
    study.runs[launch.trial_id] = run
    return run


@dataclass
class FakeStore:
    posts: list[tuple[Op, ...]] = field(default_factory=list)
    events: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)

    def post(self, *ops: Op, then: Any) -> None:
        self.posts.append(ops)
        then(None)  # committed at once

    async def add_event(
        self, study_id: str, trial_id: int, kind: str, data: dict[str, Any], at: float
    ) -> None:
        self.events.append((study_id, trial_id, kind, data))


class FakeStudies:
    def __init__(self, *studies: StudyRuntime) -> None:
        self.studies = {s.id: s for s in studies}
        self.accepting = True
        self.store = FakeStore()
        self.admitted: list[tuple[str, Path, int]] = []
        self.admitted_env: list[dict[str, str] | None] = []
        self.ended: list[tuple[StudyRuntime, StudyState, str, StopReason]] = []
        self.reported: list[StudyRuntime] = []
        self.report_rows: list[dict[str, Any]] = []

    def get(self, sid: str) -> StudyRuntime:
        if sid not in self.studies:
            raise NotFound(f"no study {sid!r}")
        return self.studies[sid]

    def find(self, sid: str) -> StudyRuntime | None:
        return self.studies.get(sid)

    def all(self) -> list[StudyRuntime]:
        return sorted(self.studies.values(), key=lambda s: s.seq)

    def trial_dir(self, study: StudyRuntime, trial_id: int) -> Path:
        return study.folder / "trials" / str(trial_id)

    async def admit(
        self, text: str, base_dir: Path, owner: int, *, env: Mapping[str, str] | None = None
    ) -> StudyRuntime:
        self.admitted.append((text, base_dir, owner))
        self.admitted_env.append(None if env is None else dict(env))
        name = StudySpec.from_toml(text, base_dir=base_dir).name
        study = make_study(base_dir, name=name, seq=len(self.studies) + 1, owner=owner)
        self.studies[study.id] = study
        return study

    async def end(
        self, study: StudyRuntime, state: StudyState, reason: str, stop: StopReason
    ) -> None:
        self.ended.append((study, state, reason, stop))
        if study.engine.state.is_final:
            raise BadState(f"study {study.id} has already ended")
        study.engine.end(state, reason)
        study.done.set()

    async def report(self, study: StudyRuntime) -> dict[str, Any]:
        self.reported.append(study)
        objective = {"metric": "loss", "mode": "min"}
        return {"study": study.id, "objective": objective, "per_trial": list(self.report_rows)}


class FakeTrials:
    def __init__(self) -> None:
        self.after: list[tuple[StudyRuntime, TrialRun, ReportOutcome]] = []
        # The report path builds its events' ops here; it reads no store (that is the point).
        self.events = EventLog(None)  # type: ignore[arg-type]

    def after_report(self, study: StudyRuntime, run: TrialRun, outcome: ReportOutcome) -> None:
        self.after.append((study, run, outcome))


class FakePool:
    size = 4
    free = 3

    def view(self) -> dict[str, Any]:
        return {"nvml": False, "gpus": [], "cpu_slots": {"size": 4, "free": 3, "holders": []}}

    def placement(self, gpus_per_trial: int, cpu_fallback: bool = False) -> dict[str, str]:
        return {"kind": "cpu", "reason": f"gpus_per_trial = {gpus_per_trial}"}


class FakeFitter:
    def __init__(self) -> None:
        self.worker = SimpleNamespace(started=2, busy=False)
        self.studies: dict[str, Any] = {}
        self.reports = 0
        self.pokes = 0

    def count_report(self) -> None:
        self.reports += 1

    def poke(self) -> None:
        self.pokes += 1


class FakeAnswer:
    """What an answering handler is handed: the prepared result, then how it was settled."""

    def __init__(self) -> None:
        self.result: Any = None
        self.settled: list[BaseException | None] = []

    def prepare(self, result: Any) -> None:
        self.result = result

    def settle(self, error: BaseException | None) -> None:
        self.settled.append(error)
