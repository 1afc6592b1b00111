"""Deadlines: a moment by which a study ends, written as ISO 8601 or as epoch seconds.

A deadline is absolute (``[limits] deadline``, ``hpodctl set STUDY deadline=...``), where
``optimization_time`` is a duration on the study's own clock: one that runs only while a daemon
runs the study. Kept as epoch seconds (float), shown as ISO 8601 in UTC.
"""

from __future__ import annotations

import datetime as dt
import math

# Epoch seconds below this (2001-09-09) are almost surely a duration typed where a moment was
# meant (`deadline = 3600`); no study of hpod's ends before then.
EPOCH_FLOOR = 1e9

ACCEPTED_FORMS = (
    'an ISO 8601 time such as "2026-12-02T18:00:00+01:00" (no zone: this machine\'s local '
    "time) or epoch seconds"
)


def parse_deadline(value: object) -> float:
    """Epoch seconds of ``value`` (a string, a number, or a TOML/Python datetime); ValueError
    with the accepted forms otherwise. The message reads well after ``"<key>: "``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a moment, got {value!r}: use {ACCEPTED_FORMS}")
    if isinstance(value, dt.datetime):
        return _epoch(value)
    if isinstance(value, dt.date):
        return _epoch(dt.datetime.combine(value, dt.time()))
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                return _epoch(dt.datetime.fromisoformat(text))
            except ValueError:
                raise ValueError(
                    f"cannot read {value!r} as a moment: use {ACCEPTED_FORMS}"
                ) from None
    else:
        raise ValueError(f"expected a moment, got {value!r}: use {ACCEPTED_FORMS}")
    if not math.isfinite(seconds):
        raise ValueError(f"cannot read {value!r} as a moment: use {ACCEPTED_FORMS}")
    if seconds < EPOCH_FLOOR:
        raise ValueError(
            f"{value!r} is not a moment but looks like a duration: a deadline is a time of day "
            f"({ACCEPTED_FORMS}); for a duration on the study's clock use optimization_time"
        )
    return seconds


def _epoch(moment: dt.datetime) -> float:
    # A time without a zone is this machine's local time: the daemon and its clients share it.
    return moment.timestamp() if moment.tzinfo is not None else moment.astimezone().timestamp()


def format_deadline(seconds: float) -> str:
    """``2026-12-02T17:00:00Z``: a deadline as ISO 8601 in UTC, to the second."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
