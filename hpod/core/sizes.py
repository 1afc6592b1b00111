"""Sizes in specs and the daemon's settings: numbers are bytes, strings carry units ("64MiB").

Binary units (KiB, MiB, GiB, TiB: powers of 1024) and decimal ones (kB, MB, GB, TB: powers of
1000) are both read, as `df -h` and `ls -l --si` show them; a bare "K", "M", "G" or "T" is taken
as binary, which is what people mean by it for logs and free space.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

ACCEPTED_FORMS = 'a number of bytes or a string such as "512KiB", "64MiB", "1.5GiB" or "10GB"'


def parse_size(value: str | int | float, path: str) -> int:
    """Bytes in ``value`` (rounded down to a whole byte); ValueError naming the accepted forms.

    Like :func:`hpod.core.durations.parse_duration`, the message reads well after the caller's
    ``"{path}: "``; ``path`` is for a message that surfaces elsewhere.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}: use {ACCEPTED_FORMS}")
    if isinstance(value, int | float):
        amount = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"cannot read {value!r} as a size: use {ACCEPTED_FORMS}")
        amount = float(match.group(1)) * _UNITS[unit]
    else:
        raise ValueError(
            f"expected a size, got {type(value).__name__} {value!r}: use {ACCEPTED_FORMS}"
        )
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"a size must be finite and not negative, got {value!r}")
    if amount >= 2**63:
        raise ValueError(f"{value!r} is more bytes than any disk holds")
    return int(amount)


def format_size(size: float) -> str:
    """A short human form in binary units: "512 B", "3.5 KiB", "64 MiB", "1.2 GiB"."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            if unit == "B" or amount == int(amount):
                return f"{int(amount)} {unit}"
            return f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
