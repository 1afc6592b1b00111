"""A study of 10,000 finished trials read whole through the real CLI: `hpodctl trials` reads the
wire's `trials` a page at a time, so no answer is over the 1 MiB line cap (one list of every
trial was, from some 5,000 trials on: "line of 1048577 bytes is over the 1048576-byte cap")."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from hpod.core.states import Decision, StudyState, TrialState
from hpod.daemon import store as st

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 10_000

SPEC = """
name = "big"
command = ["python", "-c", "pass"]
[objective]
metric = "loss"
mode = "min"
resource = "epoch"
[space]
lr = { param_type = "loguniform", range = [0.0001, 0.1] }
optimizer = { param_type = "choice", range = ["adam", "sgd", "rmsprop"] }
[scheduler]
type = "fifo"
max_resource = 1
[limits]
max_trials = 10000
"""


def write_finished_study(state_dir: Any, n: int) -> str:
    """A completed study of ``n`` trials, one report each, written into a new store as the
    daemon would have stored it (the fast way to a big study: running it takes minutes)."""
    sid = "big-1"
    now = time.time()
    with st.Store.open(state_dir) as store:
        store.write_sync(
            st.insert_study_op(
                st.StudyRow(
                    id=sid,
                    seq=1,
                    name="big",
                    owner_uid=os.getuid(),
                    spec_toml=SPEC,
                    base_dir=str(state_dir),
                    state=StudyState.COMPLETED,
                    created_at=now,
                    ended_at=now,
                    end_reason="max_trials",
                )
            )
        )
        ops: list[st.Op] = []
        for i in range(n):
            config = {"lr": 10 ** (-4 + 3 * (i % 97) / 97), "optimizer": "adam"}
            ops.append(
                st.insert_trial_op(
                    st.TrialRow(
                        study_id=sid,
                        trial_id=i,
                        config=config,
                        state=TrialState.COMPLETED,
                        token="0" * 32,
                        max_resource=1.0,
                        runs=1,
                        created_at=now,
                        started_at=now,
                        ended_at=now,
                        exit_code=0,
                    )
                )
            )
            metrics = {"epoch": 1, "loss": 1.0 / (i + 1)}
            ops.append(st.report_op(sid, i, 1, 1.0, metrics, Decision.STOP, now))
        store.write_sync(*ops)
    return sid


@pytest.mark.timeout(240)
def test_hpodctl_trials_json_prints_every_trial_of_10000(daemon_factory: Any) -> None:
    d = daemon_factory(start=False)
    d.state_dir.mkdir()
    sid = write_finished_study(d.state_dir, N)
    d.start()
    res = d.ctl("trials", sid, "--json", check=True, timeout=180)
    trials = json.loads(res.stdout)
    assert [t["trial"] for t in trials] == list(range(N))
    assert {t["state"] for t in trials} == {"completed"}
    assert trials[-1]["objective"] == pytest.approx(1.0 / N)
    # The table too: a header and a row per trial.
    table = d.ctl("trials", sid, check=True, timeout=180)
    assert len(table.stdout.splitlines()) == N + 1
