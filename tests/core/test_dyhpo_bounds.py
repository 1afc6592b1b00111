"""DyHPO's work stays bounded as a study grows: the rows a fit trains on, the rows a decision
conditions on, the paused trials it scores."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpod.core.dyhpo import DyHPOScheduler, _Row, _Rows
from hpod.core.spec import StudySpec
from hpod.core.states import TrialState
from hpod.core.study import Study, TrialRecord

pytestmark = pytest.mark.timeout(120)

Array = np.ndarray[Any, Any]


def _row(level: float, loss: float) -> _Row:
    return _Row(np.zeros(1), level, {}, loss, np.zeros((2, 32)))


def test_rows_select_an_even_share_per_level_half_best_half_newest() -> None:
    store = _Rows()
    rng = random.Random(0)
    losses: dict[tuple[int, float], float] = {}
    for tid in range(100):
        levels = [1.0] + ([3.0] if tid % 3 == 0 else []) + ([9.0] if tid % 20 == 0 else [])
        for level in levels:
            losses[(tid, level)] = rng.random()
            store.add((tid, level), _row(level, losses[(tid, level)]))
    assert store.select(1000) == sorted(losses)  # under the cap: every row
    chosen = store.select(40)
    assert len(chosen) == 40
    by_level = {lv: [k for k in chosen if k[1] == lv] for lv in (1.0, 3.0, 9.0)}
    # 5 rows at 9 (all), then 35 left: 17 at 3, 18 at 1.
    assert [len(by_level[lv]) for lv in (9.0, 3.0, 1.0)] == [5, 17, 18]
    for level, quota in ((3.0, 17), (1.0, 18)):
        at = sorted((k for k in losses if k[1] == level), key=lambda k: (losses[k], k[0]))
        best = quota - quota // 2
        assert set(at[:best]) <= set(by_level[level])  # the best
        newest = max(k[0] for k in losses if k[1] == level)
        assert (newest, level) in by_level[level]  # and the newest
    # Range and best are kept as rows come and go.
    lo, span = store.scale()
    assert lo == min(losses.values())
    assert lo + span == pytest.approx(max(losses.values()))
    worst = max(losses, key=lambda k: losses[k])
    store.remove(worst)
    assert store.scale()[0] + store.scale()[1] < max(losses.values())
    assert store.best_at(9.0) == min(v for k, v in losses.items() if k[1] == 9.0)
    store.add((500, 27.0), _row(27.0, float("nan")))
    assert store.best_at(27.0) == store.scale()[0]  # no finite loss there: the best anywhere


class Recording:
    """A surrogate that records the size of each posterior it is asked for."""

    y_mean = 0.0
    y_std = 1.0

    def __init__(self) -> None:
        self.conditioned: list[int] = []
        self.scored: list[int] = []

    def predict(self, x: Array, budget: Array, curve: Array) -> tuple[Array, Array]:
        self.scored.append(len(x))
        return -budget, np.full(len(x), 0.1)

    def condition(self, x: Array, budget: Array, curve: Array, y: Array) -> Recording:
        self.conditioned.append(len(x))
        return self


def _big_study(n: int) -> Study:
    raw = {
        "name": "big",
        "command": ["true"],
        "objective": {"metric": "loss", "mode": "min", "resource": "epoch"},
        "space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
        "scheduler": {
            "type": "dyhpo",
            "min_resource": 1,
            "max_resource": 27,
            "reduction_factor": 3,
            "probability_sh": 0.0,
        },
        "searcher": {"type": "dyhpo"},
    }
    spec = StudySpec.from_mapping(raw, base_dir=Path("/tmp"))
    rng = random.Random(0)
    records = []
    for i in range(n):
        q = rng.random()
        top = 1.0 if q > 1 / 3 else 3.0 if q > 1 / 9 else 9.0
        records.append(
            TrialRecord(
                trial_id=i,
                config={"x": q},
                state=TrialState.PAUSED,
                bracket=0,
                resume_from=0.0 if top == 1.0 else top / 3,
                max_resource=top,
                runs=1,
                curve=tuple((float(e), q + 1.0 / e) for e in range(1, int(top) + 1)),
            )
        )
    return Study.restore(spec, records)


def test_a_big_study_fits_and_decides_on_a_bounded_share_of_its_rows() -> None:
    study = _big_study(3000)
    sched = study._scheduler
    assert isinstance(sched, DyHPOScheduler)
    request = study.wants_fit()
    assert request is not None
    assert len(sched._training_rows(study)) > 4000
    assert len(request.data["y"]) == sched.max_rows == 384
    model = Recording()
    study.install(request, model)
    launch = study.next_launch(0.0)
    assert launch is not None
    assert model.conditioned == [sched.condition_rows] == [256]
    # 32 paused trials per rung below max_resource, and the 256 candidates.
    assert model.scored == [3 * 32 + 256]
    # The model says the higher rungs are better: a promotion, and of one of the best paused.
    assert not launch.fresh
    assert launch.max_resource == 27.0
    best9 = sorted(
        (t for t in study.trials if t.max_resource == 9.0 and t.trial_id != launch.trial_id),
        key=lambda t: t.curve[9.0],
    )
    assert study.trials[launch.trial_id].curve[9.0] <= best9[31].curve[9.0]


def test_the_row_index_follows_the_study_as_the_full_walk_does() -> None:
    # Rows kept from the touched trials equal the rows a walk over every trial builds.
    study = _big_study(300)
    sched = study._scheduler
    assert isinstance(sched, DyHPOScheduler)
    request = study.wants_fit()
    assert request is not None
    study.install(request, Recording())
    for _ in range(20):
        launch = study.next_launch(0.0)
        assert launch is not None
        level = launch.resume_from + 1
        while True:
            out = study.on_report(launch.trial_id, {"loss": 0.5 / level, "epoch": level}, 0.0)
            if out.decision.value != "CONTINUE":
                break
            level += 1
        study.on_exit(launch.trial_id, 0, 0.0)
    kept = [dataclasses.astuple(r)[1:4] for r in sched._training_rows(study)]
    walked = DyHPOScheduler(sched.space, [1, 3, 9], 27, 3)
    fresh = [dataclasses.astuple(r)[1:4] for r in walked._training_rows(study)]
    assert kept == fresh
    assert sched._launched_total == sum(round(t.max_resource * 1000) for t in study.trials)
