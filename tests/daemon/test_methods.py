"""Every wire method of :class:`Methods`, alone, against fake services (tests/daemon/fakes.py).

The studies are real core objects built from a spec; the studies and trials services, the pool,
the fitter and the store are fakes that record what the methods asked of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod import __version__
from hpod.core.states import Decision, StudyState, TrialState
from hpod.daemon.config import DaemonConfig
from hpod.daemon.methods import Methods
from hpod.daemon.peercred import Credentials
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.server import Peer
from hpod.daemon.store import Op
from hpod.errors import InvalidParams, NotFound, PermissionDenied, StoreFull, TokenRejected
from tests.daemon.fakes import (
    FakeAnswer,
    FakeFitter,
    FakePool,
    FakeStore,
    FakeStudies,
    FakeTrials,
    make_study,
    spec_toml,
    start_run,
)

pytestmark = pytest.mark.anyio

OWNER = 1000
ADMIN = 4242


def peer(uid: int = OWNER) -> Peer:
    return Peer(Credentials(pid=1, uid=uid, gid=uid))


@dataclass
class World:
    methods: Methods
    studies: FakeStudies
    trials: FakeTrials
    fitter: FakeFitter
    study: StudyRuntime

    async def call(self, method: str, params: dict[str, Any], uid: int = OWNER) -> Any:
        return await self.methods.table()[method](peer(uid), params)

    def report(self, params: dict[str, Any], uid: int = OWNER) -> FakeAnswer:
        answer = FakeAnswer()
        self.methods.answering()["trial.report"](peer(uid), params, answer)  # type: ignore[arg-type]
        return answer


@pytest.fixture
def world(tmp_path: Path) -> World:
    study = make_study(tmp_path, owner=OWNER)
    studies, trials, fitter = FakeStudies(study), FakeTrials(), FakeFitter()
    config = DaemonConfig.defaults().with_overrides(admins=[ADMIN])
    methods = Methods(
        studies,  # type: ignore[arg-type]
        trials,  # type: ignore[arg-type]
        FakePool(),  # type: ignore[arg-type]
        fitter,  # type: ignore[arg-type]
        config,
        started_at=0.0,
    )
    return World(methods, studies, trials, fitter, study)


def test_the_tables_name_every_wire_method(world: World) -> None:
    assert set(world.methods.table()) == {
        "ping", "submit", "studies", "study", "trials", "best", "stop", "wait", "logs",
        "report", "gpus", "trial.oom",
        "set", "top", "trial",  # changing a running study, and reading it (issue 14)
        "ask", "tell",  # trials of an external study: handed out, told (issue 14)
        "events", "decisions",  # the event stream, the decision records (issue 14)
        "curves",  # the learning curves, paged (issue 16)
    }  # fmt: skip
    assert set(world.methods.answering()) == {"trial.report"}


# -- control methods ------------------------------------------------------------------------------


async def test_ping_reports_the_pool_and_the_fit_workers(world: World) -> None:
    out = await world.call("ping", {})
    assert out["pong"] is True
    assert out["version"] == __version__
    assert (out["slots"], out["free_slots"]) == (4, 3)
    assert out["fit_workers_started"] == 2
    assert out["uptime"] > 0


async def test_gpus_is_the_pools_view(world: World) -> None:
    assert await world.call("gpus", {}) == FakePool().view()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"base_dir": "/tmp"}, "'spec'"),
        ({"spec": "", "base_dir": "/tmp"}, "'spec'"),
        ({"spec": "x"}, "'base_dir'"),
        ({"spec": "x", "base_dir": 3}, "'base_dir'"),
    ],
)
async def test_submit_names_a_missing_or_empty_parameter(
    world: World, params: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidParams, match=named):
        await world.call("submit", params)
    assert world.studies.admitted == []


async def test_submit_admits_the_spec_as_the_callers_uid(world: World, tmp_path: Path) -> None:
    text = spec_toml("fresh")
    out = await world.call("submit", {"spec": text, "base_dir": str(tmp_path)}, uid=77)
    assert world.studies.admitted == [(text, tmp_path, 77)]
    assert out == {"study": "fresh-2", "name": "fresh"}


async def test_submit_hands_the_callers_environment_to_the_study_and_none_from_an_old_client(
    world: World, tmp_path: Path
) -> None:
    env = {"PATH": "/home/u/venv/bin:/usr/bin", "VIRTUAL_ENV": "/home/u/venv"}
    params = {"spec": spec_toml("fresh"), "base_dir": str(tmp_path)}
    await world.call("submit", {**params, "env": env}, uid=77)
    await world.call("submit", params, uid=77)  # an old client: the daemon's own, as before
    assert world.studies.admitted_env == [env, None]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (["PATH=/bin"], "must be an object of NAME: value strings, not a list"),
        ("PATH=/bin", "not a str"),
        ({"PATH": 3}, "PATH: the value must be a string, not a int"),
        ({"PATH": None}, "PATH: the value must be a string"),
        ({"1PATH": "/bin"}, "'1PATH' is not a variable name"),
        ({"A=B": "/bin"}, "'A=B' is not a variable name"),
        ({"": "x"}, "'' is not a variable name"),
        ({"X" * 300: "x"}, "a long name is not a variable name"),
        ({"PATH": "/bin\0/evil"}, "PATH: the value holds a NUL character"),
        ({"PATH": "x" * (128 * 1024 + 1)}, "PATH: the value has 131073 characters"),
        ({f"V{i}": "x" for i in range(257)}, "holds 257 variables; at most 256"),
        ({f"V{i}": "x" * 100_000 for i in range(3)}, "characters in all; at most 262144"),
    ],
)
async def test_submit_refuses_an_env_that_is_not_a_small_object_of_names_and_strings(
    world: World, tmp_path: Path, env: Any, says: str
) -> None:
    params = {"spec": spec_toml("fresh"), "base_dir": str(tmp_path), "env": env}
    with pytest.raises(InvalidParams, match="parameter 'env'") as refused:
        await world.call("submit", params)
    assert says in refused.value.message
    assert world.studies.admitted == []


async def test_studies_lists_every_summary_in_submission_order(
    world: World, tmp_path: Path
) -> None:
    later = make_study(tmp_path, name="later", seq=5)
    world.studies.studies = {later.id: later, world.study.id: world.study}
    out = await world.call("studies", {})
    assert [s["study"] for s in out] == ["s-1", "later-5"]
    assert out[0] == world.study.summary()


@pytest.mark.parametrize("method", ["study", "trials", "best", "stop", "wait", "logs", "report"])
async def test_a_study_method_names_its_study_parameter(world: World, method: str) -> None:
    with pytest.raises(InvalidParams, match="'study'"):
        await world.call(method, {"trial": 0})
    with pytest.raises(InvalidParams, match="'study'"):
        await world.call(method, {"study": 12, "trial": 0})


@pytest.mark.parametrize("method", ["study", "trials", "best", "stop", "wait", "logs", "report"])
async def test_a_study_method_answers_not_found_for_an_unknown_study(
    world: World, method: str
) -> None:
    with pytest.raises(NotFound, match="nope"):
        await world.call(method, {"study": "nope", "trial": 0})


async def test_study_shows_the_spec_the_runs_and_the_failures_with_their_stderr(
    world: World,
) -> None:
    study = world.study
    run = start_run(study)
    failed = start_run(study)
    study.runs.pop(failed.trial_id)
    study.engine.on_exit(failed.trial_id, 2, 0.0, "exited with status 2")
    folder = world.studies.trial_dir(study, failed.trial_id)
    folder.mkdir(parents=True)
    (folder / "stderr.log").write_text("Traceback\nValueError: bad x\n")

    out = await world.call("study", {"study": study.id})
    assert out["study"] == study.id
    assert out["spec"] == study.spec.to_dict()
    assert out["running"] == [run.trial_id]
    assert out["failures"] == [
        {
            "trial": failed.trial_id,
            "error": "exited with status 2",
            "stderr_tail": "Traceback\nValueError: bad x",
        }
    ]
    assert out["limits"]["max_trials"].startswith("2 of 4")
    assert out["decisions"]["fit_yields_to_reports"] is False


async def test_study_may_be_named_by_what_the_studies_service_resolves(world: World) -> None:
    out = await world.call("study", {"study": "s-1"})
    assert out["name"] == "s"


async def test_trials_lists_a_view_of_every_trial(world: World) -> None:
    first = start_run(world.study)
    world.study.engine.on_report(first.trial_id, {"epoch": 1, "loss": 0.5}, 0.0)
    start_run(world.study)
    out = await world.call("trials", {"study": world.study.id})
    assert [(t["trial"], t["state"]) for t in out] == [(0, "running"), (1, "running")]
    assert out[0]["objective"] == 0.5
    assert out[1]["objective"] is None


async def test_trials_pages_from_after_with_next_until_the_last(world: World) -> None:
    for _ in range(4):  # the fake study's max_trials
        start_run(world.study)
    sid = world.study.id
    first = await world.call("trials", {"study": sid, "limit": 2})
    assert [t["trial"] for t in first["trials"]] == [0, 1]
    assert first["next"] == 2
    second = await world.call("trials", {"study": sid, "after": 2, "limit": 1})
    assert [t["trial"] for t in second["trials"]] == [2]
    last = await world.call("trials", {"study": sid, "after": second["next"]})
    assert [t["trial"] for t in last["trials"]] == [3]
    assert last["next"] is None
    past = await world.call("trials", {"study": sid, "after": 99})
    assert past == {"trials": [], "next": None}
    with pytest.raises(InvalidParams, match="'after' must be a cursor"):
        await world.call("trials", {"study": sid, "after": -1})
    with pytest.raises(InvalidParams, match="'limit'"):
        await world.call("trials", {"study": sid, "limit": 0})


async def test_a_trials_page_stops_at_its_byte_budget(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpod.daemon import views

    for _ in range(4):
        start_run(world.study)
    one = len(json.dumps((await world.call("trials", {"study": world.study.id}))[0]))
    monkeypatch.setattr(views, "PAGE_BYTES", 2 * one)
    page = await world.call("trials", {"study": world.study.id, "after": 0})
    assert [t["trial"] for t in page["trials"]] == [0, 1]
    assert page["next"] == 2


async def test_best_is_not_found_until_a_trial_reports_the_metric(world: World) -> None:
    run = start_run(world.study)
    with pytest.raises(NotFound, match=r"no result yet.*'loss'"):
        await world.call("best", {"study": world.study.id})
    world.study.engine.on_report(run.trial_id, {"epoch": 1, "loss": 0.25}, 0.0)
    out = await world.call("best", {"study": world.study.id})
    assert (out["study"], out["trial"], out["objective"]) == (world.study.id, 0, 0.25)


@pytest.mark.parametrize("uid", [OWNER, 0, ADMIN])
async def test_stop_is_allowed_for_the_owner_root_and_an_admin(world: World, uid: int) -> None:
    out = await world.call("stop", {"study": world.study.id}, uid=uid)
    assert out == {"study": world.study.id, "state": "stopped"}
    assert world.studies.ended == [
        (world.study, StudyState.STOPPED, f"stopped by uid {uid}", StopReason.USER)
    ]


async def test_stop_by_anyone_else_is_denied_and_ends_nothing(world: World) -> None:
    with pytest.raises(PermissionDenied, match=f"belongs to uid {OWNER}"):
        await world.call("stop", {"study": world.study.id}, uid=2000)
    assert world.studies.ended == []
    assert world.study.engine.state is StudyState.RUNNING


async def test_wait_with_a_timeout_returns_the_summary_of_a_study_still_running(
    world: World,
) -> None:
    with anyio.fail_after(5):
        out = await world.call("wait", {"study": world.study.id, "timeout": 0.05})
    assert out == world.study.summary()
    assert out["state"] == "running"


async def test_wait_returns_once_the_study_is_done(world: World) -> None:
    out: list[Any] = []

    async def waiter() -> None:
        out.append(await world.call("wait", {"study": world.study.id}))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert out == []
            world.study.engine.end(StudyState.STOPPED, "test")
            world.study.done.set()
    assert out[0]["state"] == "stopped"


@pytest.mark.parametrize("timeout", ["5", True, [1]])
async def test_wait_names_a_timeout_that_is_not_a_number(world: World, timeout: Any) -> None:
    with pytest.raises(InvalidParams, match="'timeout'"):
        await world.call("wait", {"study": world.study.id, "timeout": timeout})


async def test_report_is_the_studies_services_report(world: World) -> None:
    world.studies.report_rows = [{"trial": 0, "objective": 1.0}]
    out = await world.call("report", {"study": world.study.id})
    assert out["per_trial"] == [{"trial": 0, "objective": 1.0}]
    assert out["per_trial_total"] == 1
    assert world.studies.reported == [world.study]


async def test_a_report_of_many_trials_answers_the_rows_of_the_best(world: World) -> None:
    # 3,000 trials (over the 1 MiB line with every row): the best 1,000 (lowest loss here), in
    # trial order, and how many there are; a trial without a value is never among them.
    rows = [{"trial": i, "objective": float((i * 7919) % 3000)} for i in range(3000)]
    rows.append({"trial": 3000, "objective": None})
    world.studies.report_rows = rows
    out = await world.call("report", {"study": world.study.id})
    assert out["per_trial_total"] == 3001
    got = out["per_trial"]
    assert len(got) == 1000
    assert [r["trial"] for r in got] == sorted(r["trial"] for r in got)
    assert max(r["objective"] for r in got) == 999.0


async def test_logs_tails_the_chosen_stream_of_a_trial(world: World) -> None:
    run = start_run(world.study)
    folder = world.studies.trial_dir(world.study, run.trial_id)
    folder.mkdir(parents=True)
    (folder / "stdout.log").write_text("".join(f"line {i}\n" for i in range(10)))
    out = await world.call(
        "logs", {"study": world.study.id, "trial": "0", "stream": "stdout", "tail": 2}
    )
    assert out == {"text": "line 8\nline 9"}
    # No log yet is an empty text, not an error.
    assert await world.call("logs", {"study": world.study.id, "trial": 0}) == {"text": ""}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({}, "'trial'"),
        ({"trial": "one"}, "'trial'"),
        ({"trial": True}, "'trial'"),
        ({"trial": 0, "stream": "stdin"}, "'stream'"),
        ({"trial": 0, "tail": 0}, "'tail'"),
        ({"trial": 0, "tail": "5"}, "'tail'"),
    ],
)
async def test_logs_names_a_bad_parameter(world: World, extra: dict[str, Any], named: str) -> None:
    start_run(world.study)
    with pytest.raises(InvalidParams, match=named):
        await world.call("logs", {"study": world.study.id, **extra})


async def test_logs_of_an_unknown_trial_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.call("logs", {"study": world.study.id, "trial": 9})


# -- trial methods --------------------------------------------------------------------------------


def trial_params(study: StudyRuntime, trial: int, token: Any, **extra: Any) -> dict[str, Any]:
    return {"study": study.id, "trial": trial, "token": token, **extra}


async def test_a_wrong_token_gets_the_same_answer_whatever_part_is_wrong(world: World) -> None:
    study = world.study
    run = start_run(study)
    tid = run.trial_id
    metrics = {"metrics": {"epoch": 1, "loss": 0.5}}
    cases: list[dict[str, Any]] = [
        trial_params(study, tid, "not-the-token", **metrics),
        trial_params(study, tid, run.token.upper() + "0", **metrics),
        trial_params(study, tid, 12345, **metrics),
        {"study": study.id, "trial": tid, **metrics},  # no token at all
    ]
    messages = []
    for params in cases:
        with pytest.raises(TokenRejected) as exc:
            world.report(params)
        messages.append(str(exc.value))
        with pytest.raises(TokenRejected) as exc:
            await world.call("trial.oom", params)
        messages.append(str(exc.value))
    # The right token, but the run has ended; then the study is gone.
    study.runs.pop(tid)
    with pytest.raises(TokenRejected) as exc:
        world.report(trial_params(study, tid, run.token, **metrics))
    messages.append(str(exc.value))
    world.studies.studies.clear()
    with pytest.raises(TokenRejected) as exc:
        await world.call("trial.oom", trial_params(study, tid, run.token))
    messages.append(str(exc.value))
    assert len(set(messages)) == 1, messages
    assert f"{study.id}/{tid}" in messages[0]
    assert world.studies.store.posts == []
    assert world.studies.store.events == []


@pytest.mark.parametrize(
    ("params", "named"), [({"trial": 0}, "'study'"), ({"study": "s-1"}, "'trial'")]
)
async def test_a_trial_call_names_a_missing_study_or_trial(
    world: World, params: dict[str, Any], named: str
) -> None:
    start_run(world.study)
    with pytest.raises(InvalidParams, match=named):
        world.report({**params, "token": "t", "metrics": {"loss": 1}})
    with pytest.raises(InvalidParams, match=named):
        await world.call("trial.oom", {**params, "token": "t"})


@pytest.mark.parametrize("metrics", [None, {}, [1, 2], "loss=1"])
async def test_a_report_without_metrics_is_refused(world: World, metrics: Any) -> None:
    run = start_run(world.study)
    with pytest.raises(InvalidParams, match="'metrics'"):
        world.report(trial_params(world.study, run.trial_id, run.token, metrics=metrics))
    assert world.studies.store.posts == []


async def test_a_report_is_answered_once_stored_and_handed_to_the_trials_service(
    world: World,
) -> None:
    run = start_run(world.study)
    answer = world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 1, "loss": 0.5})
    )
    assert answer.result == {"decision": "CONTINUE"}
    assert answer.settled == [None]
    assert len(world.studies.store.posts) == 1
    assert world.fitter.reports == 1
    assert world.fitter.pokes == 0  # a random searcher: no model to refit
    [(study, got_run, outcome)] = world.trials.after
    assert (study, got_run) == (world.study, run)
    assert (outcome.decision, outcome.resource, outcome.counted) == (Decision.CONTINUE, 1.0, True)
    assert world.study.engine.record(run.trial_id).curve == ((1.0, 0.5),)


async def test_a_report_of_a_modeled_study_pokes_the_fitter(world: World) -> None:
    run = start_run(world.study)
    world.fitter.studies[world.study.id] = object()
    world.report(trial_params(world.study, run.trial_id, run.token, metrics={"loss": 0.5}))
    assert world.fitter.pokes == 1


def _interrupting(op: Op) -> bool:
    """Whether a report op records its answer as a shutdown's (report_op's ninth column)."""
    assert op.sql.startswith("INSERT INTO reports")
    return bool(op.params[8])


@pytest.mark.parametrize(
    ("reason", "decision"),
    [
        (StopReason.LIMIT, Decision.STOP),
        (StopReason.USER, Decision.STOP),
        # The daemon stops: "save your checkpoint and exit, you will be resumed" (issue 13).
        (StopReason.SHUTDOWN, Decision.PAUSE),
    ],
)
async def test_a_report_of_a_run_the_daemon_is_stopping_is_answered_by_why(
    world: World, reason: StopReason, decision: Decision
) -> None:
    run = start_run(world.study)
    run.request_stop(reason, math.inf)
    answer = world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 1, "loss": 0.5})
    )
    assert answer.result == {"decision": decision.value}
    assert world.trials.after[0][2].decision is decision
    [(op, *_)] = world.studies.store.posts  # the report, then its events
    assert _interrupting(op) is (reason is StopReason.SHUTDOWN)


async def test_a_report_while_the_daemon_stops_accepting_is_answered_pause(world: World) -> None:
    run = start_run(world.study)
    world.studies.accepting = False
    answer = world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 1, "loss": 0.5})
    )
    assert answer.result == {"decision": "PAUSE"}
    [(op, *_)] = world.studies.store.posts  # the report, then its events
    assert _interrupting(op)
    # A pause that interrupts: the trial is not ended by it, the restart resumes it.
    assert world.study.engine.trials[run.trial_id].ending is None


async def test_a_report_after_a_pause_answer_is_not_forced(world: World) -> None:
    """A run merely waiting out a PAUSE/STOP answer's grace period is asked the scheduler."""
    run = start_run(world.study)
    run.request_stop(StopReason.DECISION, math.inf)
    answer = world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 1, "loss": 0.5})
    )
    assert answer.result == {"decision": "CONTINUE"}


async def test_trial_oom_records_an_event_for_the_run(world: World) -> None:
    run = start_run(world.study)
    out = await world.call("trial.oom", trial_params(world.study, run.trial_id, run.token))
    assert out == {"recorded": True}
    assert world.studies.store.events == [(world.study.id, run.trial_id, "oom", {})]
    assert world.study.engine.record(run.trial_id).state is TrialState.RUNNING


async def test_a_report_too_deep_to_store_is_refused_before_the_study_counts_it(
    world: World,
) -> None:
    """The wire refuses such a line first (hpod.wire.MAX_DEPTH); the handler does not count on
    it: the metrics are serialized before the study sees them."""
    run = start_run(world.study)
    deep: Any = 0
    for _ in range(5000):  # built in a loop: deeper than any recursion can walk
        deep = {"a": deep}
    before = world.study.engine.record(run.trial_id)
    with pytest.raises(InvalidParams, match="metric 'deep' is nested too deeply"):
        world.report(
            trial_params(
                world.study,
                run.trial_id,
                run.token,
                metrics={"epoch": 1, "loss": 0.1, "deep": deep},
            )
        )
    assert world.study.engine.record(run.trial_id) == before
    assert world.studies.store.posts == []
    assert world.trials.after == []


# -- a re-sent report (issue 13: its answer lost with a killed daemon) ----------------------------


def _stamped(world: World, run: TrialRun, sender: Any, seq: Any, **metrics: Any) -> FakeAnswer:
    params = trial_params(world.study, run.trial_id, run.token, metrics=metrics or {"loss": 0.5})
    return world.report({**params, "sender": sender, "seq": seq})


def _stored_stamp(op: Op) -> tuple[Any, Any]:
    """The (sender, seq) a report op stores: its last two parameters."""
    assert op.sql.startswith("INSERT INTO reports")
    return op.params[-2], op.params[-1]


async def test_a_report_stores_its_sender_and_seq_and_they_become_the_runs_last(
    world: World,
) -> None:
    run = start_run(world.study)
    answer = _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    assert answer.result == {"decision": "CONTINUE"}
    [(op, *_)] = world.studies.store.posts  # the report, then its events
    assert _stored_stamp(op) == ("77-0badcafe", 1)
    assert (run.last_sender, run.last_seq, run.last_answer) == (
        "77-0badcafe",
        1,
        Decision.CONTINUE,
    )


@pytest.mark.parametrize("reason", [None, StopReason.LIMIT])
async def test_a_re_sent_report_is_answered_the_first_answer_and_counted_once(
    world: World, reason: StopReason | None
) -> None:
    run = start_run(world.study)
    if reason is not None:
        run.request_stop(reason, math.inf)
    first = _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    before = world.study.engine.record(run.trial_id)
    again = _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    assert again.result == {**first.result, "repeat": True}
    assert again.settled == [None]  # answered at once: the first is durable already
    assert len(world.studies.store.posts) == 1  # stored nothing
    assert world.fitter.reports == 1  # counted nothing
    assert len(world.trials.after) == 1
    assert world.study.engine.record(run.trial_id) == before


async def test_an_older_seq_of_the_same_sender_is_a_re_send_too(world: World) -> None:
    run = start_run(world.study)
    _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    _stamped(world, run, "77-0badcafe", 2, epoch=2, loss=0.4)
    old = _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    assert old.result == {"decision": "CONTINUE", "repeat": True}
    # A new seq, or the same seq from another sender (a forked child), is a new report.
    _stamped(world, run, "77-0badcafe", 3, epoch=3, loss=0.3)
    _stamped(world, run, "78-0badcafe", 1, epoch=3, loss=0.2)
    stamps = [_stored_stamp(op) for (op, *_) in world.studies.store.posts]
    assert stamps == [
        ("77-0badcafe", 1),
        ("77-0badcafe", 2),
        ("77-0badcafe", 3),
        ("78-0badcafe", 1),
    ]
    assert world.study.engine.record(run.trial_id).curve == ((1.0, 0.5), (2.0, 0.4), (3.0, 0.3))


async def test_an_adopted_run_answers_a_re_send_of_its_last_stored_report(world: World) -> None:
    """The lead's adoption sets last_* from the store's last report of the run: the report a
    killed daemon committed but never answered is answered now, not counted again."""
    run = start_run(world.study)
    run.last_sender, run.last_seq, run.last_answer = "9-12345678", 5, Decision.PAUSE
    answer = _stamped(world, run, "9-12345678", 5, epoch=5, loss=0.1)
    assert answer.result == {"decision": "PAUSE", "repeat": True}
    assert world.studies.store.posts == []
    assert world.study.engine.record(run.trial_id).curve == ()
    nxt = _stamped(world, run, "9-12345678", 6, epoch=1, loss=0.1)
    assert nxt.result == {"decision": "CONTINUE"}
    assert len(world.studies.store.posts) == 1


async def test_a_report_without_sender_and_seq_works_as_before(world: World) -> None:
    run = start_run(world.study)
    for epoch in (1, 1):  # an old reporter's re-send is a new report: nothing to tell it by
        answer = world.report(
            trial_params(world.study, run.trial_id, run.token, metrics={"epoch": epoch})
        )
        assert answer.result == {"decision": "CONTINUE"}
    assert [_stored_stamp(op) for (op, *_) in world.studies.store.posts] == [(None, None)] * 2
    assert (run.last_sender, run.last_seq, run.last_answer) == (None, None, None)


@pytest.mark.parametrize(
    ("sender", "seq", "named"),
    [
        (3, 1, "'sender'"),
        ("", 1, "'sender'"),
        ("x" * 65, 1, "'sender'"),
        ("77-0badcafe", True, "'seq'"),
        ("77-0badcafe", -1, "'seq'"),
        ("77-0badcafe", 1.0, "'seq'"),
        ("77-0badcafe", "1", "'seq'"),
    ],
)
async def test_a_bad_sender_or_seq_is_refused_by_name(
    world: World, sender: Any, seq: Any, named: str
) -> None:
    run = start_run(world.study)
    with pytest.raises(InvalidParams, match=named):
        _stamped(world, run, sender, seq, epoch=1, loss=0.5)
    assert world.studies.store.posts == []
    assert world.study.engine.record(run.trial_id).curve == ()


class _FailingStore(FakeStore):
    def post(self, *ops: Op, then: Any) -> None:
        self.posts.append(ops)
        then(StoreFull("the disk is full"))


async def test_a_report_whose_commit_fails_is_not_the_runs_last(world: World) -> None:
    run = start_run(world.study)
    _stamped(world, run, "77-0badcafe", 1, epoch=1, loss=0.5)
    world.studies.store = _FailingStore()
    failed = _stamped(world, run, "77-0badcafe", 2, epoch=2, loss=0.4)
    assert isinstance(failed.settled[0], StoreFull)
    with anyio.fail_after(5):  # the undo is queued to the loop, as from the writer thread
        while run.last_seq != 1:
            await anyio.sleep(0)
    assert (run.last_sender, run.last_answer) == ("77-0badcafe", Decision.CONTINUE)
    # Sent again, it is a new report, not a re-send of one the store never kept.
    world.studies.store = FakeStore()
    answer = _stamped(world, run, "77-0badcafe", 2, epoch=2, loss=0.4)
    assert answer.result == {"decision": "CONTINUE"}
    assert len(world.studies.store.posts) == 1


# -- the event stream and the decision records (issue 14) -----------------------------------------


async def test_a_report_carries_its_events_in_its_own_commit(world: World) -> None:
    run = start_run(world.study)
    world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 1, "loss": 1})
    )
    world.report(
        trial_params(world.study, run.trial_id, run.token, metrics={"epoch": 2, "loss": 2})
    )
    first, second = world.studies.store.posts
    # The first report: trial_reported, and new_best (the study had none).
    events = [op for op in first if op.sql.startswith("INSERT INTO events")]
    assert [op.params[3] for op in events] == ["trial_reported", "new_best"]
    assert all(op.wakes for op in events)
    # The second, within 0.5 s: no trial_reported; the best is still trial 0, at its new value.
    later = [op for op in second if op.sql.startswith("INSERT INTO events")]
    assert [op.params[3] for op in later] == ["new_best"]
