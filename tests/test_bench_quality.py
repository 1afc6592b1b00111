"""bench/quality.py's paired comparison and table (the parts that need neither Optuna nor Syne)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from scipy.stats import wilcoxon

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_paired_is_wilcoxon_on_the_common_seeds(quality: ModuleType) -> None:
    ref = {0: 0.10, 1: 0.20, 2: 0.30, 3: 0.40, 4: 0.50, 5: 0.60}
    mine = {0: 0.15, 1: 0.22, 2: 0.41, 3: 0.38, 4: 0.70, 5: 0.61, 9: 5.0}  # seed 9: unpaired
    rel, p = quality.paired(mine, ref)
    seeds = sorted(ref)
    assert p == pytest.approx(wilcoxon([mine[s] for s in seeds], [ref[s] for s in seeds]).pvalue)
    assert rel == pytest.approx(
        (sum(mine[s] for s in seeds) - sum(ref.values())) / sum(ref.values())
    )
    assert rel > 0  # behind the reference


def test_paired_ties_and_too_few_seeds(quality: ModuleType) -> None:
    same = {0: 0.1, 1: 0.2, 2: 0.3}
    assert quality.paired(same, dict(same)) == (0.0, 1.0)
    assert quality.paired({0: 0.1}, {0: 0.2}) == (None, None)
    # A reference at the optimum on every seed: no relative difference, still a p-value.
    rel, p = quality.paired({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert rel is None
    assert p is not None


def test_table_marks_the_reference_and_compares_the_rest(quality: ModuleType) -> None:
    curve = quality.Curve
    opt = quality.ALL["slow-starters"].optimum
    ref = {s: curve(((1.0, opt + 0.1), (500.0, opt + 0.01 * (s + 1)))) for s in range(6)}
    worse = {s: curve(((1.0, opt + 0.2), (500.0, opt + 0.05 * (s + 1)))) for s in range(6)}
    results = {
        ("slow-starters", quality.DEFAULT): ref,
        ("slow-starters", "optuna Hyperband"): worse,
    }
    lines = quality.table(results, {"slow-starters": 1620.0}, seeds=6)
    assert "50 % budget" in lines[0]
    assert "vs default 100 %" in lines[0]
    assert "(reference)" in lines[2]
    assert "+400 % p=0.031" in lines[3]
    summary = quality.summary(results, {"slow-starters": 1620.0})
    assert "optuna Hyperband" in summary[2]
    assert "-80 % p=0.031" in summary[2]
