"""The wider benchmark suite: deterministic, its stated optima, the properties each kind claims."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import spearmanr

from hpod import benchmarks_suite as bs
from hpod.benchmarks import BUILTIN
from hpod.core.space import SearchSpace
from hpod.core.spec import StudySpec
from hpod.sim import load_benchmark, simulate

pytestmark = pytest.mark.timeout(120)

ASHA = {"type": "asha", "min_resource": 1, "reduction_factor": 3}


def samples(name: str, n: int, seed: int = 0) -> list[dict[str, object]]:
    space = SearchSpace.from_mapping(dict(bs.SUITE[name].space))
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def test_the_suite_is_all_new_names_and_all_has_both() -> None:
    assert set(bs.SUITE) == {"powerlaw", "slow-starters", "cost-aware-7d", "lcdb-fried"}
    assert not set(bs.SUITE) & set(BUILTIN)
    assert bs.ALL == {**BUILTIN, **bs.SUITE}
    for name in bs.SUITE:
        assert load_benchmark(name) is bs.SUITE[name]


@pytest.mark.parametrize("name", sorted(bs.SUITE))
def test_reports_are_deterministic_and_seeded(name: str) -> None:
    b = bs.SUITE[name]
    configs = samples(name, 20)
    levels = [1, 2, b.max_resource // 2, b.max_resource]
    one = [b(c, t, 3) for c in configs for t in levels]
    # Another order of the same calls gives the same answers.
    two = [b(c, t, 3) for c in reversed(configs) for t in reversed(levels)]
    assert json.dumps(one) == json.dumps(list(reversed(two)))
    other = [b(c, t, 4) for c in configs for t in levels]
    assert json.dumps(other) != json.dumps(one)
    for metrics, seconds in one:
        assert set(metrics) == {b.metric}
        assert seconds > 0


@pytest.mark.parametrize("name", sorted(bs.SUITE))
def test_same_seed_same_trace_in_the_simulator(name: str) -> None:
    b = bs.SUITE[name]
    spec = StudySpec.from_mapping(b.spec_mapping(ASHA), base_dir=Path("/tmp"))
    budget = 5 * b.max_resource
    one = simulate(spec, b.step, budget=budget, seed=1, true_value=b.true_value, optimum=b.optimum)
    two = simulate(spec, b.step, budget=budget, seed=1, true_value=b.true_value, optimum=b.optimum)
    assert one == two
    assert one.trace == two.trace
    assert one.regret is not None
    assert one.regret >= 0


@pytest.mark.parametrize("name", sorted(bs.SUITE))
def test_no_sampled_configuration_beats_the_stated_optimum(name: str) -> None:
    b = bs.SUITE[name]
    assert b.true_value is not None
    assert b.optimum is not None
    values = [b.true_value(c) for c in samples(name, 3000, seed=11)]
    assert all(math.isfinite(v) for v in values)
    assert min(values) >= b.optimum
    # ... and the optimum is not a loose bound: the best of 3000 draws is near it.
    assert min(values) - b.optimum < 0.03


def test_powerlaw_optimum_is_its_argmin_and_local_search_does_not_beat_it() -> None:
    b = bs.SUITE["powerlaw"]
    assert b.true_value is not None
    assert b.true_value(bs.POWERLAW_ARGMIN) == pytest.approx(bs.POWERLAW_OPTIMUM, abs=1e-12)
    space = SearchSpace.from_mapping(dict(b.space))

    def f(u: np.ndarray) -> float:
        config = space.decode(np.clip(u, 0.0, 1.0))
        assert b.true_value is not None
        return b.true_value(config)

    rng = np.random.default_rng(5)
    for start in [space.encode(bs.POWERLAW_ARGMIN), *rng.random((15, 4))]:
        res = minimize(f, start, method="L-BFGS-B", bounds=[(0.0, 1.0)] * 4)
        assert res.fun >= bs.POWERLAW_OPTIMUM - 1e-9


def test_cost_aware_optimum_is_reached_by_its_argmin() -> None:
    b = bs.SUITE["cost-aware-7d"]
    assert b.true_value is not None
    assert b.true_value(bs.COST_ARGMIN) == pytest.approx(bs.COST_OPTIMUM, abs=1e-8)
    assert SearchSpace.from_mapping(dict(b.space)).encode(bs.COST_ARGMIN) is not None


def test_slow_starters_rank_the_other_way_round_at_low_levels() -> None:
    b = bs.SUITE["slow-starters"]
    assert b.true_value is not None
    configs = samples("slow-starters", 400, seed=2)
    true = [b.true_value(c) for c in configs]
    for level in (1, 3):
        observed = [b(c, level, 0)[0]["loss"] for c in configs]
        assert spearmanr(observed, true).statistic < -0.5
    # The curves cross: by level 27 the ranking is the final one's.
    late = [b(c, 27, 0)[0]["loss"] for c in configs]
    assert spearmanr(late, true).statistic > 0.5
    # The optimum is the centre, and it starts worse than a far configuration.
    centre = {f"x{i}": x for i, x in enumerate(bs.SLOW_CENTER)}
    assert b.true_value(centre) == pytest.approx(b.optimum, abs=1e-12)
    far = {"x0": 1.0, "x1": 0.0, "x2": 1.0, "x3": 0.0}
    assert bs._slow_loss(centre, 1) > bs._slow_loss(far, 1)
    assert bs._slow_loss(centre, 81) < bs._slow_loss(far, 81)


def test_cost_aware_has_divergent_and_worsening_regions_and_config_dependent_costs() -> None:
    b = bs.SUITE["cost-aware-7d"]
    assert b.true_value is not None
    configs = samples("cost-aware-7d", 1000, seed=3)
    curves = [[b(c, t, 0)[0]["loss"] for t in range(1, 82)] for c in configs]
    diverged = [c for c, curve in zip(configs, curves, strict=True) if math.isnan(curve[-1])]
    assert 0.05 < len(diverged) / len(configs) < 0.4
    for c in diverged:
        assert b.true_value(c) == bs.CHANCE
    # Some curves that do not diverge get worse towards the end.
    worse = [
        curve for curve in curves if not math.isnan(curve[-1]) and min(curve) < curve[-1] - 0.02
    ]
    assert len(worse) > 10
    # Every optimizer appears, and SGD holds the best value but Adam the better average.
    regret = {o: [b.true_value(c) for c in configs if c["optimizer"] == o] for o in bs.OPTIMIZERS}
    assert all(len(v) > 200 for v in regret.values())
    assert min(regret["sgd"]) < min(regret["adam"])
    assert np.mean(regret["adam"]) < np.mean(regret["sgd"])
    seconds = [b(c, 1, 0)[1] for c in configs]
    assert max(seconds) > 10 * min(seconds)


def test_lcdb_replay_is_the_data_file() -> None:
    b = bs.SUITE["lcdb-fried"]
    with gzip.open(bs.LCDB_FILE, "rt") as f:
        data = json.load(f)
    assert data["openmlid"] == 901
    assert data["source"].startswith("lcdb 0.1.0 sdist")
    learners = data["learners"]
    assert len(learners) == 20
    assert b.space["learner"]["range"] == learners
    assert b.max_resource == len(data["anchors"]) == 24
    assert data["anchors"][0] == 16
    assert b.true_value is not None
    finals = {name: b.true_value({"learner": name}) for name in learners}
    assert b.optimum == min(finals.values())
    assert min(finals, key=finals.__getitem__) == "MLPClassifier"
    # A trial replays one split: each report is one of the 25 recorded errors at its anchor.
    i = learners.index("SVC_rbf")
    for level in (1, 12, 24):
        metrics, seconds = b({"learner": "SVC_rbf"}, level, 7)
        assert metrics["error"] in data["error"][i][level - 1]
        assert seconds == 1.0 + data["traintime"][i][level - 1]
    # Different seeds replay different splits (for some learner at least).
    curves = {s: [b({"learner": name}, 24, s)[0]["error"] for name in learners] for s in range(5)}
    assert len({tuple(c) for c in curves.values()}) > 1
