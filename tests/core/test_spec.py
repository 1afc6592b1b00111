from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpod.core.command import placeholders
from hpod.core.objective import ObjectiveMode
from hpod.core.spec import (
    Acquisition,
    RungType,
    SchedulerType,
    SearcherType,
    StudySpec,
)
from hpod.errors import SpecError

DESIGN = """
name = "digits-mlp"
command = ["python", "train.py", "--lr", "{lr}", "--width", "{width}"]  # {key} = config value
workdir = "."                       # relative to the spec file

[objective]
metric = "val_acc"
mode = "max"
resource = "epoch"

[space]
lr    = { param_type = "loguniform",   range = [1e-4, 1e-1] }
width = { param_type = "qloguniform",  range = [16, 512, 16, 2] }
drop  = { param_type = "uniform",      range = [0.0, 0.5] }
bs    = { param_type = "quniform",     range = [32, 256, 32] }
opt   = { param_type = "choice",       range = ["sgd", "adam"] }

[scheduler]
type = "asha"
min_resource = 1
max_resource = 81
reduction_factor = 3
rung_type = "promotion"

[searcher]
type = "random"
seed = 0
points_to_evaluate = [{ lr = 0.01, width = 128, drop = 0.1, bs = 64, opt = "adam" }]

[resources]
gpus_per_trial = 1
trials_per_gpu = 1

[limits]
max_trials = 200
max_concurrent = 8
optimization_time = "2h"
compute_time = "12h"
trial_time = "30m"

[report]
period = "1m"
top_k = 5
keep_checkpoints = 3
"""

MINIMAL = """
name = "m"
command = "python train.py --x {x}"
[objective]
metric = "loss"
mode = "min"
[space]
x = { param_type = "uniform", range = [0, 1] }
"""

BASE = Path("/srv/studies")


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        StudySpec.from_toml(text, base_dir=BASE)
    return list(info.value.problems)


def test_the_design_example_reads():
    spec = StudySpec.from_toml(DESIGN, base_dir=BASE)
    assert spec.name == "digits-mlp"
    assert spec.command == ("python", "train.py", "--lr", "{lr}", "--width", "{width}")
    assert spec.workdir == BASE
    assert spec.objective.metric == "val_acc"
    assert spec.objective.mode is ObjectiveMode.MAX
    assert spec.space.names == ("lr", "width", "drop", "bs", "opt")
    assert spec.scheduler.type is SchedulerType.ASHA
    assert spec.scheduler.max_resource == 81
    assert spec.scheduler.reduction_factor == 3.0
    assert spec.scheduler.rung_type is RungType.PROMOTION
    assert spec.searcher.type is SearcherType.RANDOM
    assert spec.searcher.points_to_evaluate == (
        {"lr": 0.01, "width": 128, "drop": 0.1, "bs": 64, "opt": "adam"},
    )
    assert spec.resources.gpus_per_trial == 1
    assert spec.limits.max_trials == 200
    assert spec.limits.optimization_time == 7200.0
    assert spec.limits.compute_time == 12 * 3600.0
    assert spec.limits.trial_time == 1800.0
    assert spec.report.period == 60.0
    assert spec.report.keep_checkpoints == 3
    assert spec.priority == 1
    assert spec.stop_grace == 10.0
    assert spec.env == {}


def test_defaults_of_a_minimal_spec():
    spec = StudySpec.from_toml(MINIMAL, base_dir=BASE)
    assert spec.command == ("python", "train.py", "--x", "{x}")
    assert spec.objective.resource == "epoch"
    assert spec.scheduler.type is SchedulerType.FIFO
    assert spec.scheduler.max_resource == 10
    assert spec.searcher.type is SearcherType.RANDOM
    assert spec.searcher.acquisition is Acquisition.UCB
    assert spec.resources.gpus_per_trial == 0
    assert spec.limits.max_trials is None
    assert spec.report.top_k == 5


def test_to_dict_is_json_and_reads_back_equal():
    spec = StudySpec.from_toml(DESIGN + "\n[env]\nOMP_NUM_THREADS = 4\n", base_dir=BASE)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["env"] == {"OMP_NUM_THREADS": "4"}
    assert data["limits"]["trial_time"] == 1800.0
    assert StudySpec.from_mapping(data, base_dir="/elsewhere") == spec


@pytest.mark.parametrize(
    ("written", "seconds"),
    [(None, 120.0), ('"2m"', 120.0), ('"30s"', 30.0), ("0", 0.0), ("5", 5.0)],
)
def test_reconnect_timeout_is_how_long_a_report_waits_for_its_daemon(
    written: str | None, seconds: float
) -> None:
    """Passed to every trial as HPOD_RECONNECT_TIMEOUT (issue 13); 0: one reconnect only."""
    text = MINIMAL if written is None else f"reconnect_timeout = {written}\n" + MINIMAL
    spec = StudySpec.from_toml(text, base_dir=BASE)
    assert spec.reconnect_timeout == seconds
    data = json.loads(json.dumps(spec.to_dict()))
    assert StudySpec.from_mapping(data, base_dir=BASE) == spec


def test_a_bad_reconnect_timeout_is_one_problem_among_all() -> None:
    for written, problem in [
        ('"soon"', "reconnect_timeout: cannot read 'soon' as a duration"),
        ("-1", "reconnect_timeout: a duration must be finite and not negative, got -1"),
        ("true", "reconnect_timeout: expected a duration, got True"),
    ]:
        found = problems_of(f"reconnect_timeout = {written}\npriority = -1\n" + MINIMAL)
        assert any(p.startswith(problem) for p in found), (problem, found)
        assert any(p.startswith("priority:") for p in found), found


def test_pass_env_names_what_else_of_the_submitters_environment_the_trials_get():
    text = 'pass_env = ["WANDB_API_KEY", "HF_HOME", "WANDB_API_KEY"]\n' + MINIMAL
    spec = StudySpec.from_toml(text, base_dir=BASE)
    assert spec.pass_env == ("WANDB_API_KEY", "HF_HOME")
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["pass_env"] == ["WANDB_API_KEY", "HF_HOME"]
    assert StudySpec.from_mapping(data, base_dir=BASE) == spec
    assert StudySpec.from_toml(MINIMAL, base_dir=BASE).pass_env == ()
    assert "pass_env" not in StudySpec.from_toml(MINIMAL, base_dir=BASE).to_dict()


def test_pass_env_refuses_what_is_no_name_and_the_daemons_own_names():
    text = 'pass_env = ["1X", 3, "HPOD_TOKEN", "CUDA_VISIBLE_DEVICES", "NOTIFY_SOCKET"]\n'
    assert problems_of(text + MINIMAL) == [
        "pass_env[0]: '1X' is not a valid environment variable name",
        "pass_env[1]: 3 is not a valid environment variable name",
        "pass_env[2]: HPOD_TOKEN is the daemon's to set (or the service manager's); it is "
        "never passed to a trial",
        "pass_env[3]: CUDA_VISIBLE_DEVICES is the daemon's to set (or the service manager's); "
        "it is never passed to a trial",
        "pass_env[4]: NOTIFY_SOCKET is the daemon's to set (or the service manager's); it is "
        "never passed to a trial",
    ]
    assert problems_of('pass_env = "HF_HOME"\n' + MINIMAL) == [
        "pass_env: expected a list of names like [\"HF_HOME\"], got 'HF_HOME'"
    ]


def test_cpu_fallback_says_a_gpu_study_accepts_cpu_slots():
    text = MINIMAL + "[resources]\ngpus_per_trial = 1\ncpu_fallback = true\n"
    spec = StudySpec.from_toml(text, base_dir=BASE)
    assert spec.resources.cpu_fallback is True
    assert spec.to_dict()["resources"]["cpu_fallback"] is True
    assert StudySpec.from_mapping(spec.to_dict(), base_dir=BASE) == spec
    assert StudySpec.from_toml(MINIMAL, base_dir=BASE).resources.cpu_fallback is False
    assert "cpu_fallback" not in StudySpec.from_toml(MINIMAL, base_dir=BASE).to_dict()["resources"]
    assert problems_of(MINIMAL + '[resources]\ncpu_fallback = "yes"\n') == [
        "resources.cpu_fallback: must be true or false, got 'yes'"
    ]


def test_three_mistakes_are_all_listed_with_their_key_paths():
    text = MINIMAL.replace('mode = "min"', 'mode = "maxx"') + ("[limits]\nmax_trials = -3\n")
    text = text.replace("{x}", "{lrr}")
    assert problems_of(text) == [
        "objective.mode: 'maxx' is not one of min, max, min_global, max_global; "
        "did you mean 'max'?",
        "limits.max_trials: must be a positive integer, got -3",
        "command: placeholder {lrr} is not a key of [space] nor one of checkpoint_dir, "
        "trial_dir, trial_id",
    ]


def test_problems_across_every_section():
    text = """
name = "-bad name"
command = []
workdir = 3
prioritty = 2
stop_grace_period = "soon"
[env]
HPOD_TOKEN = "x"
A = [1]
[objective]
mode = "max"
resource = 5
extra = 1
[space]
lr = { param_type = "loguniform", range = [0, 1] }
[scheduler]
type = "asha"
min_resource = 5
reduction_factor = 1
rung_levels = [1, 3, 3]
rung_type = "stop"
[searcher]
type = "bayes"
seed = -1
grid_points = 0
kappa_decay = 2
points_to_evaluate = {}
[resources]
gpus_per_trial = 2
trials_per_gpu = 2
[limits]
trial_time = "5 minutes"
compute_time = 0
[report]
period = "1x"
top_k = 0
keep_checkpoints = -1
"""
    found = problems_of(text)
    for expected in [
        "name: '-bad name' must be 1 to 64 letters, digits, _ . - and start with a letter or digit",
        "command: must not be empty",
        "workdir: must be a non-empty string, got 3",
        "env.HPOD_TOKEN: set by the daemon for every trial; it cannot be overridden",
        "env.A: must be a string, got [1]",
        "prioritty: unknown key; did you mean 'priority'?",
        "space.lr.range: lower bound 0 is not > 0 for loguniform",
        "objective.metric: missing",
        "objective.resource: must be a non-empty string, got 5",
        "objective.extra: unknown key; expected one of metric, mode, resource",
        "scheduler.max_resource: missing; the asha scheduler needs it",
        "scheduler.reduction_factor: must be > 1, got 1",
        "scheduler.rung_type: 'stop' is not one of promotion, stopping; did you mean 'stopping'?",
        "scheduler.rung_levels[0]: 1 is outside [min_resource, max_resource] = [5, 10]",
        "scheduler.rung_levels[1]: 3 is outside [min_resource, max_resource] = [5, 10]",
        "scheduler.rung_levels[2]: 3 is outside [min_resource, max_resource] = [5, 10]",
        "searcher.type: 'bayes' is not one of random, grid, bo, dyhpo",
        "searcher.seed: must be an integer >= 0, got -1",
        "searcher.grid_points: must be a positive integer, got 0",
        "searcher.kappa_decay: must be <= 1, got 2",
        "searcher.points_to_evaluate: expected a list of tables, got {}",
        "resources.trials_per_gpu: sharing a GPU needs gpus_per_trial = 1, got 2",
        "limits.compute_time: must be longer than 0, got 0",
        "report.top_k: must be a positive integer, got 0",
        "report.keep_checkpoints: must be an integer >= 0, got -1",
    ]:
        assert expected in found, (expected, found)
    assert any(p.startswith("stop_grace_period: cannot read 'soon'") for p in found)
    assert any(p.startswith("limits.trial_time: cannot read '5 minutes'") for p in found)
    assert any(p.startswith("report.period: cannot read '1x'") for p in found)


def test_missing_required_parts():
    found = problems_of("")
    assert found[0] == "name: missing"
    assert any(p.startswith("command: missing") for p in found)
    assert any(p.startswith("space: missing") for p in found)
    assert "objective: missing; add a [objective] table" in found


def test_toml_syntax_error_names_the_line():
    found = problems_of('name = "x"\ncommand = \n')
    assert len(found) == 1
    assert found[0].startswith("TOML syntax error")
    assert "line 2" in found[0]


def test_unknown_section_and_did_you_mean():
    found = problems_of(MINIMAL + "[schedular]\ntype = 'asha'\n")
    assert found == ["schedular: unknown key; did you mean 'scheduler'?"]


def test_sections_must_be_tables():
    found = problems_of('limits = "none"\n' + MINIMAL)
    assert found == ["limits: expected a table, got str 'none'"]


def test_points_to_evaluate_are_checked_against_the_space():
    text = MINIMAL + "[searcher]\npoints_to_evaluate = [{ x = 2 }, { y = 0.5 }]\n"
    assert problems_of(text) == [
        "searcher.points_to_evaluate[0].x: 2 is outside the range [0, 1]",
        "searcher.points_to_evaluate[1]: missing 'x'",
        "searcher.points_to_evaluate[1].y: unknown key; expected one of x",
    ]


def test_points_to_evaluate_are_normalized():
    text = (
        MINIMAL.replace(
            "[space]", "[space]\nbs = { param_type = 'quniform', range = [32, 256, 32] }"
        ).replace("{x}", "{x} {bs}")
        + "[searcher]\ntype = 'grid'\npoints_to_evaluate = [{ x = 0, bs = 64.0 }]\n"
    )
    spec = StudySpec.from_toml(text, base_dir=BASE)
    (point,) = spec.searcher.points_to_evaluate
    assert point == {"bs": 64, "x": 0.0}
    assert type(point["bs"]) is int
    assert spec.searcher.type is SearcherType.GRID


def test_placeholder_check_survives_a_broken_space():
    text = MINIMAL.replace("range = [0, 1]", "range = [1, 0]").replace("{x}", "{y}")
    found = problems_of(text)
    assert "space.x.range: upper bound 0 is not > lower bound 1" in found
    assert any(p.startswith("command: placeholder {y}") for p in found)


def test_reserved_placeholders_and_braces():
    text = MINIMAL.replace(
        '"python train.py --x {x}"',
        '["run", "{trial_id}", "{trial_dir}/{checkpoint_dir}", "{{literal}}", "{x:.3f}"]',
    )
    # Filling is core/command.py's (tests/core/test_command.py), with the rules checked here.
    StudySpec.from_toml(text, base_dir=BASE)
    found = problems_of(MINIMAL.replace("{x}", "{x"))
    assert len(found) == 1
    assert found[0].startswith("command: 'python'") is False
    assert "literal braces" in found[0]
    found = problems_of(MINIMAL.replace("{x}", "{}"))
    assert found == ["command: '{}' has an empty placeholder {}"]


def test_placeholders():
    assert placeholders("--lr={lr} {model.depth}") == ["lr", "model.depth"]


def test_a_placeholder_that_cannot_be_formatted_is_refused_at_submit():
    # Found at launch, it failed every trial (and took the daemon down); now submit refuses it.
    found = problems_of(MINIMAL.replace('"python train.py --x {x}"', '["echo", "{x:zz}"]'))
    assert len(found) == 1
    assert found[0].startswith("command[1]: cannot format {x:zz}: ")
    assert "(x = 0.0)" in found[0]


def test_formats_are_tried_on_every_choice_and_both_ends_of_a_range():
    command = '["run", "--w={w:04d}", "--o={o:>6}", "--b={b:d}", "--id={trial_id:03d}", "{x!r}"]'
    space = """
w = { param_type = "quniform", range = [1, 64, 1] }
o = { param_type = "choice", range = ["sgd", "adam"] }
b = { param_type = "choice", range = [true, false] }
"""
    good = MINIMAL.replace('"python train.py --x {x}"', command) + space
    spec = StudySpec.from_toml(good, base_dir=BASE)
    assert spec.command[1] == "--w={w:04d}"
    # A float range has no integer form; one string among the choices is enough to refuse.
    bad = good.replace("range = [1, 64, 1]", "range = [1, 64]").replace("quniform", "uniform")
    bad = bad.replace('["sgd", "adam"]', '[1, 2, "auto"]').replace("{o:>6}", "{o:+d}")
    found = problems_of(bad)
    assert [p.split(": ")[0] for p in found] == ["command[1]", "command[2]"]
    assert "(w = 1.0)" in found[0]
    assert "(o = 'auto')" in found[1]
    found = problems_of(good.replace("{trial_id:03d}", "{trial_dir:03d}").replace("{x!r}", "{x!z}"))
    assert [p.split(": ")[0] for p in found] == ["command[4]", "command[5]"]
    assert found[0].startswith("command[4]: cannot format {trial_dir:03d}: ")
    assert found[1].startswith("command[5]: cannot format {x!z}: Unknown conversion specifier z")


def test_command_string_is_split_like_a_shell():
    spec = StudySpec.from_toml(
        MINIMAL.replace('"python train.py --x {x}"', "'python \"my train.py\" {x}'"),
        base_dir=BASE,
    )
    assert spec.command == ("python", "my train.py", "{x}")
    found = problems_of(MINIMAL.replace('"python train.py --x {x}"', "'python \"oops {x}'"))
    assert found[0].startswith("command: cannot split")


def test_workdir_is_resolved_against_base_dir_without_touching_disk():
    text = 'workdir = "../code/./x"\n' + MINIMAL
    spec = StudySpec.from_toml(text, base_dir=Path("/does/not/exist"))
    assert spec.workdir == Path("/does/not/code/x")
    spec = StudySpec.from_toml('workdir = "/abs/dir"\n' + MINIMAL, base_dir=BASE)
    assert spec.workdir == Path("/abs/dir")


def test_dyhpo_scheduler_brings_its_searcher():
    text = MINIMAL + "[scheduler]\ntype = 'dyhpo'\nmax_resource = 27\n"
    spec = StudySpec.from_toml(text, base_dir=BASE)
    assert spec.searcher.type is SearcherType.DYHPO
    found = problems_of(text + "[searcher]\ntype = 'random'\n")
    assert found[0].startswith("searcher.type: 'random' with scheduler.type = 'dyhpo'")


def test_rung_levels_and_median_options():
    text = MINIMAL + (
        "[scheduler]\ntype = 'median'\nmax_resource = 20\nrung_levels = [2, 4, 8]\n"
        "grace_period = 3\nmin_trials = 4\noptions = { foo = 1 }\n"
    )
    spec = StudySpec.from_toml(text, base_dir=BASE)
    assert spec.scheduler.rung_levels == (2, 4, 8)
    assert spec.scheduler.grace_period == 3
    assert spec.scheduler.min_trials == 4
    assert spec.scheduler.options == {"foo": 1}
    found = problems_of(text.replace("[2, 4, 8]", "[4, 2]"))
    assert found == ["scheduler.rung_levels: must be strictly increasing, got [4, 2]"]


def test_from_file(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(MINIMAL + "", encoding="utf-8")
    spec = StudySpec.from_file(path)
    assert spec.workdir == tmp_path
    with pytest.raises(SpecError, match="cannot read the spec"):
        StudySpec.from_file(tmp_path / "missing.toml")


def test_objective_mode_is_required():
    found = problems_of(MINIMAL.replace('mode = "min"\n', ""))
    assert found == ["objective.mode: missing (one of min, max, min_global, max_global)"]


def test_objective_resource_must_differ_from_metric():
    found = problems_of(MINIMAL.replace('metric = "loss"', 'metric = "epoch"'))
    assert found == ["objective.resource: must differ from objective.metric ('epoch')"]


def test_describe_limits():
    spec = StudySpec.from_toml(DESIGN, base_dir=BASE)
    assert spec.describe_limits() == {
        "optimization_time": "2h00m",
        "compute_time": "12h00m",
        "trial_time": "30m00s",
    }


def test_a_stored_spec_is_not_held_to_checks_that_only_guard_a_submit():
    # A study admitted before the format check existed must come back at a restart (its trials
    # then fail with the message), not be dropped from the daemon as unreadable.
    bad = MINIMAL.replace('"python train.py --x {x}"', '["echo", "{x:zz}"]')
    assert problems_of(bad)
    spec = StudySpec.from_toml(bad, base_dir=BASE, stored=True)
    assert spec.command == ("echo", "{x:zz}")


def test_the_reporter_waits_as_long_as_the_spec_says_by_default() -> None:
    from hpod import trial
    from hpod.core.spec import DEFAULT_RECONNECT_TIMEOUT

    assert trial.DEFAULT_RECONNECT_TIMEOUT == DEFAULT_RECONNECT_TIMEOUT


def _defaults_spec(
    scheduler: dict[str, object] | None, searcher: dict[str, object] | None = None
) -> StudySpec:
    raw: dict[str, object] = {
        "name": "d",
        "command": ["true"],
        "objective": {"metric": "loss", "mode": "min", "resource": "epoch"},
        "space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
    }
    if scheduler is not None:
        raw["scheduler"] = scheduler
    if searcher is not None:
        raw["searcher"] = searcher
    return StudySpec.from_mapping(raw, base_dir=Path("."))


def test_a_spec_that_names_no_scheduler_type_gets_hyperband_with_bo() -> None:
    from hpod.core.preview import preview

    spec = _defaults_spec({"max_resource": 27})
    assert (spec.scheduler.type.value, spec.searcher.type.value) == ("hyperband", "bo")
    assert spec.scheduler.brackets == 4  # every bracket: rungs 1, 3, 9, and one from 27
    # its BO starts from 20 random configurations (bench/results/quality.md), also where the
    # spec names bo or gives other [searcher] keys; a number given is kept, and a named
    # scheduler type keeps bo's 5
    assert spec.searcher.num_init_trials == 20
    assert _defaults_spec({"max_resource": 27}, {"type": "bo"}).searcher.num_init_trials == 20
    assert _defaults_spec({"max_resource": 27}, {"seed": 3}).searcher.num_init_trials == 20
    given = _defaults_spec({"max_resource": 27}, {"num_init_trials": 7})
    assert given.searcher.num_init_trials == 7
    named_bo = _defaults_spec({"type": "hyperband", "max_resource": 27}, {"type": "bo"})
    assert named_bo.searcher.num_init_trials == 5
    assert preview(spec)["default"] is True
    assert preview(spec)["searcher"] == "bo"
    assert preview(spec)["num_init_trials"] == 20
    # and a quarter of its turns after those at random; a named bo draws none, a value given stays
    assert spec.searcher.random_fraction == 0.25
    assert preview(spec)["random_fraction"] == 0.25
    assert spec.scheduler.adaptive_brackets
    assert preview(spec)["adaptive_brackets"] is True
    assert named_bo.searcher.random_fraction == 0.0
    given_fraction = _defaults_spec({"max_resource": 27}, {"random_fraction": 0.0})
    assert given_fraction.searcher.random_fraction == 0.0
    # a searcher named keeps it; a scheduler type named keeps random search as before
    assert _defaults_spec({"max_resource": 27}, {"type": "random"}).searcher.type.value == "random"
    named = _defaults_spec({"type": "hyperband", "max_resource": 27})
    assert named.searcher.type.value == "random"
    assert preview(named)["default"] is False
    # without max_resource there are no rungs: fifo and random search
    bare = _defaults_spec(None)
    assert (bare.scheduler.type.value, bare.searcher.type.value) == ("fifo", "random")
