from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest

from hpod.core.states import Decision, StudyState, TrialState
from hpod.daemon.store import (
    DB_NAME,
    SCHEMA_VERSION,
    EventRow,
    LiveRunRow,
    Op,
    ReportRow,
    Store,
    StudyRow,
    TrialRow,
    checkpoint_due,
    delete_live_run_op,
    event_op,
    insert_live_run_op,
    insert_study_op,
    insert_trial_op,
    report_op,
    update_live_run_op,
    update_study_op,
    update_trial_op,
)
from hpod.errors import HpodError, NotFound, ShuttingDown

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as s:
        yield s


def study_row(study_id: str = "s1", seq: int = 1) -> StudyRow:
    return StudyRow(
        id=study_id,
        seq=seq,
        name="digits",
        owner_uid=1000,
        spec_toml='name = "digits"\n',
        base_dir="/home/u/exp",
        state=StudyState.RUNNING,
        created_at=100.5,
    )


def trial_row(study_id: str = "s1", trial_id: int = 0) -> TrialRow:
    return TrialRow(
        study_id=study_id,
        trial_id=trial_id,
        config={"lr": 0.01, "width": 128, "opt": "adam"},
        state=TrialState.PENDING,
        token="secret",
        bracket=1,
        max_resource=9.0,
        created_at=101.0,
    )


def count_rows(path: Path, table: str) -> int:
    """Count rows from a separate process: what an outside reader sees on disk."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "print(c.execute('SELECT COUNT(*) FROM ' + sys.argv[2]).fetchone()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), table],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(out.stdout)


# ------------------------------------------------------------------------------ round trips


def test_study_round_trip(store: Store) -> None:
    row = study_row()
    store.write_sync(insert_study_op(row))
    assert store.load_study("s1") == row
    assert store.load_study("nope") is None
    ended = row.replace(state=StudyState.COMPLETED, ended_at=200.0, end_reason="max_trials")
    store.write_sync(
        update_study_op("s1", state=StudyState.COMPLETED, ended_at=200.0, end_reason="max_trials")
    )
    assert store.load_studies() == [ended]
    assert isinstance(store.load_studies()[0].state, StudyState)


def test_studies_ordered_by_seq_and_next_seq(store: Store) -> None:
    assert store.next_study_seq() == 1
    store.write_sync(insert_study_op(study_row("b", 2)), insert_study_op(study_row("a", 1)))
    assert [s.id for s in store.load_studies()] == ["a", "b"]
    assert store.next_study_seq() == 3
    assert store.next_study_seq() == 3  # reserves nothing


@pytest.mark.anyio
async def test_trial_round_trip(store: Store) -> None:
    await store.insert_study(study_row())
    row = trial_row()
    await store.insert_trial(row)
    await store.insert_trial(trial_row(trial_id=1))
    assert store.load_trials("s1")[0] == row
    await store.update_trial(
        "s1", 0, state=TrialState.RUNNING, started_at=102.0, runs=1, resume_from=3.0
    )
    got = store.load_trial("s1", 0)
    assert got == row.replace(state=TrialState.RUNNING, started_at=102.0, runs=1, resume_from=3.0)
    assert [t.trial_id for t in store.load_trials("s1")] == [0, 1]
    assert store.load_trials("other") == []


@pytest.mark.anyio
async def test_a_trials_oom_retries_round_trip_with_its_new_config(store: Store) -> None:
    await store.insert_study(study_row())
    await store.insert_trial(trial_row())
    assert store.load_trial("s1", 0).retries == ()
    retry = {"run": 1, "key": "bs", "from": 128, "to": 64, "at": 5.0, "error": "oom"}
    config = {**trial_row().config, "bs": 64}
    await store.update_trial("s1", 0, state=TrialState.PENDING, config=config, retries=[retry])
    got = store.load_trial("s1", 0)
    assert got.retries == (retry,)
    assert got.config == config
    assert got.state is TrialState.PENDING


@pytest.mark.anyio
async def test_report_and_event_round_trip(store: Store) -> None:
    await store.add_report("s1", 0, 1, 1.0, {"val_acc": 0.5, "epoch": 1}, Decision.CONTINUE, 10.0)
    await store.add_report(
        "s1", 1, 1, None, {"loss": 2.0}, "STOP", 11.0, counted=False, interrupting=True
    )
    await store.add_report("s1", 0, 1, 2.0, {"val_acc": 0.6}, Decision.PAUSE, 12.0)
    reports = store.load_reports("s1")
    assert [r.at for r in reports] == [10.0, 11.0, 12.0]
    assert reports[0] == ReportRow(
        id=reports[0].id,
        study_id="s1",
        trial_id=0,
        run=1,
        resource=1.0,
        metrics={"val_acc": 0.5, "epoch": 1},
        decision=Decision.CONTINUE,
        at=10.0,
    )
    assert reports[0].counted
    assert not reports[1].counted
    assert reports[1].resource is None
    assert reports[1].decision is Decision.STOP
    assert [r.interrupting for r in reports] == [False, True, False]
    assert [r.resource for r in store.load_reports("s1", 0)] == [1.0, 2.0]

    await store.add_event(None, None, "daemon.start", {"pid": 7}, 1.0)
    await store.add_event("s1", 3, "trial.exit", {"code": -9}, 2.0)
    await store.add_event("s2", None, "study.submit", None, 3.0)
    assert store.load_events("s1") == [
        EventRow(id=2, study_id="s1", trial_id=3, at=2.0, kind="trial.exit", data={"code": -9})
    ]
    assert [e.kind for e in store.load_events()] == ["daemon.start", "trial.exit", "study.submit"]
    assert store.load_events("s2")[0].data == {}


def test_nonfinite_metrics_round_trip(store: Store) -> None:
    metrics = {"loss": math.nan, "hi": math.inf, "lo": -math.inf, "ok": 0.25, "nested": [math.nan]}
    store.write_sync(report_op("s1", 0, 1, 1.0, metrics, Decision.CONTINUE, 1.0))
    got = store.load_reports("s1")[0].metrics
    assert math.isnan(got["loss"])
    assert got["hi"] == math.inf
    assert got["lo"] == -math.inf
    assert got["ok"] == 0.25
    assert math.isnan(got["nested"][0])
    # The column is real JSON, readable by any tool.
    raw = sqlite3.connect(store.path).execute("SELECT metrics FROM reports").fetchone()[0]
    assert "NaN" not in raw
    assert '"$float":"nan"' in raw


def test_rows_survive_reopen(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.write_sync(insert_study_op(study_row()), insert_trial_op(trial_row()))
        s.write_sync(update_study_op("s1", elapsed=12.5, compute=40.0))
    with Store.open(tmp_path) as s:
        assert s.load_study("s1") == study_row().replace(elapsed=12.5, compute=40.0)
        assert s.load_trials("s1") == [trial_row()]


# ---------------------------------------------------------------------------------- schema


def test_schema_version_and_wal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "new" / "dir"):
        pass
    path = tmp_path / "new" / "dir" / DB_NAME
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 8
    conn.close()
    assert (path.stat().st_mode & 0o777) == 0o600  # it holds trial tokens


def test_a_version_1_store_is_migrated_with_every_report(tmp_path: Path) -> None:
    from hpod.daemon.store import _SCHEMA_V1

    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    for sql in _SCHEMA_V1:
        conn.execute(sql)
    conn.executemany(
        "INSERT INTO reports (study_id, trial_id, run, resource, metrics, decision, at)"
        " VALUES ('s1', ?, 1, ?, '{\"loss\": 1.0}', 'CONTINUE', ?)",
        [(i % 3, float(i), 100.0 + i) for i in range(7)],
    )
    conn.commit()
    conn.close()
    with Store.open(tmp_path) as store:
        before = store.load_reports("s1")
        assert [(r.id, r.trial_id, r.at) for r in before] == [
            (i + 1, i % 3, 100.0 + i) for i in range(7)
        ]
        assert [r.resource for r in store.load_reports("s1", 1)] == [1.0, 4.0]
        assert not any(r.interrupting for r in before)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "reports_by_study" in indexes
    assert "reports_by_trial" not in indexes
    conn.close()


def _store_of_version(path: Path, version: int, *statements: str) -> None:
    """A database at ``path`` as hpod's schema ``version`` made it, with ``statements`` run."""
    from hpod.daemon.store import _MIGRATIONS, _SCHEMA_V1

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    for sql in _SCHEMA_V1:
        conn.execute(sql)
    for step in range(1, version):
        for sql in _MIGRATIONS[step]:
            conn.execute(sql)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def test_a_version_3_store_is_migrated_with_its_studies_request_ids_unique_per_owner(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    _store_of_version(
        path,
        3,
        "INSERT INTO studies (id, seq, name, owner_uid, spec_toml, base_dir, state, created_at)"
        " VALUES ('old-1', 1, 'old', 1000, 'name = \"old\"', '/srv', 'running', 50.0)",
    )
    with Store.open(tmp_path) as store:
        old = store.load_study("old-1")
        assert old is not None
        assert old.request_id is None  # submitted before request ids: never matched
        assert old.name == "old"
        new = study_row("new-2", 2).replace(request_id="r-1")
        store.write_sync(insert_study_op(new))
        assert store.load_study_by_request(1000, "r-1") == new
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "studies_by_request" in indexes
    conn.close()
    with Store.open(tmp_path) as store:  # the request id is read back after a restart
        assert store.load_study_by_request(1000, "r-1") == new


def test_a_version_4_store_is_migrated_with_its_studies_keeping_the_daemons_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    _store_of_version(
        path,
        4,
        "INSERT INTO studies (id, seq, name, owner_uid, spec_toml, base_dir, state, created_at,"
        " request_id) VALUES ('old-1', 1, 'old', 1000, 'name = \"old\"', '/srv', 'running',"
        " 50.0, 'r-0')",
    )
    env = {"PATH": "/home/u/venv/bin:/usr/bin", "VIRTUAL_ENV": "/home/u/venv", "LC_ALL": "C"}
    with Store.open(tmp_path) as store:
        old = store.load_study("old-1")
        assert old is not None
        assert old.client_env is None  # submitted before: its trials keep the daemon's own
        assert old.request_id == "r-0"
        new = study_row("new-2", 2).replace(client_env=env)
        store.write_sync(insert_study_op(new))
        assert store.load_study("new-2") == new
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()
    with Store.open(tmp_path) as store:  # kept across a restart
        again = store.load_study("new-2")
        assert again is not None
        assert again.client_env == env


def test_a_version_5_store_is_migrated_with_live_runs_and_report_senders(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    _store_of_version(
        path,
        5,
        "INSERT INTO reports (study_id, trial_id, run, resource, metrics, decision, at)"
        " VALUES ('s1', 0, 1, 1.0, '{\"loss\": 1.0}', 'CONTINUE', 10.0)",
    )
    with Store.open(tmp_path) as store:
        (old,) = store.load_reports("s1")
        assert (old.sender, old.seq) == (None, None)  # an old reporter's: never a repeat
        assert store.load_live_runs() == []
        store.write_sync(
            report_op("s1", 0, 1, 2.0, {"loss": 0.5}, "PAUSE", 11.0, sender="42-ab", seq=7)
        )
        live = LiveRunRow(
            study_id="s1",
            trial_id=0,
            run=1,
            token_hash="ab" * 32,
            devices=("GPU-1",),
            launched_at=9.0,
        )
        store.write_sync(insert_live_run_op(live))
        ident = {"pid": 5, "start_ticks": 77, "boot_id": "b"}
        store.write_sync(update_live_run_op("s1", 0, identity=ident, stop_reason=5, stop_at=12.0))
    with Store.open(tmp_path) as store:  # read back after a restart
        assert [(r.sender, r.seq) for r in store.load_reports("s1")] == [(None, None), ("42-ab", 7)]
        (row,) = store.load_live_runs()
        assert row == live.replace(identity=ident, stop_reason=5, stop_at=12.0)
        # A relaunch of the trial takes the place of the run whose exit was never written.
        store.write_sync(insert_live_run_op(live.replace(run=2, devices=())))
        (row,) = store.load_live_runs()
        assert (row.run, row.devices, row.identity) == (2, (), None)
        store.write_sync(delete_live_run_op("s1", 0))
        assert store.load_live_runs() == []
        with pytest.raises(ValueError, match="cannot update token_hash"):
            update_live_run_op("s1", 0, token_hash="00")


def test_a_studys_environment_is_never_updated(store: Store) -> None:
    store.write_sync(insert_study_op(study_row().replace(client_env={"PATH": "/bin"})))
    with pytest.raises(ValueError, match="cannot update client_env"):
        update_study_op("s1", client_env={"PATH": "/evil"})


def test_a_study_is_found_by_its_owner_and_request_id(store: Store) -> None:
    mine = study_row("s1", 1).replace(request_id="r-1")
    theirs = study_row("s2", 2).replace(owner_uid=2000, request_id="r-1")
    store.write_sync(
        insert_study_op(mine),
        insert_study_op(theirs),
        # Any number of studies without one (old clients): no id, nothing to collide.
        insert_study_op(study_row("s3", 3)),
        insert_study_op(study_row("s4", 4)),
    )
    assert store.load_study_by_request(1000, "r-1") == mine
    assert store.load_study_by_request(2000, "r-1") == theirs
    assert store.load_study_by_request(1000, "r-2") is None
    assert store.load_study_by_request(3000, "r-1") is None
    # The unique index backs the daemon's check: a second (owner, request id) never commits.
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.write_sync(insert_study_op(study_row("s5", 5).replace(request_id="r-1")))
    assert store.load_study("s5") is None
    with pytest.raises(ValueError, match="cannot update request_id"):
        update_study_op("s1", request_id="r-9")


@pytest.mark.anyio
async def test_a_report_commit_adds_a_few_pages_to_the_log_not_one_per_trial(
    store: Store,
) -> None:
    """8 trials' reports in each commit: the WAL (and the checkpoints that copy it back) grows by
    the table's and the study index's last pages, not by a page per trial (the version-1 schema:
    5.9 pages here, ~12 in bench/report_latency.py, whose checkpoints then never caught up)."""
    wal = store.path.with_name(store.path.name + "-wal")
    await store.write(report_op("s1", 0, 1, 0.0, {"loss": 1.0}, Decision.CONTINUE, 0.0))
    start = wal.stat().st_size
    commits = 200
    for step in range(1, commits + 1):
        await store.write(
            *(
                report_op("s1", trial, 1, float(step), {"loss": 1.0 / step}, "CONTINUE", step)
                for trial in range(8)
            )
        )
    pages = (wal.stat().st_size - start) / 4096 / commits
    assert pages <= 3.5, f"{pages:.1f} pages of WAL per commit"
    assert len(store.load_reports("s1")) == 1 + 8 * commits


def test_checkpoints_wait_for_a_pause_in_the_commits_or_a_full_log() -> None:
    cap = 64 * 1024 * 1024
    assert not checkpoint_due(10, 10, 10, 0)  # nothing new since the last one
    assert checkpoint_due(10, 10, 4, 0)  # new commits, none in the last tick
    assert not checkpoint_due(12, 10, 4, cap - 1)  # commits still flowing
    assert checkpoint_due(12, 10, 4, cap)  # flowing, but the log is full


@pytest.mark.anyio
async def test_a_quiet_store_copies_its_log_into_the_database(store: Store) -> None:
    size = store.path.stat().st_size
    for step in range(50):
        await store.write(report_op("s1", 0, 1, float(step), {"loss": 1.0}, "CONTINUE", step))
    with anyio.fail_after(10):
        while store.path.stat().st_size == size:  # the checkpointer's work, seen from outside
            await anyio.sleep(0.01)
    assert len(store.load_reports("s1")) == 50


def test_newer_schema_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(HpodError, match="schema version 99"):
        Store.open(tmp_path)


def test_not_a_database_refused(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HpodError, match="not a usable hpod database"):
        Store.open(tmp_path)


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("fsync", 2)])
def test_durability_setting(tmp_path: Path, durability, level: int) -> None:
    with Store.open(tmp_path, durability=durability) as s:
        got = s._writer.execute("PRAGMA synchronous").fetchone()[0]
    assert got == level


def test_bad_durability_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store.open(tmp_path, durability="sometimes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- updates


def test_unknown_update_column_rejected() -> None:
    with pytest.raises(ValueError, match="cannot update bogus"):
        update_trial_op("s1", 0, bogus=1)
    with pytest.raises(ValueError, match="cannot update state; DROP TABLE studies"):
        update_study_op("s1", **{"state; DROP TABLE studies": "x"})
    with pytest.raises(ValueError, match="cannot update id"):
        update_study_op("s1", id="s2")
    with pytest.raises(ValueError, match="at least one field"):
        update_trial_op("s1", 0)


@pytest.mark.anyio
async def test_unknown_update_column_rejected_async(store: Store) -> None:
    with pytest.raises(ValueError, match="cannot update nope"):
        await store.update_study("s1", nope=1)


@pytest.mark.anyio
async def test_update_of_missing_row_fails(store: Store) -> None:
    with pytest.raises(NotFound, match="trial 5 of study s1"):
        await store.update_trial("s1", 5, state=TrialState.RUNNING)


# ---------------------------------------------------------------------------- group commit


@pytest.mark.anyio
async def test_group_commit(store: Store) -> None:
    n = 300
    before = store.commits
    done: list[int] = []

    async def one(i: int) -> None:
        await store.add_report("s1", i % 7, 1, float(i), {"i": i}, Decision.CONTINUE, float(i))
        done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    assert sorted(done) == list(range(n))
    assert count_rows(store.path, "reports") == n
    assert 0 < store.commits - before < n


@pytest.mark.anyio
async def test_write_is_atomic(store: Store) -> None:
    await store.write(insert_trial_op(trial_row()))
    with pytest.raises(sqlite3.IntegrityError):
        # The report is fine; the duplicate trial is not; neither may land.
        await store.write(
            report_op("s1", 0, 1, 1.0, {"a": 1.0}, Decision.CONTINUE, 1.0),
            insert_trial_op(trial_row()),
        )
    assert store.load_reports("s1") == []


async def write_in_one_batch(store: Store, jobs: list[tuple[Op, ...]]) -> list[Exception | None]:
    """Queue every job while the writer is held, so that they all land in one batch."""
    outcomes: dict[int, Exception | None] = {}
    submitted = 0

    async def one(i: int) -> None:
        nonlocal submitted
        submitted += 1  # write() queues before its first await, so this counts queued jobs
        try:
            await store.write(*jobs[i])
        except Exception as exc:
            outcomes[i] = exc
        else:
            outcomes[i] = None

    with store._writer_gate:
        async with anyio.create_task_group() as tg:
            for i in range(len(jobs)):
                tg.start_soon(one, i)
            with anyio.fail_after(10):
                while submitted < len(jobs):
                    await anyio.sleep(0.001)
            store._writer_gate.release()
            try:
                with anyio.fail_after(10):
                    while len(outcomes) < len(jobs):
                        await anyio.sleep(0.001)
            finally:
                store._writer_gate.acquire()
    return [outcomes[i] for i in range(len(jobs))]


def report_job(i: int) -> tuple[Op, ...]:
    return (
        report_op("s1", 0, 1, float(i), {"i": i}, Decision.CONTINUE, float(i)),
        event_op("s1", 0, "job", {"i": i}, float(i)),
    )


@pytest.mark.anyio
async def test_one_bad_op_fails_only_its_waiter(store: Store) -> None:
    await store.insert_trial(trial_row())
    before = store.commits
    jobs = [report_job(i) for i in range(10)]
    # A duplicate primary key after a good op: the whole job must go, and only it.
    jobs[5] = (*jobs[5], insert_trial_op(trial_row()))
    outcomes = await write_in_one_batch(store, jobs)

    assert isinstance(outcomes.pop(5), sqlite3.IntegrityError)
    assert outcomes == [None] * 9
    assert store.commits - before == 1  # savepoints: the good jobs still share one commit
    good = [i for i in range(10) if i != 5]
    assert sorted(r.at for r in store.load_reports("s1")) == [float(i) for i in good]
    assert sorted(e.data["i"] for e in store.load_events("s1")) == good


@pytest.mark.anyio
async def test_failed_transaction_retries_jobs_one_by_one(store: Store) -> None:
    before = store.commits
    jobs = [report_job(i) for i in range(6)]
    # Ending the transaction from inside a job breaks the whole batch, not just a statement.
    jobs[2] = (*jobs[2], Op("ROLLBACK", ()))
    outcomes = await write_in_one_batch(store, jobs)

    assert isinstance(outcomes.pop(2), sqlite3.Error)
    assert outcomes == [None] * 5
    assert store.commits - before == 5
    assert sorted(r.at for r in store.load_reports("s1")) == [0.0, 1.0, 3.0, 4.0, 5.0]


def test_write_sync_from_threads(store: Store) -> None:
    def worker(k: int) -> None:
        for i in range(20):
            store.write_sync(event_op(None, None, "t", {"k": k, "i": i}, 0.0))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load_events()) == 80


# ------------------------------------------------------------------------------ durability


@pytest.mark.anyio
async def test_acked_report_visible_to_another_process(store: Store) -> None:
    await store.add_report("s1", 0, 1, 1.0, {"val_acc": 0.9}, Decision.CONTINUE, 1.0)
    assert count_rows(store.path, "reports") == 1


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from hpod.daemon.store import Store

    async def main() -> None:
        store = Store.open(Path(sys.argv[1]))
        for i in range(100_000):
            await store.add_report("s1", 0, 1, float(i), {"i": i}, "CONTINUE", float(i))
            print(f"acked {i}", flush=True)

    asyncio.run(main())
    """
)


def test_sigkill_loses_no_acked_report(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    last = -1
    try:
        for line in child.stdout:
            last = int(line.split()[1])
            if last >= 200:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert last >= 200
    conn = sqlite3.connect(tmp_path / DB_NAME)
    acked = {row[0] for row in conn.execute("SELECT at FROM reports")}
    conn.close()
    assert {float(i) for i in range(last + 1)} <= acked


# ----------------------------------------------------------------------------------- close


def test_close_flushes_and_is_idempotent(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    done = threading.Event()

    def writer() -> None:
        s.write_sync(event_op(None, None, "last", {}, 0.0))
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    s.close()
    s.close()
    assert done.is_set()
    assert s.closed
    assert count_rows(tmp_path / DB_NAME, "events") == 1
    with pytest.raises(ShuttingDown, match="closed"):
        s.write_sync(event_op(None, None, "late", {}, 0.0))
    with pytest.raises(ShuttingDown, match="closed"):
        s.load_events()


@pytest.mark.anyio
async def test_async_write_after_close(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    with pytest.raises(HpodError, match="closed"):
        await s.add_event(None, None, "late", {}, 0.0)


def test_write_rejects_non_ops(store: Store) -> None:
    with pytest.raises(TypeError, match="Op"):
        store.write_sync("DELETE FROM studies")  # type: ignore[arg-type]


def test_reports_read_a_page_at_a_time_and_by_trial_are_the_ones_stored(store: Store) -> None:
    store.write_sync(insert_study_op(study_row()))
    ops = [
        report_op("s1", t, 1, float(e), {"loss": t + e / 10}, Decision.CONTINUE, 1.0)
        for e in range(1, 8)
        for t in range(5)
    ]
    store.write_sync(*ops)
    every = store.load_reports("s1")
    assert [r.id for r in store.iter_reports("s1", page=4)] == [r.id for r in every]
    assert store.report_counts("s1") == dict.fromkeys(range(5), 7)
    some = list(store.iter_reports_of("s1", [3, 1], chunk=1))
    assert [(r.trial_id, r.resource) for r in some] == [
        *((3, float(e)) for e in range(1, 8)),
        *((1, float(e)) for e in range(1, 8)),
    ]


# --- a post to an idle writer ------------------------------------------------------------------


def test_a_post_to_an_idle_store_is_committed_and_settled_before_it_returns(
    tmp_path: Path,
) -> None:
    # Handing a report to the writer thread cost more than its commit (bench/results/scale.md):
    # with nothing queued, the caller's thread commits it and settles it at once.
    store = Store.open(tmp_path)
    try:
        store.write_sync(insert_study_op(study_row("s1")))
        settled: list[tuple[BaseException | None, str]] = []
        store.post(
            report_op("s1", 0, 1, 1.0, {"loss": 0.5}, Decision.CONTINUE, 1.0),
            then=lambda exc: settled.append((exc, threading.current_thread().name)),
        )
        assert settled == [(None, threading.current_thread().name)]
        assert len(store.load_reports("s1")) == 1
    finally:
        store.close()


def test_posts_commit_in_their_order_whichever_thread_commits_them(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        store.write_sync(insert_study_op(study_row("s1")))
        order: list[int] = []
        for round_ in range(30):
            with store._writer_gate:  # the writer busy: the first post waits in the queue
                store.post(
                    report_op("s1", 0, 1, 2.0 * round_, {"i": 0}, Decision.CONTINUE, 1.0),
                    then=lambda exc: order.append(0),
                )
            # The writer may not have settled it yet: this one must not go before it.
            store.post(
                report_op("s1", 0, 1, 2.0 * round_ + 1, {"i": 1}, Decision.CONTINUE, 1.0),
                then=lambda exc: order.append(1),
            )
            store.write_sync(event_op("s1", None, "sync", None, 1.0))  # both done now
        assert order == [0, 1] * 30
    finally:
        store.close()


def test_with_fsync_durability_the_writer_thread_commits_every_post(tmp_path: Path) -> None:
    # A commit that flushes the disk would hold the daemon's loop: never on the caller's thread.
    store = Store.open(tmp_path, durability="fsync")
    try:
        store.write_sync(insert_study_op(study_row("s1")))
        done = threading.Event()
        threads: list[str] = []

        def then(exc: BaseException | None) -> None:
            threads.append(threading.current_thread().name)
            done.set()

        store.post(report_op("s1", 0, 1, 1.0, {"loss": 0.5}, Decision.CONTINUE, 1.0), then=then)
        assert done.wait(10)
        assert threads == ["hpod-store-writer"]
    finally:
        store.close()
