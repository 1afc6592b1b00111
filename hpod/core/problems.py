"""Reading a table of settings so that every problem is listed by its key path at once.

A study spec (``core/spec.py``) and the daemon's ``hpod.toml`` (``daemon/config.py``) are both
refused whole, with every mistake named: a :class:`Section` records what is wrong with a key and
carries on with the default, so the problems of all tables can be raised together. The error
that carries them (``SpecError``, ``ConfigError``) words them with
:func:`hpod.errors.problems_message`, one form for both.

Pure and small: the daemon's configuration reads through this module too, and the core must not
import the daemon.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

from hpod.core.durations import parse_duration

__all__ = ["Section", "did_you_mean", "is_number", "type_name", "unknown_key"]

_E = TypeVar("_E", bound=enum.StrEnum)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key(path: str, key: str, options: Iterable[str]) -> str:
    """The problem line for an unknown key, with a did-you-mean where one is close."""
    opts = list(options)
    hint = did_you_mean(key, opts)
    if not hint:
        hint = f"; expected one of {', '.join(opts)}" if opts else ""
    return f"{path}.{key}: unknown key{hint}" if path else f"{key}: unknown key{hint}"


def is_number(value: object) -> bool:
    """A real number from TOML or JSON: int or float, never bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def type_name(value: object) -> str:
    """``"str 'all'"``: a wrong value with its type, since TOML's ``"3"`` and ``3`` look alike."""
    return f"{type(value).__name__} {value!r}"


class Section:
    """One table: typed reads that record problems and fall back to defaults.

    ``keys`` are the keys the table may hold; :meth:`finish` lists the others. Every problem
    goes to the shared ``problems`` list as ``"<path>.<key>: <message>"``.
    """

    def __init__(
        self,
        raw: Mapping[str, Any],
        path: str,
        problems: list[str],
        keys: Sequence[str],
    ) -> None:
        self.raw = raw
        self.path = path
        self.problems = problems
        self.keys = tuple(keys)

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {message}")

    def get(self, key: str) -> Any:
        return self.raw.get(key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def finish(self) -> None:
        for key in self.raw:
            if key not in self.keys:
                self.problems.append(unknown_key(self.path, str(key), self.keys))

    def values(self, readers: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """Each key of the table that has a reader, read by it; a ValueError the reader raises
        is that key's problem, and the key is left out (so the model's default stands)."""
        out: dict[str, Any] = {}
        for key, value in self.raw.items():
            read = readers.get(key)
            if read is None:
                continue  # unknown: :meth:`finish` names it
            try:
                out[key] = read(value)
            except ValueError as exc:
                self.problem(key, str(exc))
        return out

    def table(self, key: str, *, required: bool = False) -> Section | None:
        """A sub-table; None (with a problem when required) when it is missing or no table."""
        value = self.raw.get(key)
        if value is None:
            if required:
                self.problem(key, f"missing; add a [{self.where(key)}] table")
                return None
            value = {}
        if not isinstance(value, Mapping):
            self.problem(key, f"expected a table, got {type_name(value)}")
            return None
        return Section(value, self.where(key), self.problems, ())

    @overload
    def string(self, key: str, *, default: str) -> str: ...
    @overload
    def string(self, key: str, *, required: bool) -> str | None: ...
    def string(self, key: str, *, default: str | None = None, required: bool = False) -> str | None:
        if key not in self.raw:
            if required:
                self.problem(key, "missing")
            return default
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"must be a non-empty string, got {value!r}")
            return default
        return value

    @overload
    def integer(self, key: str, *, default: int, minimum: int | None = None) -> int: ...
    @overload
    def integer(self, key: str, *, minimum: int | None = None) -> int | None: ...
    def integer(
        self, key: str, *, default: int | None = None, minimum: int | None = None
    ) -> int | None:
        if key not in self.raw:
            return default
        value = self.raw[key]
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and (minimum is None or value >= minimum):
            return int(value)
        if minimum == 1:
            self.problem(key, f"must be a positive integer, got {value!r}")
        elif minimum == 0:
            self.problem(key, f"must be an integer >= 0, got {value!r}")
        elif minimum is not None:
            self.problem(key, f"must be an integer >= {minimum}, got {value!r}")
        else:
            self.problem(key, f"must be an integer, got {value!r}")
        return default

    def boolean(self, key: str, *, default: bool) -> bool:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if isinstance(value, bool):
            return value
        self.problem(key, f"must be true or false, got {value!r}")
        return default

    def number(
        self,
        key: str,
        *,
        default: float,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
        below: float | None = None,
    ) -> float:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not is_number(value) or not math.isfinite(float(value)):
            self.problem(key, f"must be a number, got {value!r}")
            return default
        v = float(value)
        if above is not None and not v > above:
            self.problem(key, f"must be > {above:g}, got {value!r}")
        elif at_least is not None and v < at_least:
            self.problem(key, f"must be >= {at_least:g}, got {value!r}")
        elif at_most is not None and v > at_most:
            self.problem(key, f"must be <= {at_most:g}, got {value!r}")
        elif below is not None and not v < below:
            self.problem(key, f"must be < {below:g}, got {value!r}")
        else:
            return v
        return default

    @overload
    def duration(self, key: str, *, default: float, positive: bool = True) -> float: ...
    @overload
    def duration(self, key: str, *, default: None, positive: bool = True) -> float | None: ...
    def duration(self, key: str, *, default: float | None, positive: bool = True) -> float | None:
        if key not in self.raw:
            return default
        value = self.raw[key]
        try:
            seconds = parse_duration(value, self.where(key))
        except ValueError as exc:
            self.problem(key, str(exc))
            return default
        if positive and seconds <= 0:
            self.problem(key, f"must be longer than 0, got {value!r}")
            return default
        return seconds

    @overload
    def choice(self, key: str, enum_type: type[_E], default: _E) -> _E: ...
    @overload
    def choice(self, key: str, enum_type: type[_E], default: None) -> _E | None: ...
    def choice(self, key: str, enum_type: type[_E], default: _E | None) -> _E | None:
        if key not in self.raw:
            if default is None:
                self.problem(key, f"missing (one of {', '.join(e.value for e in enum_type)})")
            return default
        value = self.raw[key]
        options = [e.value for e in enum_type]
        if isinstance(value, str) and value in options:
            return enum_type(value)
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        self.problem(key, f"{value!r} is not one of {', '.join(options)}{hint}")
        return default
