"""OTX's default hpo_config.yaml, as its guide ships it, submitted against the digits trial."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("sklearn") is None,
    reason="the digits trial needs torch and scikit-learn (pip install -e '.[examples]')",
)


@needs_torch
@pytest.mark.timeout(240)
def test_otx_default_hpo_config_runs_against_digits(daemon: Any) -> None:
    folder = daemon.root / "otx"
    folder.mkdir()
    for name in ("train.py", "digits_data.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    # The guide's file as it is, and a shortened budget in hpopt's own keys after it.
    text = (EXAMPLE / "hpo_config.yaml").read_text()
    assert "qloguniform" in text
    assert "asha" in text
    assert "accuracy" in text
    spec = folder / "hpo_config.yaml"
    spec.write_text(text + "maximum_resource: 4\nnum_trials: 4\nnum_workers: 2\n")
    # What follows -- is the command: --json goes before it.
    out = daemon.ctl("preview", "--json", str(spec), "--", "python", "train.py", check=True)
    preview = json.loads(out.stdout)
    assert preview["scheduler"] == "asha"
    assert preview["max_resource"] == 4
    res = daemon.ctl("submit", str(spec), "--wait", "--", "python", "train.py", timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    study = daemon.ctl_json("show", "hpo_config")
    assert study["state"] == "completed", study
    best = study["best"]
    assert best["objective"] > 0.8, best
    lr = best["config"]["learning_parameters.learning_rate"]
    bs = best["config"]["learning_parameters.batch_size"]
    assert 0.0007 <= lr <= 0.07
    assert isinstance(bs, int)
    assert 32 <= bs <= 128
