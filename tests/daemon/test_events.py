"""hpod.daemon.events against a real store: the long poll wakes on the commit of an event (and
only an event), cursors, the report path's events (rate-limited trial_reported, new_best), the
launch's and exit's events and decision records, and events kept while the disk is full."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from hpod.core.states import StudyState, TrialState
from hpod.daemon.disk import Disk
from hpod.daemon.events import REPORT_EVENT_SECONDS, EventLog
from hpod.daemon.store import Store, StudyRow, update_study_op
from hpod.errors import StoreFull
from tests.daemon.fakes import make_study, start_run

pytestmark = pytest.mark.anyio


def study_row(study_id: str) -> StudyRow:
    return StudyRow(
        id=study_id,
        seq=1,
        name="s",
        owner_uid=1000,
        spec_toml='name = "s"\n',
        base_dir="/tmp",
        state=StudyState.RUNNING,
        created_at=100.0,
    )


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store.open(tmp_path / "state") as s:
        yield s


async def test_a_long_poll_answers_at_once_or_at_the_next_event_committed(store: Store) -> None:
    log = EventLog(store)
    await store.write(log.op("s-1", None, "study_submitted", {"name": "s"}, time.time()))
    first = await log.wait(0, None, 5.0, 100)
    assert [r.kind for r in first] == ["study_submitted"]
    cursor = first[-1].id
    # Nothing past the cursor: a timeout of 0 answers at once, empty.
    assert await log.wait(cursor, None, 0.0, 100) == []
    got: list[str] = []
    waited: list[float] = []

    async def poll() -> None:
        started = time.monotonic()
        rows = await log.wait(cursor, "s-1", 10.0, 100)
        waited.append(time.monotonic() - started)
        got.extend(r.kind for r in rows)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.2)
        # A commit without an event does not answer the poll; the next event's does.
        await store.insert_study(study_row("s-1"))
        await store.write(log.op("other-2", 0, "trial_started", {}, time.time()))
        await anyio.sleep(0.1)
        assert got == []  # another study's event: still waiting
        await store.write(log.op("s-1", 0, "trial_started", {}, time.time()))
    assert got == ["trial_started"]
    assert 0.2 <= waited[0] < 5.0


async def test_the_cursor_pages_through_in_commit_order(store: Store) -> None:
    log = EventLog(store)
    for i in range(7):
        await store.write(log.op("s-1", i, "trial_started", {}, time.time()))
    seen: list[int | None] = []
    cursor = 0
    while rows := await log.wait(cursor, "s-1", 0.0, 3):
        seen.extend(r.trial_id for r in rows)
        cursor = rows[-1].id
    assert seen == list(range(7))


async def test_a_reports_events_trial_reported_at_most_every_half_second_and_new_best(
    tmp_path: Path,
) -> None:
    log = EventLog(None)  # type: ignore[arg-type]  # the report path reads no store
    study = make_study(tmp_path)
    a, b = start_run(study), start_run(study)
    engine = study.engine

    def report(run_id: int, epoch: int, loss: float, mono: float) -> list[str]:
        metrics = {"epoch": epoch, "loss": loss}
        before = engine.best_key()
        outcome = engine.on_report(run_id, metrics, time.time())
        ops = log.report_ops(study, run_id, metrics, outcome, time.time(), mono, before)
        return [str(op.params[3]) for op in ops if op.sql.startswith("INSERT INTO events")]

    assert report(a.trial_id, 1, 0.5, 100.0) == ["trial_reported", "new_best"]
    # Worse, another trial: its first trial_reported, no new best.
    assert report(b.trial_id, 1, 0.9, 100.1) == ["trial_reported"]
    # Better, within 0.5 s of its last trial_reported: only the new best.
    assert report(b.trial_id, 2, 0.1, 100.2) == ["new_best"]
    # The best trial falls behind the other one, 0.5 s on: trial_reported, and trial a is the
    # best again.
    metrics = {"epoch": 2.5, "loss": 0.8}
    before = engine.best_key()
    outcome = engine.on_report(b.trial_id, metrics, time.time())
    ops = log.report_ops(
        study, b.trial_id, metrics, outcome, time.time(), 100.1 + REPORT_EVENT_SECONDS, before
    )
    kinds = [op.params[3] for op in ops if op.sql.startswith("INSERT INTO events")]
    assert kinds == ["trial_reported", "new_best"]
    assert f'"trial":{a.trial_id},' in ops[-1].params[4]


async def test_launch_and_exit_ops_carry_the_decisions_and_the_run_events(
    tmp_path: Path, store: Store
) -> None:
    log = EventLog(store)
    study = make_study(tmp_path)
    run = start_run(study)
    rec = study.engine.record(run.trial_id)
    ops = log.launch_ops(study, run.launch, rec.runs, time.time())
    await store.write(*ops)
    assert [(d.kind, d.trial_id) for d in store.load_decisions(study.id)] == [
        ("random_starts", run.trial_id)
    ]
    assert study.engine.drain_decisions() == []  # drained into the ops
    study.engine.on_report(run.trial_id, {"epoch": 1, "loss": 0.3}, time.time())
    study.engine.on_exit(run.trial_id, 0, time.time())
    rec = study.engine.record(run.trial_id)
    assert rec.state is TrialState.COMPLETED or rec.state is TrialState.STOPPED
    await store.write(*log.exit_ops(study, rec, 0, time.time()))
    rows = store.load_events_after(0, study.id)
    assert [r.kind for r in rows] == ["trial_started", "trial_ended"]
    assert rows[1].data["state"] == rec.state.value
    assert rows[1].data["objective"] == pytest.approx(0.3)
    assert store.decision_counts(study.id) == {"random_starts": 1}


async def test_events_written_while_the_disk_is_full_are_kept_in_order(
    tmp_path: Path, store: Store
) -> None:
    log = EventLog(store)
    disk = Disk(store, tmp_path / "state", 0)
    await store.insert_study(study_row("s-1"))
    full = [True]
    real_write = store.write

    async def write(*ops):  # type: ignore[no-untyped-def]
        if full[0]:
            raise StoreFull("the disk is full (a test)")
        await real_write(*ops)

    store.write = write  # type: ignore[method-assign]
    for i in range(3):
        stored = await disk.write(
            update_study_op("s-1", elapsed=float(i)),
            log.op("s-1", i, "trial_ended", {"i": i}, time.time()),
        )
        assert not stored
    assert store.load_events_after(0, "s-1") == []
    full[0] = False
    assert await disk.flush()
    assert [r.trial_id for r in store.load_events_after(0, "s-1")] == [0, 1, 2]


async def test_every_event_op_wakes_the_long_polls_also_the_stores_own(store: Store) -> None:
    # trial.oom writes with Store.add_event, not through the EventLog: its poll wakes too.
    log = EventLog(store)
    got = []

    async def poll() -> None:
        got.extend(await log.wait(0, "s-1", 10.0, 100))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.1)
        await store.add_event("s-1", 0, "oom", {}, time.time())
    assert [r.kind for r in got] == ["oom"]
    assert time.monotonic() - started < 5.0


async def test_a_new_daemons_first_report_says_new_best_only_if_the_best_moved(
    tmp_path: Path,
) -> None:
    """The event log of a daemon that just started knows nothing of the study: the best before
    a report is the study's own, so a report that leaves it where it was says nothing."""
    study = make_study(tmp_path)
    a, b = start_run(study), start_run(study)
    engine = study.engine
    engine.on_report(a.trial_id, {"epoch": 1, "loss": 0.2}, time.time())
    engine.on_report(b.trial_id, {"epoch": 1, "loss": 0.6}, time.time())

    def report(run_id: int, epoch: int, loss: float) -> list[str]:
        log = EventLog(None)  # type: ignore[arg-type]  # a new daemon's, every time
        metrics = {"epoch": epoch, "loss": loss}
        before = engine.best_key()
        outcome = engine.on_report(run_id, metrics, time.time())
        ops = log.report_ops(study, run_id, metrics, outcome, time.time(), 0.0, before)
        return [str(op.params[3]) for op in ops if op.sql.startswith("INSERT INTO events")]

    assert report(b.trial_id, 2, 0.5) == ["trial_reported"]  # still behind a
    assert report(a.trial_id, 2, 0.1) == ["trial_reported", "new_best"]  # a, better
    assert report(b.trial_id, 3, -2.0) == ["trial_reported", "new_best"]  # b goes first
