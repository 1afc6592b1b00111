"""OTX's hpo_config.yaml read into a study spec: hpopt's defaults, OTX's keys, problems by path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hpod.core import otx
from hpod.core.spec import SchedulerType, SearcherType, StudySpec
from hpod.errors import SpecError

pytestmark = pytest.mark.timeout(30)

GUIDE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "hpo_config.yaml"


def _write(tmp_path: Path, text: str, name: str = "hpo_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(path: Path, command: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as err:
        StudySpec.from_file(path, command=command)
    return err.value.problems


def test_the_guides_default_file_with_hpopts_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, GUIDE.read_text())
    spec = StudySpec.from_file(path, command=["python", "train.py"])
    assert spec.name == "hpo_config"
    assert spec.command == ("python", "train.py")
    assert spec.objective.metric == "accuracy"
    assert spec.objective.mode.value == "max"
    assert spec.scheduler.type is SchedulerType.ASHA
    assert spec.scheduler.reduction_factor == 2.0  # hpopt's, not hpod's 3
    assert spec.searcher.type is SearcherType.RANDOM
    lr = spec.space["learning_parameters.learning_rate"]
    bs = spec.space["learning_parameters.batch_size"]
    assert lr.type.value == "qloguniform"
    assert lr.step == 0.0001
    assert bs.is_int
    assert (bs.low, bs.high, bs.step) == (32, 128, 2)
    assert spec.limits.max_concurrent == 1  # num_workers
    # expected_time_ratio is the time budget's: the trials are counted once it has measured.
    assert spec.limits.time_ratio == 4.0
    assert spec.limits.full_resource == 20
    assert spec.limits.max_trials is None


def test_bayes_opt_takes_hpopts_kappa_and_init_trials(tmp_path: Path) -> None:
    text = (
        "metric: mAP\nsearch_algorithm: bayes_opt\nmaximum_resource: 5\nnum_trials: 7\n"
        "hp_space:\n  lr: {param_type: loguniform, range: [0.001, 0.1]}\n"
        "command: [python, t.py]\n"
    )
    spec = StudySpec.from_file(_write(tmp_path, text))
    assert spec.searcher.type is SearcherType.BO
    assert spec.searcher.kappa == 2.576
    assert spec.searcher.num_init_trials == 5
    assert spec.scheduler.type is SchedulerType.FIFO
    assert spec.scheduler.max_resource == 5
    assert spec.limits.max_trials == 7


def test_every_create_argument_maps(tmp_path: Path) -> None:
    text = """
metric: val_loss
mode: min
search_alg: bayes_opt
early_stop: median_stop
search_space:
  lr: {param_type: uniform, range: [0.1, 0.5]}
  bs: {param_type: quniform, range: [16, 64, 16]}
  opt: {param_type: choice, range: [sgd, adam]}
max_iterations: 9
min_iterations: 2
num_trials: 3
num_init_trials: 2
kappa: 1.5
kappa_decay: 0.9
kappa_decay_delay: 1
num_workers: 2
batch_size_name: bs
subset_ratio: 0.5
default_hyper_parameters: {lr: 0.2, bs: 32, opt: adam}
save_path: hpo
resume: true
image_resize: [0, 0]
full_dataset_size: 1000
non_pure_train_ratio: 0.2
use_epoch: false
command: python t.py --lr {lr}
"""
    spec = StudySpec.from_file(_write(tmp_path, text))
    assert spec.objective.mode.value == "min"
    assert spec.scheduler.type is SchedulerType.MEDIAN
    assert (spec.scheduler.min_resource, spec.scheduler.max_resource) == (2, 9)
    assert spec.searcher.kappa == 1.5
    assert spec.searcher.kappa_decay == 0.9
    assert spec.searcher.kappa_decay_delay == 1
    assert spec.searcher.num_init_trials == 2
    assert spec.limits.max_trials == 3
    assert spec.limits.max_concurrent == 2
    assert spec.oom.batch_size_key == "bs"
    assert spec.space["subset_ratio"].choices == (0.5,)
    assert spec.searcher.points_to_evaluate[0]["lr"] == 0.2


def test_problems_are_named_by_the_files_keys_all_at_once(tmp_path: Path) -> None:
    text = (
        "metric: [1]\nmode: up\nsearch_algorithm: tpe\nnum_trials: 0\nbogus: 1\n"
        "hp_space:\n  a: {param_type: foo, range: [1]}\n"
    )
    problems = _problems(_write(tmp_path, text))
    joined = "\n".join(problems)
    for needle in ("metric:", "mode:", "search_algorithm:", "num_trials:", "bogus:", "hp_space.a"):
        assert needle in joined, problems
    assert any(p.startswith("command: missing") for p in problems)


def test_problems_of_the_spec_made_are_worded_by_the_files_keys(tmp_path: Path) -> None:
    text = (
        "search_algorithm: asha\nmaximum_resource: 4\nminimum_resource: 3\nreduction_factor: 2\n"
        "batch_size_name: lr\n"
        "hp_space:\n  lr: {param_type: loguniform, range: [0.001, 0.1]}\n"
    )
    problems = _problems(_write(tmp_path, text), ["python", "t.py"])
    assert any(p.startswith("batch_size_name:") for p in problems), problems


def test_yaml_in_a_toml_file_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path, GUIDE.read_text(), name="study.toml")
    (problem,) = _problems(path)
    assert "YAML, not TOML" in problem
    assert ".yaml" in problem


def test_toml_in_a_yaml_file_says_so(tmp_path: Path) -> None:
    toml = Path(__file__).resolve().parents[2] / "examples" / "digits" / "study.toml"
    path = _write(tmp_path, toml.read_text(), name="study.yaml")
    (problem,) = _problems(path)
    assert "holds TOML" in problem
    assert ".toml" in problem


def test_a_command_after_a_toml_spec_is_refused(tmp_path: Path) -> None:
    toml = Path(__file__).resolve().parents[2] / "examples" / "digits" / "study.toml"
    (problem,) = _problems(toml, ["python", "x.py"])
    assert "hpo_config.yaml only" in problem


def test_the_toml_made_reads_back_to_the_same_spec(tmp_path: Path) -> None:
    path = _write(tmp_path, GUIDE.read_text())
    text = otx.spec_toml(path.read_text(), path=path, command=["python", "train.py"], budget=True)
    raw = tomllib.loads(text)
    assert raw["space"]["learning_parameters.batch_size"]["range"] == [32, 128, 2]
    a = StudySpec.from_toml(text, base_dir=tmp_path)
    b = StudySpec.from_file(path, command=["python", "train.py"])
    assert a == b


def test_only_safe_yaml_is_read(tmp_path: Path) -> None:
    text = "metric: !!python/object/apply:os.system ['true']\nhp_space: {}\n"
    problems = _problems(_write(tmp_path, text), ["x"])
    assert any("YAML syntax error" in p for p in problems), problems


def test_fallback_trials_fit_the_ratio() -> None:
    # fifo: ratio x full / max; asha: a trial costs its first rung and the promoted shares.
    assert otx._fallback_trials(4, 20, 1, 20, 2, "bayes_opt") == 4
    assert otx._fallback_trials(4, 20, 1, 20, 2, "asha") == 25
