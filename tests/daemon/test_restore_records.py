"""The trial records a restarting daemon builds from its store: a run whose exit was never written
(the daemon was killed) ends as the last answer it acknowledged says, and the metric names every
report carried come back with the trial."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpod.core.states import Decision, TrialState
from hpod.core.study import Study
from hpod.daemon.store import Store, TrialRow
from hpod.daemon.studies import Studies
from tests.core.test_restore import ASHA, spec


@pytest.mark.anyio
# A shutdown answers PAUSE ("you will be resumed"); an hpod before issue 13 stored a STOP.
@pytest.mark.parametrize("shutdown_answer", [Decision.PAUSE, Decision.STOP])
async def test_runs_whose_exit_was_lost_are_restored_as_their_last_answer_says(
    tmp_path: Path, shutdown_answer: Decision
) -> None:
    live = Study.new(spec(ASHA))
    for _ in range(4):
        assert live.next_launch(0.0) is not None

    with Store.open(tmp_path) as store:

        async def report(tid: int, metrics: dict[str, Any], *, shutdown: bool = False) -> None:
            # As the daemon's trial.report method stores each answer.
            out = live.on_report(tid, metrics, 0.0, force=shutdown_answer if shutdown else None)
            await store.add_report(
                "s1",
                tid,
                live.trials[tid].runs,
                out.resource,
                metrics,
                out.decision,
                0.0,
                counted=out.counted,
                interrupting=out.forced and shutdown,
            )

        await report(0, {"step": 1, "loss": 0.5})  # PAUSE, and its exit is recorded
        live.on_exit(0, 0, 0.0)
        await report(1, {"step": 1, "loss": 0.2})  # PAUSE, then the daemon is killed
        await report(2, {"step": 1, "loss": 0.9}, shutdown=True)  # the shutdown's answer
        await report(3, {"step": 1, "los": 0.4})  # a misspelt objective: PAUSE at the rung
        rows = [
            TrialRow(
                study_id="s1",
                trial_id=r.trial_id,
                config=r.config,
                state=r.state,  # running for 1, 2 and 3: their exits never reached the store
                token="t",
                bracket=r.bracket,
                resume_from=r.resume_from,
                max_resource=r.max_resource,
                runs=r.runs,
                created_at=0.0,
            )
            for r in live.records()
        ]
        # Only its store is read: a stand-in for the rest of the service.
        records, _ = Studies._trial_records(SimpleNamespace(store=store), live.spec, "s1", rows)

    assert [r.state for r in records] == [TrialState.PAUSED] + [TrialState.RUNNING] * 3
    assert [(r.last_decision, r.interrupting) for r in records] == [
        (Decision.PAUSE, False),
        (Decision.PAUSE, False),
        (shutdown_answer, True),
        (Decision.PAUSE, False),
    ]
    assert records[3].reported_keys == ("los", "step")
    restored = Study.restore(live.spec, records)
    # 1 paused at its rung; 2 had reached its rung when the shutdown stopped it: paused too.
    assert [restored.record(i).state for i in range(4)] == [
        TrialState.PAUSED,
        TrialState.PAUSED,
        TrialState.PAUSED,
        TrialState.FAILED,
    ]
    assert (restored.record(3).error or "").startswith(
        "exited without reporting 'loss'; it reported: los, step"
    )
    # Three at rung 1: the best (trial 1) is promoted from its checkpoint, not relaunched to 1.
    promo = restored.next_launch(0.0)
    assert promo is not None
    assert (promo.trial_id, promo.resume_from, promo.max_resource) == (1, 1, 3)
