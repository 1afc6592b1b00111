"""Durations in study specs: numbers are seconds, strings carry units ("90s", "1h30m", "1.5h")."""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# One or more number+unit parts, largest unit first by convention but not enforced:
# "1h30m" and "30m1h" both mean the same and rejecting the second helps nobody.
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])", re.IGNORECASE)
_WHOLE = re.compile(r"(?:\s*(?:\d+(?:\.\d*)?|\.\d+)\s*[smhd])+\s*", re.IGNORECASE)

ACCEPTED_FORMS = (
    'a number of seconds or a string such as "90s", "30m", "2h", "1d", "1h30m" or "1.5h"'
)


def parse_duration(value: str | int | float, path: str) -> float:
    """Seconds in ``value``; raises ValueError naming ``path`` and the accepted forms.

    The caller (the spec parser) prefixes its own key path, so ``path`` is only used when the
    error surfaces elsewhere; the message is written to read well after ``"{path}: "``.
    """
    if isinstance(value, bool):
        # bool is an int subclass: `trial_time = true` is a mistake, not one second.
        raise ValueError(f"expected a duration, got {value!r}: use {ACCEPTED_FORMS}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not text or not _WHOLE.fullmatch(text):
                raise ValueError(
                    f"cannot read {value!r} as a duration: use {ACCEPTED_FORMS}"
                ) from None
            seconds = sum(float(num) * _UNITS[unit.lower()] for num, unit in _PART.findall(text))
    else:
        raise ValueError(
            f"expected a duration, got {type(value).__name__} {value!r}: use {ACCEPTED_FORMS}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and not negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: "45s", "12m05s", "1h02m", "3d04h"; rounded to whole seconds."""
    if not math.isfinite(seconds):
        return "inf" if seconds > 0 else "-inf" if seconds < 0 else "nan"
    sign = "-" if seconds < 0 else ""
    total = round(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"
