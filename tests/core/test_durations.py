from __future__ import annotations

import math

import pytest

from hpod.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1h 30m 15s", 5415.0),
        (" 2H ", 7200.0),
        (".5m", 30.0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value, "limits.trial_time") == seconds


@pytest.mark.parametrize(
    "value",
    ["", "5 minutes", "h", "1x", "1h-30m", "-5s", -1, True, None, [1], math.inf, math.nan, "nan"],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError, match=r"duration|seconds"):
        parse_duration(value, "limits.trial_time")


def test_message_names_the_accepted_forms():
    with pytest.raises(ValueError, match=r'"1h30m"'):
        parse_duration("soon", "report.period")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (44.6, "45s"),
        (125, "2m05s"),
        (3720, "1h02m"),
        (7200, "2h00m"),
        (90000, "1d01h"),
        (-45, "-45s"),
        (math.inf, "inf"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_round_trip_of_formatted_whole_minutes():
    for seconds in (45, 125, 3720, 90000):
        assert parse_duration(format_duration(seconds), "x") == seconds
