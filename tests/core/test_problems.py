"""The every-problem-by-key-path reader that the study spec and the daemon's config share."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from hpod.core.problems import Section, did_you_mean, is_number, type_name, unknown_key
from hpod.errors import SpecError, problems_message


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"


def test_a_section_lists_every_problem_and_falls_back_to_the_defaults() -> None:
    problems: list[str] = []
    raw = {"n": 0, "x": "big", "t": "soon", "c": "gren", "s": "", "sub": 3, "extra": 1}
    sec = Section(raw, "top", problems, ("n", "x", "t", "c", "s", "sub"))
    assert sec.integer("n", default=4, minimum=1) == 4
    assert sec.number("x", default=1.5) == 1.5
    assert sec.duration("t", default=None) is None
    assert sec.choice("c", Colour, Colour.RED) is Colour.RED
    assert sec.string("s", default="d") == "d"
    assert sec.table("sub") is None
    assert sec.string("missing", required=True) is None
    sec.finish()
    assert problems[:2] == [
        "top.n: must be a positive integer, got 0",
        "top.x: must be a number, got 'big'",
    ]
    assert problems[2].startswith("top.t: cannot read 'soon'")
    assert problems[3:] == [
        "top.c: 'gren' is not one of red, green; did you mean 'green'?",
        "top.s: must be a non-empty string, got ''",
        "top.sub: expected a table, got int 3",
        "top.missing: missing",
        "top.extra: unknown key; expected one of n, x, t, c, s, sub",
    ]


def test_values_make_a_readers_value_error_that_keys_problem() -> None:
    def positive(value: Any) -> int:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"expected a positive integer, got {type_name(value)}")
        return value

    problems: list[str] = []
    sec = Section({"a": 2, "b": "3", "c": 1}, "gpu", problems, ("a", "b"))
    # The bad key is left out, so the model's default stands; the unknown one waits for finish.
    assert sec.values({"a": positive, "b": positive}) == {"a": 2}
    assert problems == ["gpu.b: expected a positive integer, got str '3'"]
    sec.finish()
    assert problems[1] == "gpu.c: unknown key; expected one of a, b"


def test_unknown_keys_and_numbers() -> None:
    assert unknown_key("", "sockett", ["socket", "state_dir"]) == (
        "sockett: unknown key; did you mean 'socket'?"
    )
    assert unknown_key("space.x", "rnge", ["param_type", "range"]).startswith("space.x.rnge:")
    assert did_you_mean("zzz", ["socket"]) == ""
    assert is_number(1)
    assert is_number(0.5)
    assert not is_number(True)
    assert not is_number("1")


def test_one_wording_for_every_list_of_problems() -> None:
    assert (
        problems_message("etc/hpod.toml", ["a: bad"]) == "etc/hpod.toml has 1 problem:\n  - a: bad"
    )
    err = SpecError(["a: bad", "b: worse"])
    assert err.message == problems_message("the study spec", ["a: bad", "b: worse"])
    assert err.message.startswith("the study spec has 2 problems:\n  - a: bad\n  - b: worse")
    with pytest.raises(SpecError, match="1 problem:"):
        raise SpecError(["x"])
