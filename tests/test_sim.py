"""The simulator: deterministic per seed, honest epoch accounting, the CLI's JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpod.benchmarks import BUILTIN
from hpod.core.plans import Suggestion
from hpod.core.spec import StudySpec
from hpod.sim import main, parse_seeds, simulate

ASHA = {"type": "asha", "min_resource": 1, "reduction_factor": 3}


def spec_for(name: str, scheduler: dict[str, object]) -> StudySpec:
    return StudySpec.from_mapping(BUILTIN[name].spec_mapping(scheduler), base_dir=Path("/tmp"))


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_same_seed_same_trace(name: str) -> None:
    b = BUILTIN[name]
    spec = spec_for(name, ASHA)
    one = simulate(spec, b.step, workers=3, budget=400, seed=7, true_value=b.true_value)
    two = simulate(spec, b.step, workers=3, budget=400, seed=7, true_value=b.true_value)
    assert one.trace == two.trace
    assert one == two
    other = simulate(spec, b.step, workers=3, budget=400, seed=8)
    assert other.trace != one.trace


def test_resumed_trials_train_only_from_their_checkpoint() -> None:
    b = BUILTIN["curves-parallel"]
    res = simulate(spec_for("curves-parallel", ASHA), b.step, workers=4, budget=600, seed=0)
    reports = [e for e in res.trace if e[1] == "report"]
    assert res.epochs_used == len(reports) == 600
    seen: set[tuple[int, float]] = set()
    for _, _, tid, level, _ in reports:
        assert (tid, level) not in seen  # no level trained twice
        seen.add((tid, level))
    resumes = [e for e in res.trace if e[1] == "launch" and e[3] > 0]
    assert resumes, "ASHA promoted nobody"
    # Paused at rungs 1, 3, 9, 27: promotions resume from exactly those.
    assert {e[3] for e in resumes} <= {1, 3, 9, 27}


def test_a_given_searcher_decides_the_configurations() -> None:
    # The quality benchmark hands every method the same configurations in the same order.
    b = BUILTIN["curves-parallel"]
    configs = [{"x": i / 1000, "y": 0.3, "z": 0.5} for i in range(1000)]
    asked: list[int] = []

    class Fixed:
        needs_history = True

        def suggest(self, number: int, history: object) -> Suggestion:
            asked.append(number)
            return Suggestion(configs[number])

    res = simulate(spec_for("curves-parallel", ASHA), b.step, budget=200, seed=3, searcher=Fixed())
    assert asked == list(range(len(asked)))
    assert res.trials == len(asked)
    assert res.best_config in configs


def test_asha_beats_random_search_on_hartmann3() -> None:
    b = BUILTIN["hartmann3"]
    kw = {"workers": 4, "budget": 1620, "true_value": b.true_value, "optimum": b.optimum}
    fifo = [
        simulate(spec_for("hartmann3", {"type": "fifo"}), b.step, seed=s, **kw) for s in range(3)
    ]  # type: ignore[arg-type]
    asha = [simulate(spec_for("hartmann3", ASHA), b.step, seed=s, **kw) for s in range(3)]  # type: ignore[arg-type]
    assert sum(r.regret or 0 for r in asha) < sum(r.regret or 0 for r in fifo)
    assert max(r.trials for r in asha) > 5 * max(r.trials for r in fifo)


def test_parse_seeds() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("1,3,5-6") == [1, 3, 5, 6]


SPEC = """
name = "sim"
command = ["true"]
[objective]
metric = "acc"
mode = "max"
[space]
lr = {{ param_type = "loguniform", range = [1e-4, 1e-1] }}
[scheduler]
type = "{kind}"
max_resource = 9
"""

USER_BENCH = """
import math

def curve(config, resource, seed):
    lr = config["lr"]
    return {"acc": 1 - abs(math.log10(lr) + 2) / 3 - 1 / (1 + resource)}, 0.5
"""


@pytest.mark.parametrize("kind", ["asha", "hyperband", "median", "fifo"])
def test_cli_prints_one_json_line_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(kind=kind))
    bench = tmp_path / "bench.py"
    bench.write_text(USER_BENCH)
    argv = [str(spec), "--benchmark", f"{bench}:curve", "--workers", "2", "--budget", "60"]
    assert main([*argv, "--seeds", "0-2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in lines] == [0, 1, 2]
    for r in lines:
        assert {
            "seed",
            "best_config",
            "best_value",
            "epochs_used",
            "trials",
            "sim_seconds",
        } <= r.keys()
        assert r["epochs_used"] <= 60
        assert 0 < r["best_value"] < 1
    assert main([*argv, "--seeds", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == lines[0]


def test_cli_as_a_module_with_a_builtin(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    b = BUILTIN["curves-noisy"]
    import tomllib  # noqa: F401  (the spec is written as TOML by hand below)

    spec.write_text(
        'name = "n"\ncommand = ["true"]\n[objective]\nmetric = "loss"\nmode = "min"\n'
        "[space]\n"
        + "".join(f'{k} = {{ param_type = "uniform", range = [0.0, 1.0] }}\n' for k in b.space)
        + '[scheduler]\ntype = "asha"\nmax_resource = 81\n'
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpod.sim",
            str(spec),
            "--benchmark",
            "curves-noisy",
            "--workers",
            "4",
            "--budget",
            "300",
            "--seeds",
            "0-1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2
    assert all(r["regret"] >= 0 for r in rows)
