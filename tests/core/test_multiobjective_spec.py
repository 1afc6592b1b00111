from __future__ import annotations

import tomllib

import pytest

from hpod.core.objective import Metric, Objective, ObjectiveMode
from hpod.core.spec import SpecError, StudySpec

BASE = """
name = "mo"
command = ["python", "t.py", "{lr}"]
[space]
lr = {param_type = "uniform", range = [0.1, 1.0]}
[scheduler]
type = "asha"
max_resource = 9
"""

TWO = """
[objective]
resource = "epoch"
[[objective.metrics]]
name = "val_error"
mode = "min"
[[objective.metrics]]
name = "accuracy"
mode = "max_global"
"""


def parse(text: str) -> StudySpec:
    return StudySpec.from_mapping(tomllib.loads(BASE + text), base_dir="/tmp")


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value.problems


def test_two_metrics_read_and_round_trip() -> None:
    spec = parse(TWO)
    obj = spec.objective
    assert obj.is_multi
    assert obj.names == ("val_error", "accuracy")
    assert obj.metrics == (
        Metric("val_error", ObjectiveMode.MIN),
        Metric("accuracy", ObjectiveMode.MAX_GLOBAL),
    )
    # the first metric stands for the objective where one value is read
    assert obj.metric == "val_error"
    assert obj.mode is ObjectiveMode.MIN
    back = StudySpec.from_mapping(spec.to_dict(), base_dir="/tmp", stored=True)
    assert back.objective == obj


def test_single_objective_unchanged() -> None:
    spec = parse('[objective]\nmetric = "acc"\nmode = "max"\n')
    assert spec.objective == Objective("acc", ObjectiveMode.MAX)
    assert not spec.objective.is_multi
    assert spec.objective.names == ("acc",)


def test_metric_and_metrics_both_is_a_problem() -> None:
    found = problems(TWO.replace('resource = "epoch"', 'metric = "a"\nmode = "min"'))
    assert any(p.startswith("objective.metric:") and "not both" in p for p in found)
    assert any(p.startswith("objective.mode:") for p in found)


def test_every_problem_of_the_metrics_at_once() -> None:
    found = problems(
        """
[objective]
[[objective.metrics]]
name = "err"
mode = "minn"
[[objective.metrics]]
name = "err"
mode = "min"
[[objective.metrics]]
name = "epoch"
mode = "min"
[[objective.metrics]]
mode = "max"
colour = 1
"""
    )
    joined = "\n".join(found)
    assert "objective.metrics[0].mode" in joined
    assert "objective.metrics[1].name: 'err' is given twice" in joined
    assert "objective.metrics[2].name: must differ from objective.resource" in joined
    assert "objective.metrics[3].name: missing" in joined
    assert "objective.metrics[3]" in joined
    assert "colour" in joined


def test_fewer_than_two_metrics() -> None:
    one = '[objective]\n[[objective.metrics]]\nname = "e"\nmode = "min"\n'
    assert any("needs 2 or more" in p for p in problems(one))
    assert any("needs 2 or more" in p for p in problems("[objective]\nmetrics = []\n"))
    assert any("list of tables" in p for p in problems('[objective]\nmetrics = "e"\n'))


def test_every_scheduler_and_searcher_takes_several_objectives() -> None:
    # bo and dyhpo scalarize the metrics (ParEGO); the others rank by Pareto front.
    for scheduler, searcher in [
        ("fifo", "bo"),
        ("asha", "bo"),
        ("median", "random"),
        ("hyperband", "grid"),
        ("dyhpo", "dyhpo"),
    ]:
        text = BASE.replace('type = "asha"', f'type = "{scheduler}"') + TWO
        text += f'[searcher]\ntype = "{searcher}"\n'
        spec = StudySpec.from_mapping(tomllib.loads(text), base_dir="/tmp")
        assert spec.objective.is_multi


def test_vectors() -> None:
    obj = parse(TWO).objective
    assert obj.summary_vector([(0.5, 0.7), (0.4, 0.6)]) == (0.4, 0.7)
    assert obj.minimized((0.4, 0.7)) == (0.4, -0.7)
