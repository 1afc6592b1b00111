"""One code enum, one exception tree: every code comes back off the wire as its own class."""

from __future__ import annotations

import json
import math

import pytest

from hpod import wire
from hpod.errors import (
    ErrorCode,
    HpodError,
    LineTooLong,
    ParseError,
    ProtocolError,
)


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.INVALID_SPEC])
def test_an_error_read_off_the_wire_is_the_class_of_its_code(code):
    exc = HpodError.from_wire({"code": int(code), "message": "m"})
    assert exc.code is code
    assert type(exc).code is code or type(exc) is HpodError
    assert exc.code.exit_status >= 3


def test_the_protocol_errors_are_leaves_a_caller_can_catch():
    with pytest.raises(LineTooLong) as too_long:
        wire.loads(b"x" * (wire.MAX_LINE + 1))
    assert isinstance(too_long.value, ProtocolError)
    assert too_long.value.code is ErrorCode.LINE_TOO_LONG
    with pytest.raises(ParseError) as bad:
        wire.loads(b"{nope")
    assert bad.value.code is ErrorCode.PARSE_ERROR


def test_a_wire_line_tags_non_finite_floats_and_leaves_the_rest_as_json() -> None:
    plain = wire.result_line(1, {"trials": [{"objective": 0.5, "curve": [[1.0, 2]]}]})
    assert json.loads(plain) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"trials": [{"objective": 0.5, "curve": [[1.0, 2]]}]},
    }
    odd = wire.loads(wire.result_line(2, {"a": [float("nan"), float("inf")], "b": 1}))
    assert math.isnan(odd["result"]["a"][0])
    assert odd["result"]["a"][1] == math.inf
