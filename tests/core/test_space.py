from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpod.core.space import Param, ParamType, SearchSpace
from hpod.errors import SpecError

DESIGN_SPACE = {
    "lr": {"param_type": "loguniform", "range": [1e-4, 1e-1]},
    "width": {"param_type": "qloguniform", "range": [16, 512, 16, 2]},
    "drop": {"param_type": "uniform", "range": [0.0, 0.5]},
    "bs": {"param_type": "quniform", "range": [32, 256, 32]},
    "opt": {"param_type": "choice", "range": ["sgd", "adam"]},
}


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_mapping(DESIGN_SPACE)


def test_reads_every_range_form(space):
    lr, width, drop, bs, opt = space.params
    assert lr.type is ParamType.LOGUNIFORM
    assert (lr.low, lr.high, lr.base) == (1e-4, 1e-1, 10.0)
    assert width.type is ParamType.QLOGUNIFORM
    assert (width.low, width.high, width.step, width.base) == (16, 512, 16, 2)
    assert (drop.low, drop.high) == (0.0, 0.5)
    assert bs.step == 32
    assert opt.choices == ("sgd", "adam")
    assert space.names == ("lr", "width", "drop", "bs", "opt")
    assert space.dim == 6


def test_loguniform_base_is_optional_third_value():
    p = Param.from_mapping("lr", {"param_type": "loguniform", "range": [1e-3, 1, 2]})
    assert p.base == 2


def test_every_problem_is_listed_with_its_path():
    raw = {
        "lr": {"param_type": "loguniform", "range": [0, 1]},
        "x": {"param_type": "unifrom", "range": [0, 1]},
        "y": {"param_type": "uniform", "range": [1, 0]},
        "z": {"param_type": "quniform", "range": [0, 1]},
        "c": {"param_type": "choice", "range": []},
        "w": {"param_type": "uniform", "rnage": [0, 1]},
        "q": {"param_type": "qloguniform", "range": [1, 10, 0]},
        "b": {"param_type": "loguniform", "range": [1, 10, 1]},
        "s": {"param_type": "uniform", "range": ["a", 1]},
        "trial_id": {"param_type": "uniform", "range": [0, 1]},
        "n": 3,
    }
    with pytest.raises(SpecError) as info:
        SearchSpace.from_mapping(raw)
    problems = info.value.problems
    expected = [
        "space.lr.range: lower bound 0 is not > 0 for loguniform",
        "space.x.param_type: 'unifrom' is not one of uniform, quniform, loguniform, "
        "qloguniform, choice; did you mean 'uniform'?",
        "space.y.range: upper bound 0 is not > lower bound 1",
        "space.z.range: quniform takes [min, max, step], got 2 values",
        "space.c.range: choice needs at least one value",
        "space.w.rnage: unknown key; did you mean 'range'?",
        "space.w.range: missing",
        "space.q.range: step 0 is not a number > 0",
        "space.b.range: log base 1 is not a number > 0 other than 1",
        "space.s.range[0]: 'a' is not a number",
        "space.trial_id: the name 'trial_id' is reserved for the {trial_id} placeholder",
    ]
    for line in expected:
        assert line in problems
    assert any(p.startswith("space.n: expected a table") for p in problems)
    assert len(problems) == len(expected) + 1


def test_empty_or_non_table_space():
    with pytest.raises(SpecError, match="at least one parameter"):
        SearchSpace.from_mapping({})
    with pytest.raises(SpecError, match="expected a table"):
        SearchSpace.from_mapping([1, 2])


def test_duplicate_choice_is_a_problem():
    with pytest.raises(SpecError, match=r"space.c.range\[2\]: 'a' is listed twice"):
        SearchSpace.from_mapping({"c": {"param_type": "choice", "range": ["a", "b", "a"]}})


def test_choice_keeps_true_and_one_apart():
    p = Param.choice("c", [1, True, "1"])
    assert p.encode(True) == [0.0, 1.0, 0.0]
    assert p.encode(1) == [1.0, 0.0, 0.0]
    assert p.contains("1")
    assert not p.contains(1.5)
    assert not p.contains(False)


def test_direct_construction_is_checked():
    with pytest.raises(ValueError, match="not > 0"):
        Param.loguniform("lr", 0, 1)
    with pytest.raises(ValueError, match="unique"):
        SearchSpace.of(Param.uniform("a", 0, 1), Param.uniform("a", 0, 2))


# -- sampling -----------------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def params(draw: st.DrawFn) -> Param:
    kind = draw(st.sampled_from(list(ParamType)))
    if kind is ParamType.CHOICE:
        values = draw(
            st.lists(
                st.one_of(st.text(max_size=5), st.integers(), st.booleans()),
                min_size=1,
                max_size=6,
                unique_by=lambda v: (type(v), v),
            )
        )
        return Param.choice("p", values)
    if kind.is_log:
        low = draw(positive)
        high = low * draw(st.floats(min_value=1.01, max_value=1e6))
    else:
        low = draw(finite)
        high = low + draw(st.floats(min_value=1e-3, max_value=1e6))
    step = None
    if kind.is_quantized:
        integral = draw(st.booleans())
        if integral:
            low, high = math.floor(low) + (1 if kind.is_log else 0), math.ceil(high) + 1
            step = float(draw(st.integers(min_value=1, max_value=max(1, int(high - low)))))
        else:
            step = (high - low) * draw(st.floats(min_value=1e-3, max_value=1.0))
    base = draw(st.sampled_from([10.0, 2.0, math.e]))
    return Param("p", kind, float(low), float(high), step, base)


@given(params(), st.integers(min_value=0, max_value=2**32))
@settings(max_examples=300)
def test_samples_stay_in_range_and_round_trip(p, seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        v = p.sample(rng)
        assert p.contains(v), (p, v)
        if p.is_int:
            assert type(v) is int
        enc = p.encode(v)
        assert len(enc) == p.encoded_len
        assert all(0.0 <= x <= 1.0 for x in enc)
        back = p.decode(enc)
        if isinstance(v, float):
            assert back == pytest.approx(v, rel=1e-9, abs=1e-9)
        else:
            assert back == v
            assert type(back) is type(v)


@given(params(), st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6))
def test_decode_of_anything_is_valid(p, raw):
    seq = (raw * p.encoded_len)[: p.encoded_len]
    if p.type is ParamType.CHOICE and any(math.isnan(x) for x in seq):
        return  # argmax of NaN is not a meaningful request
    assert p.contains(p.decode(seq))


def test_loguniform_samples_cover_orders_of_magnitude():
    p = Param.loguniform("lr", 1e-5, 1e-1)
    rng = np.random.default_rng(0)
    values = np.array([p.sample(rng) for _ in range(2000)])
    decades = np.floor(np.log10(values))
    for d in (-5, -4, -3, -2):
        assert 0.2 < np.mean(decades == d) < 0.3


def test_log_types_encode_in_log_space():
    p = Param.loguniform("lr", 1e-4, 1e-0)
    assert p.encode(1e-2) == [pytest.approx(0.5)]
    assert p.decode([0.25]) == pytest.approx(1e-3)


def test_quantized_values_and_int_types():
    bs = Param.quniform("bs", 32, 256, 32)
    assert bs.is_int
    assert bs.decode([0.5]) == 160
    assert type(bs.decode([0.5])) is int
    assert bs.grid_values(100) == [32, 64, 96, 128, 160, 192, 224, 256]
    drop = Param.quniform("drop", 0.0, 0.5, 0.1)
    assert not drop.is_int
    assert drop.grid_values(10) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert drop.decode([0.62]) == 0.3
    assert drop.contains(0.3)
    assert not drop.contains(0.25)
    # Anchored at the lower bound: every value stays inside even when the step overshoots.
    odd = Param.quniform("k", 1, 10, 4)
    assert odd.grid_values(10) == [1, 5, 9]
    assert odd.decode([1.0]) == 9
    width = Param.qloguniform("width", 16, 512, 16, 2)
    assert width.is_int
    assert width.decode([0.0]) == 16
    assert width.decode([1.0]) == 512
    assert width.normalize(128.0) == 128
    assert type(width.normalize(128.0)) is int


def test_quantized_sampling_reaches_both_ends():
    p = Param.quniform("k", 0, 3, 1)
    rng = np.random.default_rng(1)
    seen = {p.sample(rng) for _ in range(200)}
    assert seen == {0, 1, 2, 3}


def test_grid_values():
    assert Param.uniform("x", 0, 1).grid_values(3) == [0.0, 0.5, 1.0]
    assert Param.uniform("x", 0, 1).grid_values(1) == [0.5]
    assert Param.loguniform("lr", 1e-4, 1e-1).grid_values(4) == pytest.approx(
        [1e-4, 1e-3, 1e-2, 1e-1]
    )
    assert Param.loguniform("lr", 1e-4, 1e-1).grid_values(2) == [1e-4, 1e-1]
    assert Param.choice("o", ["a", "b", "c"]).grid_values(2) == ["a", "b", "c"]
    # A quantized parameter is its whole lattice, whatever n (tests/core/test_grid.py).
    many = Param.quniform("k", 0, 100, 1).grid_values(5)
    assert many == list(range(101))
    width = Param.qloguniform("w", 16, 512, 16).grid_values(3)
    assert width[0] == 16
    assert width[-1] == 512
    with pytest.raises(ValueError, match=">= 1"):
        Param.uniform("x", 0, 1).grid_values(0)


def test_space_encode_decode_round_trip(space):
    rng = np.random.default_rng(7)
    for _ in range(50):
        config = space.sample(rng)
        vec = space.encode(config)
        assert vec.shape == (space.dim,)
        assert vec.dtype == np.float64
        back = space.decode(vec)
        assert back.keys() == config.keys()
        for k in config:
            assert (
                back[k] == pytest.approx(config[k])
                if isinstance(config[k], float)
                else (back[k] == config[k])
            )
    with pytest.raises(ValueError, match="6 numbers"):
        space.decode([0.5])
    with pytest.raises(ValueError, match="no 'opt'"):
        space.encode({"lr": 0.01, "width": 16, "drop": 0.1, "bs": 32})


def test_same_seed_same_sample(space):
    a = space.sample(np.random.default_rng(3))
    b = space.sample(np.random.default_rng(3))
    assert a == b


def test_grid_is_the_cartesian_product_in_a_stable_order():
    s = SearchSpace.of(Param.choice("a", ["x", "y"]), Param.quniform("b", 0, 2, 1))
    assert s.grid(5) == [
        {"a": "x", "b": 0},
        {"a": "x", "b": 1},
        {"a": "x", "b": 2},
        {"a": "y", "b": 0},
        {"a": "y", "b": 1},
        {"a": "y", "b": 2},
    ]
    assert s.grid(5) == s.grid(5)


def test_problems_of_a_point(space):
    good = {"lr": 0.01, "width": 128, "drop": 0.1, "bs": 64, "opt": "adam"}
    assert space.problems(good, "p") == []
    assert space.problems({**good, "width": 128.0}, "p") == []
    bad = {"lr": 5.0, "width": 100, "drop": "x", "opt": "rmsprop", "lrr": 1}
    problems = space.problems(bad, "searcher.points_to_evaluate[0]")
    assert problems == [
        "searcher.points_to_evaluate[0]: missing 'bs'",
        "searcher.points_to_evaluate[0].lrr: unknown key; did you mean 'lr'?",
        "searcher.points_to_evaluate[0].lr: 5 is outside the range [0.0001, 0.1]",
        "searcher.points_to_evaluate[0].width: 100 is not on the grid 16 + k * 16",
        "searcher.points_to_evaluate[0].drop: expected a number, got 'x'",
        "searcher.points_to_evaluate[0].opt: 'rmsprop' is not one of 'sgd', 'adam'",
    ]
    assert space.problems(3, "p") == ["p: expected a table of parameter values, got int"]


def test_to_dict_reads_back(space):
    assert SearchSpace.from_mapping(space.to_dict()) == space
