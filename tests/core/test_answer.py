"""The answer's estimate (hpod.core.answer) and Study.best() ranking by it."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from hpod.core import answer
from hpod.core.answer import WINDOW, AnswerIndex, Estimate
from hpod.core.objective import Objective, ObjectiveMode
from hpod.core.spec import StudySpec
from hpod.core.study import Study

pytestmark = pytest.mark.timeout(60)

MIN = Objective("loss", ObjectiveMode.MIN)
MAX = Objective("acc", ObjectiveMode.MAX)
MIN_GLOBAL = Objective("loss", ObjectiveMode.MIN_GLOBAL)
MAX_GLOBAL = Objective("acc", ObjectiveMode.MAX_GLOBAL)


def curve(*values: float) -> dict[float, float]:
    return {float(i + 1): v for i, v in enumerate(values)}


def test_the_estimate_is_the_mean_of_the_last_reports() -> None:
    c = curve(9.0, 8.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert answer.estimate(MIN, c, 5) == Estimate(3.0, 5.0, 5)
    assert answer.estimate(MIN, c, 1) == Estimate(5.0, 5.0, 1)
    assert answer.estimate(MAX, c, 3) == Estimate(4.0, 5.0, 3)
    # Fewer reports than the window: all of them.
    assert answer.estimate(MIN, curve(2.0, 4.0), 5) == Estimate(3.0, 4.0, 2)
    assert answer.estimate(MIN, {}, 5) is None
    assert math.isnan(answer.value(MIN, {}))
    with pytest.raises(ValueError, match="window"):
        answer.estimate(MIN, c, 0)


def test_global_objectives_keep_their_best_report() -> None:
    c = curve(0.5, 0.1, 0.9, 0.4)
    assert answer.estimate(MIN_GLOBAL, c) == Estimate(0.1, 0.4, 1)
    assert answer.estimate(MAX_GLOBAL, c) == Estimate(0.9, 0.4, 1)


def test_a_nan_among_the_averaged_reports_ranks_worst() -> None:
    assert math.isnan(answer.value(MIN, curve(0.1, math.nan, 0.1), 3))
    # Out of the window it no longer counts.
    assert answer.value(MIN, curve(math.nan, 0.2, 0.4), 2) == pytest.approx(0.3)
    assert math.isnan(answer.value(MIN, curve(math.inf, -math.inf), 2))
    assert answer.rank_key(MIN, 0, curve(0.1, math.nan)) == (math.inf, -2.0, 0)


def test_best_of_ties_go_to_the_further_then_the_older() -> None:
    trials = {0: curve(0.5), 1: curve(0.6, 0.5, 0.4), 2: curve(0.7, 0.4, 0.5)}
    # Means of the last 2: 0.5, 0.45, 0.45: trial 1 and 2 tie and went as far: the older.
    assert answer.best_of(MIN, trials, 2) == 1
    # The last report alone: 0.5, 0.4, 0.5.
    assert answer.best_of(MIN, trials, 1) == 1
    assert answer.best_of(MIN, {0: curve(math.nan)}) is None
    assert answer.best_of(MIN, {}) is None
    # Same value, one went further: that one.
    assert answer.best_of(MIN, {0: curve(0.4), 1: curve(0.4, 0.4)}) == 1


@pytest.mark.parametrize("objective", [MIN, MAX, MIN_GLOBAL, MAX_GLOBAL])
def test_the_index_names_what_best_of_names(objective: Objective) -> None:
    rng = random.Random(7)
    index = AnswerIndex(objective, window=3)
    curves: dict[int, dict[float, float]] = {}
    for step in range(2000):
        tid = rng.randrange(40)
        c = curves.setdefault(tid, {})
        roll = rng.random()
        if roll < 0.8:
            # An in-order report above its last level, once in a while a NaN.
            last = next(reversed(c), 0.0)
            c[last + 1] = math.nan if rng.random() < 0.02 else rng.random()
            index.update(tid, c, last if last else None)
        elif roll < 0.9 and c:
            # A report retracted: anything may have changed.
            c.pop(next(reversed(c)))
            index.update(tid, c)
        else:
            # A level re-reported with a new value.
            if c:
                c[next(reversed(c))] = rng.random()
            index.update(tid, c)
        assert index.best() == answer.best_of(objective, curves, 3)
        if step % 50 == 0:
            # The top of the order, as a sort of every trial's key from scratch has it.
            keys = [answer.rank_key(objective, t, cv, 3) for t, cv in curves.items()]
            ranked = sorted(k for k in keys if k is not None and not math.isinf(k[0]))
            assert index.top(5) == ranked[:5]
            assert index.best_key() == (ranked[0] if ranked else None)
        for t in (tid, *(curves if step % 100 == 0 else ())):
            cv = curves[t]
            assert _same(index.get(t), answer.estimate(objective, cv, 3))
            assert _same(index.key(t), answer.rank_key(objective, t, cv, 3))


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN."""
    return repr(a) == repr(b)


SPEC = """
name = "noisy"
command = ["python", "trial.py"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = { param_type = "uniform", range = [0.0, 1.0] }
[scheduler]
type = "fifo"
max_resource = 9
"""


def _run(study: Study, values: list[float]) -> int:
    launch = study.next_launch(0.0)
    assert launch is not None
    for step, v in enumerate(values, start=1):
        study.on_report(launch.trial_id, {"step": step, "loss": v}, 0.0)
    study.on_exit(launch.trial_id, 0, 0.0)
    return launch.trial_id


def test_one_lucky_last_report_does_not_beat_a_consistently_better_trial() -> None:
    study = Study.new(StudySpec.from_toml(SPEC, base_dir=Path("/tmp")))
    steady = _run(study, [0.9, 0.6, 0.45, 0.31, 0.30, 0.29, 0.30, 0.31, 0.30])
    lucky = _run(study, [0.9, 0.6, 0.5, 0.42, 0.38, 0.41, 0.39, 0.40, 0.20])
    best = study.best()
    assert best is not None
    assert best.trial_id == steady
    assert best.objective == pytest.approx((0.29 + 0.30 + 0.31 + 0.30 + 0.30) / 5)
    assert (best.last, best.window, best.resource) == (0.30, WINDOW, 9.0)
    # What the last report alone would have answered: the lucky one.
    curves = {t.trial_id: dict(t.curve) for t in study.trials}
    assert answer.best_of(study.objective, curves, 1) == lucky
    assert study.value_of(lucky) == pytest.approx((0.38 + 0.41 + 0.39 + 0.40 + 0.20) / 5)
    lucky_answer = study.answer_of(lucky)
    assert lucky_answer is not None
    assert lucky_answer.last == 0.20
    # A restored study answers the same.
    restored = Study.restore(study.spec, study.records())
    assert restored.best() == best


def test_a_retracted_report_is_taken_out_of_the_estimate() -> None:
    study = Study.new(StudySpec.from_toml(SPEC, base_dir=Path("/tmp")))
    first = _run(study, [0.5, 0.5, 0.5])
    launch = study.next_launch(0.0)
    assert launch is not None
    study.on_report(launch.trial_id, {"step": 1, "loss": 0.45}, 0.0)
    outcome = study.on_report(launch.trial_id, {"step": 2, "loss": 0.1}, 0.0)
    best = study.best()
    assert best is not None
    assert (best.trial_id, best.objective) == (launch.trial_id, pytest.approx(0.275))
    study.retract_report(launch.trial_id, outcome)
    best = study.best()
    assert best is not None
    assert best.trial_id == launch.trial_id  # 0.45, one report
    assert (best.objective, best.last, best.window) == (0.45, 0.45, 1)
    assert study.value_of(first) == 0.5


def test_the_index_maps_stay_tracked_so_young_collections_do_not_walk_them() -> None:
    """A plain dict of atomic tuples is untracked by a collection and tracked again (young) at
    its next new entry: every gen-0 collection then walked all 10,000 entries (17-32 ms of the
    daemon's loop, bench/scale.py). The index's maps, and the rung index's, stay tracked."""
    import gc

    from hpod.core.asha import Ranks

    index = AnswerIndex(MIN)
    ranks = Ranks()
    for tid in range(100):
        index.update(tid, {1.0: tid / 100})
        ranks.put(tid, (tid / 100, tid))
    gc.collect()
    assert gc.is_tracked(index._keys)
    assert gc.is_tracked(index._estimates)
    assert gc.is_tracked(ranks.of)
    gc.freeze()
    try:
        index.update(100, {1.0: 0.5})
        ranks.put(100, (0.5, 100))
        young = {id(o) for o in gc.get_objects(0)}
        assert id(index._keys) not in young
        assert id(ranks.of) not in young
    finally:
        gc.unfreeze()
