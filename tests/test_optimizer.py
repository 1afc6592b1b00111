"""hpod.Optimizer without a daemon: the spec its keyword arguments make, the TOML it writes, its
refusals, and that importing it stays off the daemon package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hpod.core.spec import StudySpec
from hpod.errors import BadState, SpecError
from hpod.optimizer import Optimizer, to_toml


def test_keyword_arguments_make_the_spec_they_name(tmp_path: Path) -> None:
    opt = Optimizer(
        command=["python", "train.py", "--lr={lr:.1e}"],
        workdir=tmp_path,
        name="kw",
        space={
            "lr": ("loguniform", 1e-4, 1e-1),
            "width": ("qloguniform", 16, 512, 16, 2),
            "drop": {"param_type": "uniform", "range": [0.0, 0.5]},
            "bs": ("quniform", 32, 256, 32),
            "opt": ["sgd", "adam"],
            "learning_parameters.batch": ("choice", [8, 16]),
        },
        metric="val_acc",
        mode="max_global",
        resource="epoch",
        scheduler={"type": "asha", "reduction_factor": 3},
        min_resource=1,
        max_resource=27,
        searcher={"type": "random", "seed": 7},
        max_trials=30,
        max_concurrent=2,
        optimization_time="20m",
        compute_time=3600,
        trial_time="5m",
        keep_checkpoints=3,
        report_period="30s",
        env={"WANDB_MODE": "offline"},
        extra={"stop_grace_period": "2s", "report": {"top_k": 7}},
    )
    assert opt.spec_text is not None
    spec = StudySpec.from_toml(opt.spec_text, base_dir=tmp_path)
    assert spec.objective.metric == "val_acc"
    assert spec.objective.mode.value == "max_global"
    assert {p.name: p.type.value for p in spec.space.params} == {
        "lr": "loguniform",
        "width": "qloguniform",
        "drop": "uniform",
        "bs": "quniform",
        "opt": "choice",
        "learning_parameters.batch": "choice",
    }
    assert spec.scheduler.type == "asha"
    assert spec.scheduler.max_resource == 27
    assert spec.limits.max_trials == 30
    assert spec.limits.optimization_time == 1200
    assert spec.limits.compute_time == 3600
    assert spec.limits.trial_time == 300
    raw = tomllib.loads(opt.spec_text)
    assert raw["report"] == {"keep_checkpoints": 3, "period": "30s", "top_k": 7}
    assert raw["env"] == {"WANDB_MODE": "offline"}
    assert raw["stop_grace_period"] == "2s"
    assert raw["searcher"] == {"type": "random", "seed": 7}


def test_toml_round_trips_what_a_spec_can_hold() -> None:
    data = {
        "name": 'quote " and \\ and é',
        "n": 3,
        "f": 1e-5,
        "flags": [True, False],
        "inf": float("inf"),
        "t": {"a.b": {"param_type": "choice", "range": [1, "x", 2.5]}, "empty": {}},
    }
    assert tomllib.loads(to_toml(data)) == data


def test_a_bad_spec_is_refused_when_made(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        Optimizer(
            command=["python", "t.py"],
            workdir=tmp_path,
            space={"x": ("uniform", 1.0, 0.0)},
            metric="loss",
            mode="minimum",
            max_concurrent=-2,
        )
    text = str(info.value)
    assert "objective.mode" in text
    assert "limits.max_concurrent" in text
    with pytest.raises(ValueError, match=r"space\.x"):
        Optimizer(command="t", space={"x": 3}, metric="loss")


def test_reads_before_start_say_so(tmp_path: Path) -> None:
    opt = Optimizer.from_toml(
        'name = "t"\ncommand = ["true"]\n[objective]\nmetric = "m"\nmode = "min"\n'
        '[space]\nx = { param_type = "uniform", range = [0, 1] }\n',
        tmp_path,
        socket_path=str(tmp_path / "none"),
    )
    assert opt.elapsed() == -1.0
    assert not opt.is_active()
    assert not opt.reached_time_limit()
    with pytest.raises(BadState, match="not started"):
        opt.top(3)
    with pytest.raises(ValueError, match="one of them"):
        opt.set_time_limit()
    opt.close()
    with pytest.raises(BadState, match="closed"):
        opt.client  # noqa: B018


def test_import_stays_off_the_daemon_package() -> None:
    code = (
        "import sys, hpod; hpod.Optimizer; import hpod.optimizer; "
        "print(sorted(m for m in sys.modules if m.startswith('hpod.daemon') or m == 'anyio'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
