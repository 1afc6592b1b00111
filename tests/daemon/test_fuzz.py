"""Bad requests to a real daemon: every one gets its own error code, and none an internal error,
a traceback in the log, a closed connection, or memory or descriptors the daemon keeps.

One `hpod serve` process for the module (tests/daemon/fuzz_lines.py starts it, with one running
trial whose token the report methods use), its JSON log read after each test. The hypothesis
properties are bounded for CI (the profile in tests/conftest.py is derandomized); bench/fuzz.py
runs the same generators for 10^5+ lines.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hpod.daemon.refusals import RefusalLog
from hpod.errors import InvalidParams, ParseError
from tests.daemon import fuzz_lines as fz
from tests.daemon.fuzz_lines import Raw, Target, Wire, code_of, request, tagged

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")

# A connection and the daemon are shared by the examples on purpose: the point is that both keep
# serving. Function-scoped fixtures are fine here for that reason.
PROPERTY = settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t = fz.start_target(Path(tempfile.mkdtemp(prefix="hpod")))
    yield t
    log = t.log_since(0)
    rc = t.stop()
    assert rc == 0, f"the daemon exited {rc}:\n{log[-4000:]}"


@pytest.fixture
def wire(target: Target) -> Iterator[Wire]:
    """A connection of the test's own; after it, the daemon's log since the test began holds
    no traceback, and the daemon still runs."""
    offset = target.log_size()
    with Wire(target.socket) as conn:
        yield conn
    assert target.alive(), "the daemon exited"
    problems = fz.log_problems(target.log_since(offset))
    assert not problems, "\n".join(problems[:5])


def send(wire: Wire, *lines: bytes) -> list[dict[str, Any]]:
    answers = wire.exchange(lines)
    bad = fz.internal_errors(answers)
    assert not bad, bad[:3]
    return answers


def refused(wire: Wire, line: bytes) -> dict[str, Any]:
    """The one answer to ``line``, which must be an error; its ``error`` object."""
    (answer,) = send(wire, line)
    assert "error" in answer, answer
    error: dict[str, Any] = answer["error"]
    return error


def assert_code(error: dict[str, Any], name: str, *words: str) -> None:
    assert code_of({"error": error}) == name, error
    for word in words:
        assert word in error["message"], error["message"]


# -- the nine inputs of issue 12 -----------------------------------------------------------------


def test_an_integer_of_4301_digits_is_a_number_out_of_range(wire: Wire, target: Target) -> None:
    for digits in (4301, 5000, 100_000):
        line = request("logs", {"study": target.aim.study, "trial": Raw("9" * digits)})
        assert_code(refused(wire, line), "NUMBER_OUT_OF_RANGE", f"{digits} digits")
    # A number a double cannot hold is refused however it is written.
    for text in ("1" + "0" * 309, "-" + "9" * 400, "1e400", "-1e999"):
        line = request("ping", {"x": Raw(text)})
        assert_code(refused(wire, line), "NUMBER_OUT_OF_RANGE")


def test_json_nested_1000_deep_is_refused_as_nested_too_deeply(wire: Wire) -> None:
    for depth in (65, 999, 1000, 5000, 100_000):
        for kind in "[{":
            line = request("ping", {"x": fz._nested(depth, kind)})
            assert_code(refused(wire, line), "NESTING_TOO_DEEP", "64")
    # Only brackets, never closed: deep too, and still not a crash.
    assert_code(refused(wire, b"[" * 100_000), "NESTING_TOO_DEEP")
    # 60 levels of params are fine.
    assert "result" in send(wire, request("ping", {"x": fz._nested(60, "[")}))[0]


def test_a_toml_array_nested_5000_deep_in_submit_is_a_spec_error(
    wire: Wire, target: Target
) -> None:
    for n in (5000, 999, 100):
        for kind in ("array", "table", "dotted", "quoted", "header"):
            spec = fz.deep_toml(n, kind)
            line = request("submit", {"spec": spec, "base_dir": target.aim.base_dir})
            assert_code(refused(wire, line), "INVALID_SPEC", "nest")
    # A dotted key of 200,000 parts: tomllib would take minutes of the event loop (its time is
    # quadratic in the parts); it is refused before it is read.
    started = time.monotonic()
    spec = fz.deep_toml(200_000, "dotted")
    line = request("submit", {"spec": spec, "base_dir": target.aim.base_dir})
    assert_code(refused(wire, line), "INVALID_SPEC", "nest")
    assert time.monotonic() - started < 5.0


def test_a_tagged_float_holding_a_list_is_an_invalid_request(wire: Wire) -> None:
    for inside in ([1, 2], {"a": 1}, 1.5, None, "NaN", "x" * 10_000):
        error = refused(wire, request("ping", {"x": {"$float": inside}}))
        assert_code(error, "INVALID_REQUEST", "tagged float", "'nan', 'inf' or '-inf'")
        assert len(error["message"]) < 300  # what it holds is not echoed whole


def test_a_metric_of_10_to_the_400_is_a_number_out_of_range(wire: Wire, target: Target) -> None:
    aim = target.aim
    for value in (Raw("1" + "0" * 400), Raw("1e400"), Raw("-1e400")):
        params = {"study": aim.study, "trial": aim.trial, "token": aim.token}
        line = request("trial.report", {**params, "metrics": {"loss": value}})
        assert_code(refused(wire, line), "NUMBER_OUT_OF_RANGE")
    # The trial is still there to report: the refusals were of the line, not of the trial.
    ok = {"study": aim.study, "trial": aim.trial, "token": aim.token, "metrics": {"acc": 1}}
    (answer,) = send(wire, request("trial.report", ok))
    assert answer["result"]["decision"] == "CONTINUE", answer


def test_a_trial_number_of_superscript_two_is_invalid_params(wire: Wire, target: Target) -> None:
    aim = target.aim
    for odd in ("²", "¹²", "\u0661", "\uff11", "9" * 5000, "-1", " 0"):
        for method in ("logs", "trial.report", "trial.oom"):
            params = {"study": aim.study, "trial": odd, "token": aim.token, "metrics": {"x": 1}}
            assert_code(refused(wire, request(method, params)), "INVALID_PARAMS", "'trial'")
    # ASCII digits in a string still name a trial.
    (answer,) = send(wire, request("logs", {"study": aim.study, "trial": str(aim.trial)}))
    assert "result" in answer, answer


def test_a_token_with_a_lone_surrogate_is_refused_as_not_unicode(
    wire: Wire, target: Target
) -> None:
    aim = target.aim
    for token in (aim.token + "\ud800", "\udcff" + aim.token[1:], "\udfff"):
        params = {"study": aim.study, "trial": aim.trial, "token": token}
        for method in ("trial.report", "trial.oom"):
            line = request(method, {**params, "metrics": {"loss": 1}})
            assert_code(refused(wire, line), "PARSE_ERROR", "surrogate")
    # Anywhere else in a line too: a study id, a key, the spec.
    elsewhere: list[dict[str, Any]] = [
        {"study": "\ud800"},
        {"\udc00": 1},
        {"spec": "name = 1 # \udbff"},
    ]
    for odd in elsewhere:
        assert_code(refused(wire, request("study", odd)), "PARSE_ERROR", "surrogate")
    # A pair that makes one character is no lone surrogate: an emoji escaped the JSON way.
    line = request("study", {"study": "😀"})
    assert_code(refused(wire, line), "NOT_FOUND")


def test_a_wait_timeout_of_nan_is_invalid_params(wire: Wire, target: Target) -> None:
    line = request("wait", {"study": target.aim.study, "timeout": tagged("nan")})
    assert_code(refused(wire, line), "INVALID_PARAMS", "'timeout'")


@pytest.mark.parametrize(
    "timeout",
    [tagged("inf"), tagged("-inf"), -1, -1e-9, 1e300, 10**300, "10", True, []],
    ids=["inf", "-inf", "-1", "-1e-9", "1e300", "10^300", "string", "bool", "list"],
)
def test_a_wait_timeout_that_is_infinite_negative_huge_or_no_number_is_invalid_params(
    wire: Wire, target: Target, timeout: Any
) -> None:
    line = request("wait", {"study": target.aim.study, "timeout": timeout})
    assert_code(refused(wire, line), "INVALID_PARAMS", "'timeout'", "omit it")


def test_a_wait_timeout_of_zero_answers_at_once(wire: Wire, target: Target) -> None:
    for timeout in (0, 0.0, 0.001):
        (answer,) = send(wire, request("wait", {"study": target.aim.study, "timeout": timeout}))
        assert answer["result"]["state"] == "running", answer


# -- every method, every line --------------------------------------------------------------------


def test_the_fuzzed_methods_are_every_method_the_daemon_has(wire: Wire) -> None:
    error = refused(wire, request("no.such.method", {}))
    known = error["message"].split("known: ", 1)[1]
    assert sorted(known.split(", ")) == fz.METHODS


@pytest.mark.parametrize("method", fz.METHODS)
def test_odd_params_to_each_method_get_a_specific_code(
    wire: Wire, target: Target, method: str
) -> None:
    @settings(PROPERTY, max_examples=200)
    @given(st.lists(fz.method_line(target.aim, method), min_size=1, max_size=4))
    def check(lines: list[bytes]) -> None:
        for answer in send(wire, *lines):
            target.codes[code_of(answer)] += 1

    check()


@PROPERTY
@given(lines=st.lists(fz.MALFORMED, min_size=1, max_size=4))
def test_malformed_lines_get_a_wire_error_and_the_connection_keeps_serving(
    wire: Wire, lines: list[bytes]
) -> None:
    for answer in send(wire, *lines):
        assert code_of(answer) != "INTERNAL", answer


def test_a_burst_of_bad_requests_leaves_rss_and_descriptors_flat(
    wire: Wire, target: Target
) -> None:
    burst = _burst(target, 1500)
    send_all(wire, burst)  # the first: caches, the store's pages, interned names
    rss, fds = target.rss_kib(), target.fds()
    log_before = target.log_size()
    send_all(wire, burst)
    send_all(wire, burst)
    grown = target.rss_kib() - rss
    assert grown < 16 * 1024, f"RSS grew {grown} KiB over {2 * len(burst)} bad lines"
    # A descriptor held for a moment (the periodic report's file and folder being written) is
    # not a leak: one that stays is. Looked at again until it is gone, for at most 10 s.
    deadline = time.monotonic() + 10.0
    while (now := target.fds()) > fds + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert now <= fds + 1, (fds, now, sorted(os.listdir(f"/proc/{target.pid}/fd")))
    # One line at most per bad request, and far fewer under a flood (rate-limited).
    logged = target.log_since(log_before).count("\n")
    assert logged <= 2 * len(burst), logged


def test_a_bad_request_is_logged_in_one_line_and_a_flood_is_rate_limited() -> None:
    now = [0.0]
    refusals = RefusalLog(rate=2.0, burst=3, clock=lambda: now[0])
    with capture_logs() as logs:
        refusals.refused(1000, "logs", InvalidParams("parameter 'trial' must be an integer"))
    assert logs == [
        {
            "event": "request_refused",
            "log_level": "info",
            "uid": 1000,
            "method": "logs",
            "code": "INVALID_PARAMS",
            "error": "parameter 'trial' must be an integer",
        }
    ]
    with capture_logs() as logs:
        for _ in range(10):  # 2 more fit the burst; 8 are left out
            refusals.refused(1000, None, ParseError("x" * 10_000))
        now[0] += 1.0  # 2 lines' worth of time
        refusals.refused(1000, "ping", ParseError("y"))
    assert len(logs) == 3
    assert len(logs[0]["error"]) < 400  # a message quoting a peer's input is cut
    assert logs[2]["not_logged"] == 8


def _burst(target: Target, n: int) -> list[bytes]:
    """``n`` lines of every kind, the same each call (a derandomized draw, not a property)."""
    out: list[bytes] = []

    @settings(max_examples=n, database=None, derandomize=True)
    @given(fz.lines(target.aim))
    def collect(line: bytes) -> None:
        out.append(line)

    collect()
    return out


def send_all(wire: Wire, lines: list[bytes], batch: int = 50) -> None:
    for i in range(0, len(lines), batch):
        send(wire, *lines[i : i + batch])


def test_the_wire_numbers_a_test_sends_are_what_it_means() -> None:
    # The helpers themselves: a tagged NaN and a bare one, and digits json.dumps would refuse.
    assert fz.encode({"x": tagged("nan")}) == '{"x":{"$float":"nan"}}'
    assert fz.encode([Raw("9" * 5000)]) == "[" + "9" * 5000 + "]"
    assert fz.encode(-math.inf) == '{"$float":"-inf"}'
