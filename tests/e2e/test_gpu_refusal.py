"""A study that asks for GPUs where the daemon has none is refused at submit, unless its spec
accepts CPU slots (issue 12, finding 7: such a study silently ran on CPU slots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpod.errors import ErrorCode
from tests import fake_nvml
from tests.e2e.specs import spec

REPO = Path(__file__).resolve().parents[2]

ENV_TRIAL = """
import json, os
from hpod import trial
with open(os.path.join(os.environ["HPOD_TRIAL_DIR"], "cuda.json"), "w") as f:
    json.dump(os.environ.get("CUDA_VISIBLE_DEVICES"), f)
trial.report(step=1, loss=float(trial.config()["x"]))
"""


def _daemon(daemon_factory: Any, gpus: list[dict[str, Any]] | None) -> Any:
    """A daemon whose NVML is the fake one: None gives it no NVML at all (the fake module
    fails nvmlInit without a layout file), a list gives it those GPUs."""
    d = daemon_factory(slots=2, start=False)
    d.env.update(HPOD_NVML_MODULE="tests.fake_nvml", PYTHONPATH=str(REPO))
    d.env.pop("HPOD_FAKE_NVML", None)
    if gpus is not None:
        layout = d.root / "gpus.json"
        layout.write_text(json.dumps({"gpus": gpus}))
        d.env["HPOD_FAKE_NVML"] = str(layout)
    d.start()
    return d


def _spec(d: Any, name: str, gpus: int, *, fallback: bool = False) -> Path:
    text = spec(
        name,
        steps=1,
        gpus=gpus,
        script="env_trial.py",
        limits="max_trials = 2",
        points="partial_grid = true",
    )
    if fallback:
        text = text.replace("trials_per_gpu = 1", "trials_per_gpu = 1\ncpu_fallback = true")
    path = d.write_spec(name, text)
    (path.parent / "env_trial.py").write_text(ENV_TRIAL)
    return path


def test_a_gpu_study_on_a_daemon_without_nvml_is_refused_at_submit_naming_the_fix(
    daemon_factory: Any,
) -> None:
    d = _daemon(daemon_factory, None)
    res = d.ctl("submit", str(_spec(d, "wants-gpu", 1)))
    assert res.returncode == ErrorCode.NO_GPUS.exit_status, res.stdout + res.stderr
    assert "asks for 1 GPU per trial" in res.stderr
    assert "no GPU" in res.stderr
    assert "cpu_fallback = true" in res.stderr  # the fix, named
    assert "gpus_per_trial = 0" in res.stderr
    assert "Traceback" not in res.stderr
    assert d.ctl_json("ls") == []  # nothing was made of it


def test_a_gpu_study_that_accepts_cpu_slots_runs_on_them_and_show_says_so(
    daemon_factory: Any,
) -> None:
    d = _daemon(daemon_factory, None)
    sid = d.ctl_json("submit", str(_spec(d, "either", 1, fallback=True)), "--wait")["study"]
    trials = d.ctl_json("trials", sid)
    assert [t["state"] for t in trials] == ["completed", "completed"]
    for t in trials:
        folder = d.state_dir / "studies" / sid / "trials" / str(t["trial"])
        assert json.loads((folder / "cuda.json").read_text()) == ""  # a CPU slot: no GPU
    detail = d.ctl_json("show", sid)
    assert detail["devices"] == {
        "kind": "cpu",
        "reason": "asks for 1 GPU per trial; this daemon has no GPU (NVML is not available), "
        "and the spec accepts CPU slots (cpu_fallback = true)",
    }
    assert "devices: CPU slots: asks for 1 GPU per trial" in d.ctl("show", sid).stdout


def test_a_gpu_study_where_there_are_gpus_runs_on_them_also_with_cpu_fallback(
    daemon_factory: Any,
) -> None:
    layout = [fake_nvml.gpu(0)]
    d = _daemon(daemon_factory, layout)
    sid = d.ctl_json("submit", str(_spec(d, "gpu", 1, fallback=True)), "--wait")["study"]
    trials = d.ctl_json("trials", sid)
    assert [t["state"] for t in trials] == ["completed", "completed"]
    folder = d.state_dir / "studies" / sid / "trials" / "0"
    assert json.loads((folder / "cuda.json").read_text()) == layout[0]["uuid"]
    assert d.ctl_json("show", sid)["devices"]["kind"] == "gpu"
    # More GPUs per trial than the daemon may use could never start: refused, not left waiting.
    res = d.ctl("submit", str(_spec(d, "greedy", 2)))
    assert res.returncode == ErrorCode.NO_GPUS.exit_status, res.stderr
    assert "asks for 2 GPUs per trial; this daemon may use 1" in res.stderr
