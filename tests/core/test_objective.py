from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpod.core.objective import Objective, ObjectiveMode

NAN = math.nan


def obj(mode: str) -> Objective:
    return Objective(metric="acc", mode=ObjectiveMode(mode), resource="epoch")


def test_properties():
    assert obj("max").maximize
    assert not obj("max").is_global
    assert obj("max_global").maximize
    assert obj("max_global").is_global
    assert not obj("min").maximize
    assert obj("min_global").is_global
    assert obj("max").worst() == -math.inf
    assert obj("min").worst() == math.inf


def test_better_follows_the_direction():
    assert obj("max").better(2.0, 1.0)
    assert not obj("max").better(1.0, 2.0)
    assert not obj("max").better(1.0, 1.0)
    assert obj("min").better(1.0, 2.0)
    assert obj("min_global").better(1.0, 2.0)


@pytest.mark.parametrize("mode", list(ObjectiveMode))
def test_nan_is_never_better_and_anything_beats_it(mode):
    o = obj(mode)
    assert not o.better(NAN, 1.0)
    assert not o.better(NAN, NAN)
    assert o.better(1.0, NAN)
    assert o.better(o.worst(), NAN)


def test_summary():
    values = [0.5, 0.9, 0.7]
    assert obj("max").summary(values) == 0.7
    assert obj("min").summary(values) == 0.7
    assert obj("max_global").summary(values) == 0.9
    assert obj("min_global").summary(values) == 0.5
    assert math.isnan(obj("max").summary([]))
    assert math.isnan(obj("max_global").summary([]))
    assert obj("max_global").summary([NAN, 0.3, NAN]) == 0.3
    assert math.isnan(obj("max").summary([0.3, NAN]))
    assert math.isnan(obj("min_global").summary([NAN, NAN]))


def test_sort_key_ranks_nan_last():
    o = obj("max")
    ranked = sorted([0.2, NAN, 0.9, 0.5], key=o.sort_key)
    assert ranked[:3] == [0.9, 0.5, 0.2]
    assert math.isnan(ranked[3])
    m = obj("min")
    ranked = sorted([0.2, NAN, 0.9, -1.0], key=m.sort_key)
    assert ranked[:3] == [-1.0, 0.2, 0.9]
    assert m.sort_key(NAN) == math.inf


@given(
    st.sampled_from(list(ObjectiveMode)),
    st.floats(allow_nan=True, allow_infinity=False),
    st.floats(allow_nan=True, allow_infinity=False),
)
def test_sort_key_agrees_with_better(mode, a, b):
    o = obj(mode)
    if o.better(a, b):
        assert o.sort_key(a) < o.sort_key(b)


def test_to_dict():
    assert obj("min_global").to_dict() == {
        "metric": "acc",
        "mode": "min_global",
        "resource": "epoch",
    }
