"""The event stream and the decision records (docs/python-api.md, "Events and decisions").

Every event is a row of the store's ``events`` table, written in the same commit as the change it
tells of (a launch's record, an exit's, a report's), so a reader never sees an event whose change
is not stored, nor a stored change without its event. The table's id is the stream's cursor:
ids grow in commit order (one writer thread), so a reader that asks for ``id > cursor`` gets
every event after the last one it saw, once, also across a restart of the daemon.

The wire method ``events`` is a long poll: answered at once when something is past the cursor,
else when the next event is committed (the store's writer calls :meth:`EventLog.committed`)
or the timeout passes. The writer wakes this loop only while someone waits.

The decision records (one per scheduling decision: ``hpod.core.study.DecisionRecord``) go into
the ``decisions`` table with the launch or the report they came with; a restart restores the
study's decision counts from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio

from hpod.core.answer import Key
from hpod.core.pareto import dominates
from hpod.core.states import TrialState
from hpod.core.study import DecisionRecord, Launch, ReportOutcome, TrialRecord
from hpod.daemon.runtime import StudyRuntime
from hpod.daemon.store import EventRow, Op, Store, event_op

# A trial's reports become `trial_reported` events at most this often (the first one always):
# a trial reporting a thousand times a second must not write a thousand events a second.
REPORT_EVENT_SECONDS = 0.5
# The most events (or decision records) one answer carries.
PAGE_MAX = 1000

# The kinds of a trial's run that ended without ending the trial, and of one that ended it.
_RUN_END_KINDS = {
    TrialState.PAUSED: "trial_paused",
    TrialState.INTERRUPTED: "trial_interrupted",
    # Out of memory, and the [oom] policy runs it again with the batch key halved (docs/oom.md).
    TrialState.PENDING: "trial_oom_retry",
}


def decision_op(study_id: str, rec: DecisionRecord) -> Op:
    return Op(
        "INSERT INTO decisions (study_id, at, kind, trial_id, level, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (study_id, rec.at, rec.kind, rec.trial_id, rec.level, "{}"),
    )


def event_view(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "study": row.study_id,
        "trial": row.trial_id,
        "at": row.at,
        "kind": row.kind,
        "data": row.data,
    }


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


class EventLog:
    """Builds the ops of each event and decision record; wakes the long polls once committed.

    One per daemon (the trials service makes it). It keeps, per trial, when its last
    ``trial_reported`` was, and for several objectives each trial's values (for ``new_best``),
    all in memory: the report path reads nothing from the store. A single objective's best is
    the study's own (``Study.best_key``), compared with what it was before the report."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._changed = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = 0
        # Several objectives: study id -> trial id -> its minimized value vector, so a report
        # is checked against the others in O(trials), never a whole non-dominated sort.
        self._vectors: dict[str, dict[int, tuple[float, ...]]] = {}
        self._reported: dict[tuple[str, int], float] = {}

    # -- ops ------------------------------------------------------------------------------------

    @staticmethod
    def op(
        study_id: str | None,
        trial_id: int | None,
        kind: str,
        data: Mapping[str, Any] | None,
        at: float,
    ) -> Op:
        return event_op(study_id, trial_id, kind, data, at)

    @staticmethod
    def decision_ops(study_id: str, records: Iterable[DecisionRecord]) -> list[Op]:
        return [decision_op(study_id, rec) for rec in records]

    def launch_ops(self, study: StudyRuntime, launch: Launch, run: int, at: float) -> list[Op]:
        """The decisions that made the launch, and its ``trial_started`` (a trial's first run)
        or ``trial_resumed`` (a promotion, or a resume after a restart) event."""
        ops = self.decision_ops(study.id, study.engine.drain_decisions())
        kind = "trial_started" if launch.fresh and run == 1 else "trial_resumed"
        data = {
            "run": run,
            "config": launch.config,
            "resume_from": launch.resume_from,
            "max_resource": launch.max_resource,
        }
        ops.append(self.op(study.id, launch.trial_id, kind, data, at))
        return ops

    def exit_ops(
        self, study: StudyRuntime, rec: TrialRecord, returncode: int | None, at: float
    ) -> list[Op]:
        """A run's end: ``trial_paused``, ``trial_interrupted`` (a shutdown: it runs again),
        ``trial_oom_retry`` (out of memory: it runs again with a halved batch), or
        ``trial_ended`` (completed, stopped or failed: its last run)."""
        self._reported.pop((study.id, rec.trial_id), None)
        kind = _RUN_END_KINDS.get(rec.state, "trial_ended")
        curve = rec.curve
        data: dict[str, Any] = {
            "state": rec.state.value,
            "objective": _number(study.engine.value_of(rec.trial_id)) if curve else None,
            "resource": curve[-1][0] if curve else None,
            "returncode": returncode,
            "run": rec.runs,
            "error": rec.error,
        }
        if rec.state is TrialState.PENDING and rec.retries:
            data["retry"] = rec.retries[-1].to_dict()
        ops = [self.op(study.id, rec.trial_id, kind, data, at)]
        # A study that was waiting on this run may now have a different best (never lower for a
        # run's end alone: the curve did not change), so only the report path tracks it.
        return ops

    def report_ops(
        self,
        study: StudyRuntime,
        trial_id: int,
        metrics: Mapping[str, Any],
        outcome: ReportOutcome,
        now: float,
        mono: float,
        best_before: Key | None,
    ) -> list[Op]:
        """What a report adds to its commit: the decision records (a PAUSE or STOP), a
        ``trial_reported`` (rate-limited), a ``new_best``. Nothing when nothing is due; no read
        of the store, no await."""
        engine = study.engine
        ops: list[Op] = []
        records = engine.drain_decisions()
        if records:
            ops.extend(self.decision_ops(study.id, records))
        key = (study.id, trial_id)
        last = self._reported.get(key)
        if last is None or mono - last >= REPORT_EVENT_SECONDS:
            self._reported[key] = mono
            data = {
                "resource": outcome.resource,
                # Its numbers and strings: a nested metric could make one event a megabyte.
                "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
                "decision": outcome.decision.value,
                "counted": outcome.counted,
            }
            ops.append(self.op(study.id, trial_id, "trial_reported", data, now))
        objective = engine.objective
        carries = objective.metric in metrics or (
            objective.is_multi and any(n in metrics for n in objective.names)
        )
        if outcome.counted and carries:
            best = self._new_best(study, trial_id, best_before)
            if best is not None:
                ops.append(self.op(study.id, trial_id, "new_best", best, now))
        return ops

    def _new_best(
        self, study: StudyRuntime, trial_id: int, before: Key | None
    ) -> dict[str, Any] | None:
        """The study's best as ``new_best`` says it, if it moved from ``before`` (its key before
        the report): the study's answer index knows it in O(log n), never a walk of the
        trials (a 10,000-trial study's first report walked them all: 45 ms on the loop)."""
        engine = study.engine
        if engine.objective.is_multi:
            return self._new_on_front(study, trial_id)
        now = engine.best_key()
        if now is None or now == before:
            return None
        best = engine.trials[now[2]]
        return {
            "trial": now[2],
            "objective": -now[0] if engine.objective.maximize else now[0],
            "last": next(reversed(best.curve.values())),
            "resource": best.last_resource,
            "config": dict(best.config),
        }

    def _new_on_front(self, study: StudyRuntime, trial_id: int) -> dict[str, Any] | None:
        """Several objectives: ``new_best`` says a trial whose report puts it on the Pareto
        front (no other trial dominates its values), with ``values``, each metric's."""
        engine = study.engine
        objective = engine.objective
        known = self._vectors.get(study.id)
        if known is None:
            known = self._vectors[study.id] = {
                t.trial_id: objective.minimized(engine.vector_of(t.trial_id))
                for t in engine.trials
                if t.vectors and t.trial_id != trial_id
            }
        t = engine.trials[trial_id]
        if not t.vectors:
            return None
        values = engine.vector_of(trial_id)
        mine = objective.minimized(values)
        if known.get(trial_id) == mine:
            return None  # nothing changed
        known[trial_id] = mine
        if all(math.isinf(v) for v in mine):
            return None
        if any(dominates(v, mine) for tid, v in known.items() if tid != trial_id):
            return None
        return {
            "trial": trial_id,
            "objective": _number(values[0]),
            "values": {n: _number(v) for n, v in zip(objective.names, values, strict=True)},
            "resource": t.last_resource,
            "config": dict(t.config),
            "front": True,
        }

    def study_ended_ops(self, study: StudyRuntime, at: float) -> list[Op]:
        engine = study.engine
        best = engine.best()
        data = {
            "state": engine.state.value,
            "reason": engine.end_reason,
            "best": None
            if best is None
            else {
                "trial": best.trial_id,
                "objective": best.objective,
                "last": best.last,
                "window": best.window,
                "resource": best.resource,
                "config": best.config,
            },
        }
        return [self.op(study.id, None, "study_ended", data, at)]

    # -- waking the long polls ------------------------------------------------------------------

    def committed(self) -> None:
        """On the store's writer thread, after a commit that held an event: wake the waiters
        (only while there are some: a report's event costs the loop nothing otherwise)."""
        loop = self._loop
        if loop is None or not self._waiting:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is every waiter
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _attach(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.store.on_events = self.committed

    def read(self, after: int, study_id: str | None, limit: int) -> list[EventRow]:
        return self.store.load_events_after(after, study_id, limit)

    async def wait(
        self, after: int, study_id: str | None, timeout: float, limit: int
    ) -> list[EventRow]:
        """The events past ``after`` (of ``study_id``, or every study's), at most ``limit``;
        when there are none yet, the first ones committed within ``timeout`` seconds."""
        self._attach()
        deadline = time.monotonic() + timeout
        self._waiting += 1
        try:
            while True:
                # Read, then take the event to wait on, with no await between: a commit after
                # the read wakes this very event.
                rows = self.read(after, study_id, limit)
                changed = self._changed
                left = deadline - time.monotonic()
                if rows or left <= 0:
                    return rows
                with anyio.move_on_after(left):
                    await changed.wait()
        finally:
            self._waiting -= 1


def page(rows: Sequence[EventRow], after: int, limit: int = PAGE_MAX) -> dict[str, Any]:
    """The wire result: the events and the cursor to ask after next; ``next``, as the other
    paged answers have it: that cursor when the page is full (more may follow at once), else
    None (the last stored now: a follower long-polls with ``cursor``)."""
    cursor = rows[-1].id if rows else after
    return {
        "events": [event_view(r) for r in rows],
        "cursor": cursor,
        "next": cursor if len(rows) >= limit else None,
    }
