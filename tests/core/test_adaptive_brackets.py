"""The default's Hyperband weights its brackets by how well each first rung's ranks agree with
the top's, in the study's own trials (hpod.core.rungs.rank_agreement)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from hpod.benchmarks import BUILTIN
from hpod.benchmarks_suite import SUITE
from hpod.core.rungs import agreement_weights, rank_agreement
from hpod.core.spec import StudySpec
from hpod.core.study import Study
from hpod.sim import simulate


def test_rank_agreement_is_kendalls_tau() -> None:
    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert rank_agreement([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    # one pair of the six swapped: (5 - 1) / 6
    assert rank_agreement([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(4 / 6)
    assert rank_agreement([1.0], [2.0]) == 0.0


def test_agreement_weights_keep_the_brackets_without_one_and_never_reach_zero() -> None:
    w = agreement_weights([81.0, 30.0, 5.0], [0.5, -0.4, None])
    assert w == [pytest.approx(81.0 * 0.25), pytest.approx(1e-6), 5.0]


def _spec(bench: str, scheduler: dict[str, object]) -> StudySpec:
    b = SUITE.get(bench) or BUILTIN[bench]
    raw = b.spec_mapping(scheduler)
    return StudySpec.from_mapping(raw, base_dir=Path("/tmp"))


def _brackets(bench: str, adaptive: bool, seed: int) -> Counter[int]:
    b = SUITE.get(bench) or BUILTIN[bench]
    spec = _spec(bench, {})
    assert spec.scheduler.adaptive_brackets  # the default has them
    spec = dataclasses.replace(
        spec, scheduler=dataclasses.replace(spec.scheduler, adaptive_brackets=adaptive)
    )
    studies: list[Study] = []
    new = Study.new

    def keep(spec: StudySpec) -> Study:
        study = new(spec)
        studies.append(study)
        return study

    Study.new = keep  # type: ignore[method-assign,assignment]
    try:
        simulate(spec, b.step, workers=4, budget=20 * b.max_resource, seed=seed)
    finally:
        Study.new = new  # type: ignore[method-assign]
    return Counter(t.bracket for t in studies[0].trials)


def test_where_low_rungs_rank_the_wrong_way_the_aggressive_brackets_get_less() -> None:
    # slow-starters: the configurations that end best start slowest, so the first rungs rank
    # them last; the brackets starting there are given fewer trials than Hyperband's share.
    for seed in range(2):
        plain = _brackets("slow-starters", False, seed)
        adaptive = _brackets("slow-starters", True, seed)
        share = adaptive[0] / sum(adaptive.values())
        assert share < 0.5 * plain[0] / sum(plain.values()), (plain, adaptive)
        assert adaptive[max(adaptive)] > plain[max(plain)]  # more of them from the top


def test_where_low_rungs_rank_right_the_brackets_stay_near_hyperbands() -> None:
    plain = _brackets("curves-parallel", False, 0)
    adaptive = _brackets("curves-parallel", True, 0)
    assert adaptive[0] / sum(adaptive.values()) > 0.7 * plain[0] / sum(plain.values())


def test_only_the_default_adapts() -> None:
    assert not _spec("curves-parallel", {"type": "hyperband"}).scheduler.adaptive_brackets
    named = _spec("curves-parallel", {"type": "hyperband", "adaptive_brackets": True})
    assert named.scheduler.adaptive_brackets
    assert not _spec("curves-parallel", {"adaptive_brackets": False}).scheduler.adaptive_brackets
