"""hpod.core.changes and hpod.core.deadlines: what `set` may change, read by the spec's rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from hpod.core import changes as chg
from hpod.core import limits as lim
from hpod.core.deadlines import ACCEPTED_FORMS, format_deadline, parse_deadline
from hpod.core.spec import StudySpec
from hpod.errors import SpecError

SPEC = """
name = "s"
command = ["python", "t.py"]
priority = 2
[objective]
metric = "loss"
mode = "min"
[space]
x = { param_type = "uniform", range = [0, 1] }
[limits]
optimization_time = "1h"
max_trials = 10
[report]
period = "1m"
"""


def spec() -> StudySpec:
    return StudySpec.from_toml(SPEC, base_dir=Path("/"))


def test_values_are_read_as_the_spec_reads_them_in_the_order_given() -> None:
    values, problems = chg.check(
        {"report_period": "30s", "optimization_time": "90m", "max_trials": 20, "priority": 0}
    )
    assert problems == []
    assert values == {
        "report_period": 30.0,
        "optimization_time": 5400.0,
        "max_trials": 20,
        "priority": 0,
    }
    assert list(values) == ["report_period", "optimization_time", "max_trials", "priority"]


def test_none_takes_a_limit_away_but_not_the_period_or_priority() -> None:
    values, problems = chg.check({"max_trials": None, "optimization_time": "none"})
    assert (values, problems) == ({"max_trials": None, "optimization_time": None}, [])
    _, problems = chg.check({"priority": None, "report_period": "none"})
    assert problems == [
        "priority: cannot be taken away; give a new value",
        "report_period: cannot be taken away; give a new value",
    ]


def test_every_bad_value_is_named() -> None:
    _, problems = chg.check(
        {
            "compute_time": 0,
            "max_concurrent": 0,
            "priority": -1,
            "deadline": "soon",
            "trial_time": "1m",
            "max_trials": True,
        }
    )
    assert problems == [
        "compute_time: must be longer than 0, got 0",
        "max_trials: must be a positive integer, got True",
        "max_concurrent: must be a positive integer, got 0",
        "priority: must be an integer >= 0, got -1",
        f"deadline: cannot read 'soon' as a moment: use {ACCEPTED_FORMS}",
        "trial_time: unknown key; expected one of " + ", ".join(chg.CHANGEABLE),
    ]
    assert chg.check({})[1][0].startswith("no change given")


def test_apply_replaces_the_frozen_spec_and_replay_rebuilds_it() -> None:
    base = spec()
    values, _ = chg.check({"max_trials": 3, "report_period": 5, "priority": 7, "deadline": 2e9})
    new = chg.apply(base, values)
    assert (new.limits.max_trials, new.report.period, new.priority) == (3, 5.0, 7)
    assert new.limits.deadline == 2e9
    assert new.limits.optimization_time == 3600.0  # untouched
    assert base.limits.max_trials == 10  # the old one is as it was
    history = chg.entries(base, values, at=1.0, by=1000)
    assert [(e["key"], e["from"], e["value"]) for e in history] == [
        ("max_trials", 10, 3),
        ("report_period", 60.0, 5.0),
        ("priority", 2, 7),
        ("deadline", None, 2e9),
    ]
    replayed, skipped = chg.replay(base, chg.load(chg.dump(history)))
    assert replayed == new
    assert skipped == []
    # A stored entry that no longer reads is skipped, named; the rest still apply.
    bad = [*history, {"key": "max_trials", "value": -5, "at": 2.0, "by": 0}]
    replayed, skipped = chg.replay(base, bad)
    assert replayed == new
    assert skipped == ["max_trials: must be a positive integer, got -5"]
    assert chg.load("not json") == []
    assert chg.load(None) == []


def test_deadlines_are_moments() -> None:
    assert parse_deadline("2026-12-02T17:00:00Z") == 1796230800.0
    assert parse_deadline("2026-12-02T18:00:00+01:00") == 1796230800.0
    assert parse_deadline(1796230800) == 1796230800.0
    assert parse_deadline("1796230800") == 1796230800.0
    assert parse_deadline(dt.datetime(2026, 12, 2, 17, tzinfo=dt.UTC)) == 1796230800.0
    local = dt.datetime(2026, 12, 2, 17)
    assert parse_deadline("2026-12-02T17:00:00") == local.timestamp()
    assert format_deadline(1796230800.4) == "2026-12-02T17:00:00Z"
    for bad in (True, 3600, "3600", "tomorrow", float("nan"), [1]):
        with pytest.raises(ValueError, match="moment"):
            parse_deadline(bad)


def test_the_spec_reads_a_deadline_in_every_form() -> None:
    quoted = SPEC.replace("max_trials = 10", 'deadline = "2026-12-02T17:00:00Z"')
    assert StudySpec.from_toml(quoted, base_dir="/").limits.deadline == 1796230800.0
    text = SPEC.replace("max_trials = 10", "deadline = 2026-12-02T17:00:00Z")  # TOML's own
    parsed = StudySpec.from_toml(text, base_dir=Path("/"))
    assert parsed.limits.deadline == 1796230800.0
    assert StudySpec.from_mapping(parsed.to_dict(), base_dir="/") == parsed
    with pytest.raises(SpecError, match=r"limits\.deadline: 3600 is not a moment"):
        StudySpec.from_toml(SPEC.replace("max_trials = 10", "deadline = 3600"), base_dir="/")


def test_a_deadline_is_a_limit_the_clocks_reach() -> None:
    limits = spec().limits
    clocks = lim.Clocks(elapsed=10.0, compute=0.0, trials=1, wall=2e9)
    assert lim.limit_hit(limits, clocks) is None
    at = chg.apply(spec(), {"deadline": 2e9 + 30})
    assert lim.seconds_to_limit(at.limits, clocks, 1) == 30.0
    assert lim.time_left_for(at.limits, clocks, 1, 1) == 30.0
    past = chg.apply(spec(), {"deadline": 2e9 - 1})
    hit = lim.limit_hit(past.limits, clocks)
    assert hit is not None
    assert hit.limit == "deadline"
    assert hit.reason == f"deadline of {format_deadline(2e9 - 1)} reached"
    # Clocks read without the wall time (an old caller) never reach a deadline.
    assert lim.limit_hit(past.limits, lim.Clocks(elapsed=1.0)) is None
