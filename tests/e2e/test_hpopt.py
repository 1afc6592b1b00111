"""hpopt's usage loops against a real daemon, with `from hpod.compat import hpopt`."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hpopt" / "branin.py"


@pytest.mark.timeout(180)
def test_hpopts_sequential_loop_runs_with_its_import_changed(daemon: Any) -> None:
    env = dict(daemon.env, HPOD_SOCKET=daemon.socket)
    res = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        cwd=daemon.root,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    best_line = next(line for line in res.stdout.splitlines() if line.startswith("best hp:"))
    best = ast.literal_eval(best_line.split(":", 1)[1].strip())
    assert set(best) == {"a", "b"}
    detail = daemon.ctl_json("show", "my_hpo_branin")
    assert detail["state"] == "completed", detail
    assert detail["total_trials"] == 20
    assert detail["trials"].get("failed", 0) == 0
    assert detail["best"]["config"] == best
    # Branin's minima are 0.397887; 20 trials of BO get within a few units of one.
    assert -detail["best"]["objective"] < 5.0, detail["best"]
    trials = [line for line in res.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials) == 20


@pytest.mark.timeout(120)
def test_parallel_samples_asha_report_oom_and_resume(daemon: Any, tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(
        """
import json, sys
from multiprocessing import get_context
from hpod.compat import hpopt

def trainer(config):
    bs = config["params"]["bs"]
    if bs > 32:
        hpopt.reportOOM(config)
        return
    for _ in range(config["iterations"]):
        score = 1.0 - (config["params"]["lr"] - 0.3) ** 2
        if hpopt.report(config=config, score=score) == hpopt.Status.STOP:
            break

space = {"lr": hpopt.search_space("uniform", [0.0, 1.0]),
          "bs": {"param_type": "choice", "range": [16, 64, 128]}}
hpo = hpopt.create(search_alg="asha", search_space=space, num_trials=6, max_iterations=4,
                   num_workers=2, batch_size_name="bs", metric="acc", save_path="hpo/par")
ctx = get_context("fork")
rounds = 0
while True:
    configs = hpo.get_next_samples()
    if not configs:
        break
    rounds += 1
    procs = [ctx.Process(target=trainer, args=(c,)) for c in configs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
best = hpo.get_best_config(wait=True)
again = hpopt.create(search_alg="asha", search_space=space, num_trials=6, max_iterations=4,
                     metric="acc", save_path="hpo/par", resume=True)
print(json.dumps({"best": best, "rounds": rounds, "study": hpo.study,
                   "again": again.study, "more": again.get_next_sample()}))
"""
    )
    env = dict(daemon.env, HPOD_SOCKET=daemon.socket)
    res = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["again"] == out["study"]  # resume=True: the same study, over: no more samples
    assert out["more"] is None
    assert out["best"]["bs"] <= 32
    detail = daemon.ctl_json("show", out["study"])
    assert detail["state"] == "completed", detail
    assert detail["failures"] == []
    retried = {r["trial"] for r in detail["oom_retries"]}
    assert retried, detail
    # bs is a choice of 16, 64, 128: each retry takes the largest choice at or under half.
    assert all(r["to"] == {128: 64, 64: 16}[r["from"]] for r in detail["oom_retries"])
