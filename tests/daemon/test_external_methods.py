"""The wire methods `ask` and `tell` (hpod.daemon.external) alone, against the fakes of
tests/daemon/fakes.py; tests/e2e/test_ask_tell.py runs them against a real daemon."""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from hpod.daemon.config import DaemonConfig
from hpod.daemon.external import EXTERNAL_SLOT, final_metrics
from hpod.daemon.methods import Methods
from hpod.daemon.peercred import Credentials
from hpod.daemon.runtime import StopReason, StudyRuntime, TrialRun
from hpod.daemon.server import Peer
from hpod.errors import BadState, InvalidParams, PermissionDenied
from tests.daemon.fakes import (
    FakeAnswer,
    FakeFitter,
    FakePool,
    FakeStudies,
    FakeTrials,
    make_study,
    start_run,
)

pytestmark = pytest.mark.anyio

OWNER = 1000


def peer(uid: int = OWNER) -> Peer:
    return Peer(Credentials(pid=1, uid=uid, gid=uid))


class FakeExternal:
    """What `tell` asks of hpod.daemon.external.ExternalRuns: to end a run."""

    def __init__(self) -> None:
        self.finished: list[int] = []

    async def finish(self, run: TrialRun) -> None:
        self.finished.append(run.trial_id)


def _methods(tmp_path: Path) -> tuple[Methods, FakeStudies, StudyRuntime, FakeExternal]:
    study = make_study(tmp_path, owner=OWNER)
    studies, trials = FakeStudies(study), FakeTrials()
    external = FakeExternal()
    trials.external = external  # type: ignore[attr-defined]
    methods = Methods(
        studies,  # type: ignore[arg-type]
        trials,  # type: ignore[arg-type]
        FakePool(),  # type: ignore[arg-type]
        FakeFitter(),  # type: ignore[arg-type]
        DaemonConfig.defaults(),
        started_at=0.0,
    )
    return methods, studies, study, external


def _hand_out(study: StudyRuntime) -> TrialRun:
    """A run as `ask` makes one: on no slot of the pool, with a lease and a final event."""
    launch = study.engine.next_launch(time.time())
    assert launch is not None
    run = TrialRun(
        launch.trial_id,
        secrets.token_hex(8),
        launch,
        EXTERNAL_SLOT,
        time.monotonic(),
        external=True,
        lease_until=time.monotonic() + 60,
        told_final=anyio.Event(),
    )
    study.runs[launch.trial_id] = run
    return run


def _params(study: StudyRuntime, run: TrialRun, **extra: Any) -> dict[str, Any]:
    return {"study": study.id, "trial": run.trial_id, "token": run.token, **extra}


async def test_only_the_owner_root_or_an_admin_may_ask(tmp_path: Path) -> None:
    methods, _, study, _ = _methods(tmp_path)
    with pytest.raises(PermissionDenied):
        await methods.table()["ask"](peer(4321), {"study": study.id})


async def test_tell_is_for_handed_out_trials_only(tmp_path: Path) -> None:
    methods, _, study, external = _methods(tmp_path)
    local = start_run(study)
    tell = methods.table()["tell"]
    with pytest.raises(BadState, match="run by the daemon"):
        await tell(peer(), _params(study, local, final=True))
    run = _hand_out(study)
    with pytest.raises(InvalidParams, match="'final' must be true or false"):
        await tell(peer(), _params(study, run, final="yes"))
    with pytest.raises(InvalidParams, match="tell needs 'metrics'"):
        await tell(peer(), _params(study, run))
    assert external.finished == []


async def test_a_told_report_is_a_report_and_final_ends_the_run_after_it(tmp_path: Path) -> None:
    methods, studies, study, external = _methods(tmp_path)
    run = _hand_out(study)
    tell = methods.table()["tell"]
    got = await tell(peer(), _params(study, run, metrics={"epoch": 1, "loss": 0.5}))
    assert got == {"decision": "CONTINUE"}
    assert external.finished == []
    # A final value without the resource key stands at the level it was handed out for.
    got = await tell(peer(), _params(study, run, metrics={"loss": 0.25}, final=True))
    assert got == {"decision": "STOP", "final": True}
    assert external.finished == [run.trial_id]
    assert study.engine.trials[run.trial_id].curve == {1.0: 0.5, 3.0: 0.25}
    assert len(studies.store.posts) == 2  # two reports stored
    assert final_metrics(study, run, {"loss": 1.0, "epoch": 2}) == {"loss": 1.0, "epoch": 2}


async def test_a_handed_out_run_is_never_paused_for_a_shutdown(tmp_path: Path) -> None:
    """It outlives its daemon (the next one adopts it): a report while the daemon stops, or
    after its run was told the shutdown's stop, is answered by the scheduler, where a run the
    daemon started is answered PAUSE."""
    methods, studies, study, _ = _methods(tmp_path)
    local, run = start_run(study), _hand_out(study)
    studies.accepting = False
    run.request_stop(StopReason.SHUTDOWN, math.inf)
    report = methods.answering()["trial.report"]
    answers = [FakeAnswer(), FakeAnswer()]
    for r, answer in zip((local, run), answers, strict=True):
        report(peer(), _params(study, r, metrics={"epoch": 1, "loss": 0.5}), answer)  # type: ignore[arg-type]
    assert [a.result for a in answers] == [{"decision": "PAUSE"}, {"decision": "CONTINUE"}]
