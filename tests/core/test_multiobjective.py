"""Multi-objective studies in the core: Pareto ranking at the rungs, in median stopping, in best."""

from __future__ import annotations

import math
from pathlib import Path

from hpod.core.pareto import pareto_order
from hpod.core.spec import StudySpec
from hpod.core.states import Decision, TrialState
from hpod.core.study import Study

SPEC = """
name = "mo"
command = ["python", "trial.py", "{{x}}"]
[objective]
resource = "epoch"
[[objective.metrics]]
name = "err"
mode = "min"
[[objective.metrics]]
name = "acc2"
mode = "{mode2}"
[space]
x = {{ param_type = "uniform", range = [0, 1] }}
[scheduler]
type = "{scheduler}"
max_resource = 9
reduction_factor = 3
{extra}
[limits]
max_trials = {max_trials}
"""


def make(
    scheduler: str = "asha", extra: str = "", max_trials: int = 30, mode2: str = "max"
) -> Study:
    text = SPEC.format(scheduler=scheduler, extra=extra, max_trials=max_trials, mode2=mode2)
    return Study.new(StudySpec.from_toml(text, base_dir=Path("/tmp")))


def report(study: Study, tid: int, epoch: int, err: float, acc: float) -> Decision:
    return study.on_report(tid, {"epoch": epoch, "err": err, "acc2": acc}, 0.0).decision


# err (min), acc2 (max): the first three and the fifth are the front, the fourth and sixth are
# dominated (by 0 and by 2).
VALUES = [(0.1, 0.2), (0.5, 0.6), (0.3, 0.5), (0.2, 0.1), (0.9, 0.9), (0.4, 0.4)]


def test_promotion_follows_the_pareto_order() -> None:
    study = make(extra='rung_type = "promotion"')
    launches = [study.next_launch(0.0) for _ in range(6)]
    assert all(lv is not None and lv.max_resource == 1 for lv in launches)
    for tid, (err, acc) in enumerate(VALUES):
        assert report(study, tid, 1, err, acc) is Decision.PAUSE
        study.on_exit(tid, 0, 0.0)
        assert study.record(tid).state is TrialState.PAUSED
    points = [(e, -a) for e, a in VALUES]
    expected = pareto_order(points, list(range(6)))
    # 6 trials at rung 1, eta 3: two are promoted, the first two of the Pareto order
    first = study.next_launch(0.0)
    second = study.next_launch(0.0)
    assert first is not None
    assert second is not None
    assert [first.trial_id, second.trial_id] == expected[:2]
    assert first.max_resource == 3
    # a third launch is a new trial, not a promotion
    third = study.next_launch(0.0)
    assert third is not None
    assert third.fresh


def test_stopping_rung_type_ranks_by_front() -> None:
    study = make(extra='rung_type = "stopping"')
    for _ in range(4):
        study.next_launch(0.0)
    # At rung 1 each trial is compared with those before it: max(1, floor(n/3)) go on.
    assert report(study, 0, 1, 0.5, 0.5) is Decision.CONTINUE
    # dominated by trial 0: rank 1 of 2, quota 1
    assert report(study, 1, 1, 0.6, 0.4) is Decision.STOP
    # on the front with 0, with (0.5,0.5) and (0.4,0.4) both ends (crowding inf): id breaks it
    assert report(study, 2, 1, 0.4, 0.4) is Decision.STOP
    # dominates everyone: first
    assert report(study, 3, 1, 0.1, 0.9) is Decision.CONTINUE


def test_front_is_best_and_single_best_is_on_it() -> None:
    study = make(scheduler="fifo")
    for tid, (err, acc) in enumerate(VALUES):
        study.next_launch(0.0)
        for epoch in range(1, 10):
            report(study, tid, epoch, err, acc)
        study.on_exit(tid, 0, 0.0)
    front = study.front()
    assert sorted(b.trial_id for b in front) == [0, 1, 2, 4]
    assert {b.trial_id: b.values for b in front}[2] == (0.3, 0.5)
    best = study.best()
    assert best is not None
    assert best.trial_id == front[0].trial_id
    ranked = study.pareto()
    assert [b.trial_id for b in ranked][-2:] in ([3, 5], [5, 3])
    assert study.vector_of(4) == (0.9, 0.9)
    assert study.value_of(4) == 0.9


def test_global_mode_takes_the_best_of_each_metric() -> None:
    study = make(scheduler="fifo", mode2="max_global")
    study.next_launch(0.0)
    report(study, 0, 1, 0.5, 0.8)
    report(study, 0, 2, 0.4, 0.2)
    assert study.vector_of(0) == (0.4, 0.8)


def test_missing_metric_is_nan_and_restore_keeps_vectors() -> None:
    study = make(scheduler="fifo")
    study.next_launch(0.0)
    study.on_report(0, {"epoch": 1, "acc2": 0.5}, 0.0)
    assert math.isnan(study.vector_of(0)[0])
    report(study, 0, 2, 0.3, 0.6)
    restored = Study.restore(study.spec, study.records())
    assert restored.vector_of(0) == (0.3, 0.6)
    vectors = restored.trials[0].vectors
    assert list(vectors) == [1.0, 2.0]
    assert math.isnan(vectors[1.0][0])
    assert vectors[1.0][1] == 0.5


def test_median_stops_only_a_trial_behind_on_every_metric() -> None:
    study = make(scheduler="median", extra="grace_period = 1\nmin_trials = 3")
    for _ in range(6):
        study.next_launch(0.0)
    for tid, (err, acc) in enumerate([(0.2, 0.8), (0.3, 0.7), (0.4, 0.6)]):
        assert report(study, tid, 1, err, acc) is Decision.CONTINUE
    # medians: err 0.3, acc 0.7. Behind on one metric only: runs on.
    assert report(study, 3, 1, 0.1, 0.1) is Decision.CONTINUE
    # behind on both (against the median of 0,1,2,3: err 0.25, acc 0.65): stopped
    assert report(study, 4, 1, 0.5, 0.5) is Decision.STOP
    # equal to the median on one, better on the other: not dominated
    assert report(study, 5, 1, 0.25, 0.99) is Decision.CONTINUE


def test_checkpoint_retention_keeps_the_front() -> None:
    from hpod.core.limits import checkpoints_to_delete

    obj = make().objective
    done = TrialState.COMPLETED
    rows: list[tuple[int, TrialState, float | tuple[float, ...] | None]] = [
        (tid, done, v) for tid, v in enumerate(VALUES)
    ]
    rows.append((6, TrialState.PAUSED, (0.99, 0.0)))
    rows.append((7, done, None))
    # keep = 0: the front (0, 1, 2, 4) still keeps its checkpoints; a paused trial is never
    # chosen
    assert checkpoints_to_delete(obj, rows, 0) == [3, 5, 7]
    # keep = 5: the front and the best of the second front (5 and 3 tie on front 1; both ends)
    assert checkpoints_to_delete(obj, rows, 5) == [5, 7]


def test_parego_scalarization() -> None:
    from hpod.core.bo import parego_weights, scalarized
    from hpod.core.plans import Observation

    history = [
        Observation({"x": 0.0}, 1.0, 0.0, (0.0, 10.0)),
        Observation({"x": 1.0}, 1.0, 4.0, (4.0, 0.0)),
        Observation({"x": 0.5}, 1.0, 2.0, (2.0, 5.0)),
        Observation({"x": 0.7}, 1.0, math.nan, (math.nan, 1.0)),
        Observation({"x": 0.9}, 0.0, math.nan),  # a launch marker
    ]
    out = scalarized(history, (0.5, 0.5))
    # normalized (0, 1), (1, 0), (0.5, 0.5): max(w f) + 0.05 sum(w f)
    assert out[0].value == 0.5 + 0.05 * 0.5
    assert out[1].value == 0.5 + 0.05 * 0.5
    assert out[2].value == 0.25 + 0.05 * 0.5
    assert math.isnan(out[3].value)
    assert out[4] is history[4]
    w = parego_weights(history, 3)
    assert len(w) == 2
    assert sum(w) == 1.0 or abs(sum(w) - 1.0) < 1e-12
    assert parego_weights(history, 3) == w
    assert parego_weights(history[:4], 3) != w


def test_bo_with_two_objectives_proposes_from_the_model() -> None:
    from hpod.core.models import fit

    study = make(scheduler="fifo", extra='[searcher]\ntype = "bo"\nnum_init_trials = 3')
    weights_seen = set()
    for _ in range(10):
        fit_request = study.wants_fit()
        if fit_request is not None:
            study.install(fit_request, fit(fit_request))
            weights_seen.add(fit_request.data["weights"])
        launch = study.next_launch(0.0)
        assert launch is not None
        x = float(launch.config["x"])
        # a known front: err = x, acc2 = x**0.5 (max): every x is on it
        for epoch in range(1, 10):
            report(study, launch.trial_id, epoch, x, x**0.5)
        study.on_exit(launch.trial_id, 0, 0.0)
    assert study.decisions.get("model_starts", 0) >= 5
    assert len(weights_seen) >= 2
    assert len(study.front()) == 10


def test_dyhpo_with_two_objectives_learns_a_scalarization() -> None:
    from hpod.core.models import fit

    extra = 'options = { fit_iterations = 15, candidates = 64 }\n[searcher]\ntype = "dyhpo"\n'
    extra += "num_init_trials = 3"
    study = make(scheduler="dyhpo", extra=extra, max_trials=14)
    scalarizations = set()
    for _ in range(40):
        request = study.wants_fit()
        if request is not None:
            study.install(request, fit(request))
            scalarizations.add(request.data["scalarization"])
        launch = study.next_launch(0.0)
        if launch is None:
            break
        x = float(launch.config["x"])
        for epoch in range(int(launch.resume_from) + 1, int(launch.max_resource) + 1):
            decision = report(study, launch.trial_id, epoch, x + 1 / epoch, x**0.5 - 1 / epoch)
            if decision is not Decision.CONTINUE:
                break
        study.on_exit(launch.trial_id, 0, 0.0)
    assert len(scalarizations) >= 2
    assert all(s is not None and abs(sum(s.weights) - 1) < 1e-9 for s in scalarizations)
    assert study.decisions.get("model_starts", 0) + study.decisions.get("model_promotions", 0) > 0
    assert study.front()


def test_a_trial_that_reports_none_of_the_metrics_fails_naming_them() -> None:
    study = make(scheduler="fifo")
    study.next_launch(0.0)
    study.on_report(0, {"epoch": 1, "errr": 0.5}, 0.0)
    assert study.on_exit(0, 0, 0.0) is TrialState.FAILED
    assert study.record(0).error == (
        "exited without reporting 'err' or 'acc2'; it reported: epoch, errr "
        "(check objective.metrics or the trial's report call)"
    )
    # one of the two is enough to be measured
    study.next_launch(0.0)
    study.on_report(1, {"epoch": 1, "acc2": 0.5}, 0.0)
    assert study.on_exit(1, 0, 0.0) is TrialState.COMPLETED


def test_hyperband_promotes_by_pareto_rank_in_each_bracket() -> None:
    from hpod.core.rungs import ranked

    study = make(scheduler="hyperband", extra="brackets = 2", max_trials=18)
    promoted = 0
    for _ in range(200):
        launch = study.next_launch(0.0)
        if launch is None:
            break
        if not launch.fresh:
            # the promoted trial is within its rung's quota of the Pareto order, in its bracket
            t = study.trials[launch.trial_id]
            rung = launch.resume_from
            peers = [p for p in study.trials if p.bracket == t.bracket]
            order = [p.trial_id for p in ranked(study.objective, peers, rung)]
            quota = max(1, len(order) // 3)
            assert launch.trial_id in order[:quota]
            promoted += 1
        x = float(launch.config["x"])
        for epoch in range(int(launch.resume_from) + 1, int(launch.max_resource) + 1):
            err, acc = (x - 0.6) ** 2 + 1 / epoch, x - 1 / epoch
            if report(study, launch.trial_id, epoch, err, acc) is not Decision.CONTINUE:
                break
        study.on_exit(launch.trial_id, 0, 0.0)
    assert promoted >= 3
    assert study.finished
    assert study.front()
