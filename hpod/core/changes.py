"""Changes to a running study (``hpodctl set``): which keys may change, each value checked by
the spec's own rules, and the spec with them applied.

A study's :class:`~hpod.core.spec.StudySpec` is frozen: a change makes a new one, which the
daemon puts in place of the old (its runtime's and its engine's). The changes are stored as a
JSON list of ``{"key", "value", "from", "at", "by"}`` (``studies.changes``) and applied in order
over the stored spec at every restore, so the submitted spec text stays as it was submitted.

Pure: no daemon, no clock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hpod.core.deadlines import format_deadline, parse_deadline
from hpod.core.durations import format_duration
from hpod.core.problems import Section
from hpod.core.spec import StudySpec

__all__ = [
    "CHANGEABLE",
    "apply",
    "check",
    "current",
    "dump",
    "entries",
    "load",
    "replay",
    "shown",
]

# What `set` may change, and in which part of the spec each lives.
CHANGEABLE = (
    "optimization_time",
    "compute_time",
    "deadline",
    "max_trials",
    "max_concurrent",
    "report_period",
    "priority",
)
# A limit may be taken away ("none", JSON null); the report period and priority always have one.
_REMOVABLE = frozenset(
    {"optimization_time", "compute_time", "deadline", "max_trials", "max_concurrent"}
)
_LIMITS = frozenset(
    {"optimization_time", "compute_time", "deadline", "max_trials", "max_concurrent"}
)


def check(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Each change read as the spec reads that key (durations to seconds, a deadline to epoch
    seconds, integers with the spec's minimum), and the problems, each naming its key.

    ``None`` (or the string ``"none"``) takes a limit away."""
    problems: list[str] = []
    if not raw:
        return {}, ["no change given: name at least one of " + ", ".join(CHANGEABLE)]
    values: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.strip().lower() == "none":
            value = None
        if value is None and key in CHANGEABLE:
            if key in _REMOVABLE:
                values[key] = None
            else:
                problems.append(f"{key}: cannot be taken away; give a new value")
            continue
        given[key] = value
    sec = Section(given, "", problems, CHANGEABLE)
    for key in ("optimization_time", "compute_time", "report_period"):
        if sec.has(key):
            seconds = sec.duration(key, default=None)
            if seconds is not None:
                values[key] = seconds
    for key, minimum in (("max_trials", 1), ("max_concurrent", 1), ("priority", 0)):
        if sec.has(key):
            number = sec.integer(key, minimum=minimum)
            if number is not None:
                values[key] = number
    if sec.has("deadline"):
        try:
            values["deadline"] = parse_deadline(sec.get("deadline"))
        except ValueError as exc:
            sec.problem("deadline", str(exc))
    sec.finish()
    # In the order given: the stored list says what was changed in the order it was asked.
    return {k: values[k] for k in raw if k in values}, problems


def current(spec: StudySpec, key: str) -> Any:
    """The value ``key`` has in ``spec`` (None: no such limit)."""
    if key == "report_period":
        return spec.report.period
    if key == "priority":
        return spec.priority
    return getattr(spec.limits, key)


def apply(spec: StudySpec, values: Mapping[str, Any]) -> StudySpec:
    """``spec`` with ``values`` (as :func:`check` reads them) in place of its own."""
    limits = {k: v for k, v in values.items() if k in _LIMITS}
    out = spec
    if limits:
        out = dataclasses.replace(out, limits=dataclasses.replace(out.limits, **limits))
    if "report_period" in values:
        out = dataclasses.replace(
            out, report=dataclasses.replace(out.report, period=float(values["report_period"]))
        )
    if "priority" in values:
        out = dataclasses.replace(out, priority=int(values["priority"]))
    return out


def entries(
    spec: StudySpec, values: Mapping[str, Any], *, at: float, by: int
) -> list[dict[str, Any]]:
    """One stored entry per change, in the order given, with what it replaced; a value the
    spec already has is no change, and makes none."""
    return [
        {"key": key, "value": value, "from": current(spec, key), "at": at, "by": by}
        for key, value in values.items()
        if value != current(spec, key)
    ]


def dump(history: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([dict(e) for e in history], separators=(",", ":"), allow_nan=False)


def load(text: str | None) -> list[dict[str, Any]]:
    """The stored list (``studies.changes``); [] for none. Entries that are not what
    :func:`entries` writes are left out: a store edited by hand must not stop a restore."""
    if not text:
        return []
    try:
        raw = json.loads(text)
    except ValueError:
        return []
    if not isinstance(raw, list):
        return []
    return [e for e in raw if isinstance(e, dict) and e.get("key") in CHANGEABLE]


def replay(spec: StudySpec, history: Sequence[Mapping[str, Any]]) -> tuple[StudySpec, list[str]]:
    """The stored spec with every stored change applied in order, and the problems of those
    that could not be (each is skipped, named)."""
    out = spec
    problems: list[str] = []
    for entry in history:
        key = str(entry["key"])
        values, found = check({key: entry.get("value")})
        if found:
            problems.extend(found)
            continue
        out = apply(out, values)
    return out, problems


def shown(key: str, value: Any) -> str:
    """A value as `hpodctl show` prints it: 30m, 2026-12-02T17:00:00Z, 4, none."""
    if value is None:
        return "none"
    if key in ("optimization_time", "compute_time", "report_period"):
        return format_duration(float(value))
    if key == "deadline":
        return format_deadline(float(value))
    return str(value)
