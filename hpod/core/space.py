"""The search space: typed parameters, sampling, the unit-cube encoding, and grids.

The parameter types and ``range`` forms are OTX's ``hp_space`` ones, so an OTX ``hpo_config``
space carries over as is. Every parameter encodes to numbers in [0, 1] (log types in log space,
``choice`` one-hot), which is what a model-based searcher fits on; ``decode`` turns any vector back
into a valid value (clipped, quantized), so a searcher may propose freely.

Quantized values sit on the lattice ``low + k * step`` (anchored at the lower bound, so every value
is inside the range even when ``high - low`` is not a multiple of ``step``).
"""

from __future__ import annotations

import enum
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpod.core.command import RESERVED_PLACEHOLDERS
from hpod.core.problems import did_you_mean, is_number, unknown_key
from hpod.errors import SpecError

ParamValue = float | int | str
Config = dict[str, ParamValue]

# Dots and dashes are allowed: OTX names its parameters "learning_parameters.learning_rate".
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_PARAM_KEYS = ("param_type", "range")
# Float noise in ``low + k * step`` ("0.30000000000000004") is cut at this many digits.
_SIGNIFICANT = 15


def _fmt(value: object) -> str:
    """A value as the user wrote it: 'adam' quoted, 0.0 as 0 (TOML integers arrive as floats)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _clean(value: float) -> float:
    return float(f"{value:.{_SIGNIFICANT}g}")


class ParamType(enum.StrEnum):
    UNIFORM = "uniform"  # [min, max]
    QUNIFORM = "quniform"  # [min, max, step]
    LOGUNIFORM = "loguniform"  # [min, max, base=10]
    QLOGUNIFORM = "qloguniform"  # [min, max, step, base=10]
    CHOICE = "choice"  # [value, ...]

    @property
    def is_log(self) -> bool:
        return self in (ParamType.LOGUNIFORM, ParamType.QLOGUNIFORM)

    @property
    def is_quantized(self) -> bool:
        return self in (ParamType.QUNIFORM, ParamType.QLOGUNIFORM)

    @property
    def range_form(self) -> str:
        return _RANGE_FORMS[self]


_RANGE_FORMS: dict[ParamType, str] = {
    ParamType.UNIFORM: "[min, max]",
    ParamType.QUNIFORM: "[min, max, step]",
    ParamType.LOGUNIFORM: "[min, max] or [min, max, base]",
    ParamType.QLOGUNIFORM: "[min, max, step] or [min, max, step, base]",
    ParamType.CHOICE: "[value, ...]",
}


def _numeric_problems(
    ptype: ParamType, low: float, high: float, step: float | None, base: float
) -> list[str]:
    """What is wrong with a numeric parameter's bounds (messages without a key path)."""
    out: list[str] = []
    for label, v in (("lower bound", low), ("upper bound", high)):
        if not math.isfinite(v):
            out.append(f"{label} {_fmt(v)} is not a finite number")
    if out:
        return out
    if ptype.is_log and low <= 0:
        out.append(f"lower bound {_fmt(low)} is not > 0 for {ptype.value}")
    if not high > low:
        out.append(f"upper bound {_fmt(high)} is not > lower bound {_fmt(low)}")
    if ptype.is_quantized:
        if step is None or not math.isfinite(step) or step <= 0:
            out.append(f"step {_fmt(step)} is not a number > 0")
        elif high > low and step > high - low:
            out.append(f"step {_fmt(step)} is larger than the range {_fmt(low)}..{_fmt(high)}")
    if ptype.is_log and (not math.isfinite(base) or base <= 0 or base == 1):
        out.append(f"log base {_fmt(base)} is not a number > 0 other than 1")
    return out


@dataclass(frozen=True, slots=True)
class Param:
    """One hyperparameter. Build it with a named constructor or :meth:`from_mapping`."""

    name: str
    type: ParamType
    low: float = 0.0
    high: float = 1.0
    step: float | None = None
    base: float = 10.0
    choices: tuple[ParamValue, ...] = ()

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"parameter {self.name!r}: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        if self.type is ParamType.CHOICE:
            if not self.choices:
                return ["choice needs at least one value"]
            return []
        return _numeric_problems(self.type, self.low, self.high, self.step, self.base)

    # -- named constructors -------------------------------------------------------------------

    @classmethod
    def uniform(cls, name: str, low: float, high: float) -> Param:
        return cls(name, ParamType.UNIFORM, float(low), float(high))

    @classmethod
    def quniform(cls, name: str, low: float, high: float, step: float) -> Param:
        return cls(name, ParamType.QUNIFORM, float(low), float(high), float(step))

    @classmethod
    def loguniform(cls, name: str, low: float, high: float, base: float = 10.0) -> Param:
        return cls(name, ParamType.LOGUNIFORM, float(low), float(high), None, float(base))

    @classmethod
    def qloguniform(
        cls, name: str, low: float, high: float, step: float, base: float = 10.0
    ) -> Param:
        return cls(name, ParamType.QLOGUNIFORM, float(low), float(high), float(step), float(base))

    @classmethod
    def choice(cls, name: str, choices: Sequence[ParamValue]) -> Param:
        return cls(name, ParamType.CHOICE, choices=tuple(choices))

    @classmethod
    def from_mapping(cls, name: str, raw: object, path: str = "space") -> Param:
        """One ``[space]`` entry (``{param_type = ..., range = [...]}``); SpecError lists all."""
        param, problems = _parse_param(name, raw, f"{path}.{name}" if path else name)
        if problems or param is None:
            raise SpecError(problems)
        return param

    # -- derived ------------------------------------------------------------------------------

    @property
    def is_int(self) -> bool:
        """Quantized with integral bounds and step: values are Python ints."""
        if not self.type.is_quantized or self.step is None:
            return False
        return all(float(v).is_integer() for v in (self.low, self.high, self.step))

    @property
    def encoded_len(self) -> int:
        return len(self.choices) if self.type is ParamType.CHOICE else 1

    @property
    def _levels(self) -> int:
        """How many lattice points a quantized parameter has."""
        assert self.step is not None
        # The epsilon keeps 0.3 / 0.1 == 2.9999999999999996 from losing the top level.
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def _level_value(self, k: int) -> ParamValue:
        assert self.step is not None
        k = min(max(k, 0), self._levels - 1)
        value = self.low + k * self.step
        if self.is_int:
            return round(value)
        # Cut the float noise only where that cannot move the value off its lattice point.
        cleaned = _clean(value)
        return cleaned if abs(cleaned - value) <= 1e-9 * self.step else value

    def _quantize(self, value: float) -> ParamValue:
        assert self.step is not None
        return self._level_value(round((value - self.low) / self.step))

    def _to_unit(self, value: float) -> float:
        if self.type.is_log:
            lo, hi = math.log(self.low), math.log(self.high)
            return (math.log(value) - lo) / (hi - lo)
        return (value - self.low) / (self.high - self.low)

    def _from_unit(self, u: float) -> float:
        # The ends exactly: exp(log(1e-4)) is 1.0000000000000009e-4.
        if u <= 0.0:
            return self.low
        if u >= 1.0:
            return self.high
        if self.type.is_log:
            lo, hi = math.log(self.low), math.log(self.high)
            # Clipped again: exp(log(x)) may land a hair outside [low, high].
            return min(max(math.exp(lo + u * (hi - lo)), self.low), self.high)
        return self.low + u * (self.high - self.low)

    # -- the API ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> ParamValue:
        if self.type is ParamType.CHOICE:
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.type is ParamType.QUNIFORM:
            # Every lattice point equally likely (rounding a uniform draw would halve the ends).
            return self._level_value(int(rng.integers(self._levels)))
        value = self._from_unit(float(rng.random()))
        if self.type is ParamType.QLOGUNIFORM:
            return self._quantize(value)
        return value

    def encode(self, value: ParamValue) -> list[float]:
        if self.type is ParamType.CHOICE:
            index = self._choice_index(value)
            if index is None:
                raise ValueError(f"{self.name}: {value!r} is not one of {self._choices_text()}")
            return [1.0 if i == index else 0.0 for i in range(len(self.choices))]
        if not is_number(value):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        v = float(value)
        if self.type.is_log and v <= 0:
            raise ValueError(f"{self.name}: {v} is not > 0 for {self.type.value}")
        return [min(max(self._to_unit(v), 0.0), 1.0)]

    def decode(self, seq: Sequence[float]) -> ParamValue:
        if len(seq) != self.encoded_len:
            raise ValueError(f"{self.name}: expected {self.encoded_len} numbers, got {len(seq)}")
        if self.type is ParamType.CHOICE:
            return self.choices[int(np.argmax(np.asarray(seq, dtype=float)))]
        u = float(seq[0])
        if math.isnan(u):
            u = 0.5
        value = self._from_unit(u)
        if self.type.is_quantized:
            return self._quantize(value)
        return value

    def grid_values(self, n: int) -> list[ParamValue]:
        """Values for a grid: every choice and every lattice point of a quantized type (its
        values are the lattice, and a spread of ``n`` would skip the optimum between two of
        them); ``n`` evenly spread ones, log-spaced for loguniform, ends included (the middle
        one when ``n`` is 1), for a continuous type."""
        if n < 1:
            raise ValueError(f"points per parameter must be >= 1, got {n}")
        if self.type is ParamType.CHOICE:
            return list(self.choices)
        if self.type.is_quantized:
            return [self._level_value(k) for k in range(self._levels)]
        units = [0.5] if n == 1 else [i / (n - 1) for i in range(n)]
        out: list[ParamValue] = []
        for u in units:
            value = self.decode([u])
            if isinstance(value, float):
                value = _clean(value)
            if value not in out:
                out.append(value)
        return out

    # A quantized lattice may hold millions of points: these three never list it.

    def grid_count(self, n: int) -> int:
        """How many values :meth:`grid_values` has."""
        if self.type.is_quantized and n >= 1:
            return self._levels
        return len(self.grid_values(n))

    def grid_value(self, k: int, n: int) -> ParamValue:
        """``grid_values(n)[k]``."""
        if self.type.is_quantized and n >= 1:
            if not 0 <= k < self._levels:
                raise IndexError(f"{self.name}: grid value {k} of {self._levels}")
            return self._level_value(k)
        return self.grid_values(n)[k]

    def grid_position(self, value: ParamValue, n: int) -> int | None:
        """Where a normalized ``value`` is in :meth:`grid_values`, or None when it is not there."""
        if self.type is ParamType.CHOICE:
            return self._choice_index(value)
        if not is_number(value):
            return None
        if self.type.is_quantized:
            assert self.step is not None
            k = round((float(value) - self.low) / self.step)
            inside = 0 <= k < self._levels and self._level_value(k) == value
            return k if inside else None
        for k, v in enumerate(self.grid_values(n)):
            if v == value:
                return k
        return None

    def contains(self, value: object) -> bool:
        if self.type is ParamType.CHOICE:
            return self._choice_index(value) is not None
        if not is_number(value):
            return False
        assert isinstance(value, int | float)
        v = float(value)
        if not math.isfinite(v):
            return False
        tol = 1e-9 * max(1.0, abs(self.low), abs(self.high))
        if v < self.low - tol or v > self.high + tol:
            return False
        if self.type.is_quantized:
            assert self.step is not None
            k = (v - self.low) / self.step
            # A lattice point far from 0 carries float error of a few ulps of its magnitude.
            ulps = 8 * math.ulp(max(abs(self.low), abs(self.high), abs(v))) / self.step
            return abs(k - round(k)) <= 1e-6 + ulps
        return True

    def normalize(self, value: ParamValue) -> ParamValue:
        """A contained value in its canonical form (e.g. 64.0 -> 64 for an int parameter)."""
        if self.type is ParamType.CHOICE:
            index = self._choice_index(value)
            return value if index is None else self.choices[index]
        if not is_number(value):
            return value
        if self.type.is_quantized:
            return self._quantize(float(value))
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        """The ``[space]`` entry this parameter was read from."""
        rng: list[Any]
        if self.type is ParamType.CHOICE:
            rng = list(self.choices)
        else:
            rng = [self._num(self.low), self._num(self.high)]
            if self.type.is_quantized:
                assert self.step is not None
                rng.append(self._num(self.step))
            if self.type.is_log:
                rng.append(self._num(self.base))
        return {"param_type": self.type.value, "range": rng}

    def _num(self, v: float) -> float | int:
        return round(v) if self.is_int else v

    def _choice_index(self, value: object) -> int | None:
        # `True == 1` and `1 == 1.0` in Python; a choice of [1, true] must keep them apart.
        for i, c in enumerate(self.choices):
            if isinstance(c, bool) != isinstance(value, bool):
                continue
            if isinstance(c, str) != isinstance(value, str):
                continue
            if c == value:
                return i
        return None

    def _choices_text(self) -> str:
        return ", ".join(_fmt(c) for c in self.choices)


def _parse_param(name: str, raw: object, path: str) -> tuple[Param | None, list[str]]:
    problems: list[str] = []
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(
            f"{path}: the name {name!r} must start with a letter or _ and hold only letters, "
            "digits, _ . -"
        )
    elif name in RESERVED_PLACEHOLDERS:
        problems.append(f"{path}: the name {name!r} is reserved for the {{{name}}} placeholder")
    if not isinstance(raw, Mapping):
        problems.append(
            f'{path}: expected a table such as {{ param_type = "uniform", range = [0, 1] }}, '
            f"got {type(raw).__name__}"
        )
        return None, problems
    for key in raw:
        if key not in _PARAM_KEYS:
            problems.append(unknown_key(path, str(key), _PARAM_KEYS))
    ptype_raw = raw.get("param_type")
    ptype: ParamType | None = None
    kinds = ", ".join(t.value for t in ParamType)
    if ptype_raw is None:
        problems.append(f"{path}.param_type: missing (one of {kinds})")
    elif not isinstance(ptype_raw, str) or ptype_raw not in ParamType.__members__.values():
        hint = (
            did_you_mean(ptype_raw, [t.value for t in ParamType])
            if isinstance(ptype_raw, str)
            else ""
        )
        problems.append(f"{path}.param_type: {ptype_raw!r} is not one of {kinds}{hint}")
    else:
        ptype = ParamType(ptype_raw)
    rng = raw.get("range")
    rpath = f"{path}.range"
    if rng is None:
        problems.append(f"{rpath}: missing")
        return None, problems
    if not isinstance(rng, list | tuple):
        problems.append(f"{rpath}: expected a list, got {type(rng).__name__} {rng!r}")
        return None, problems
    if ptype is None:
        return None, problems
    if ptype is ParamType.CHOICE:
        return _parse_choice(name, list(rng), rpath, problems)
    return _parse_numeric(name, ptype, list(rng), rpath, problems)


def _parse_choice(
    name: str, values: list[Any], rpath: str, problems: list[str]
) -> tuple[Param | None, list[str]]:
    start = len(problems)
    if not values:
        problems.append(f"{rpath}: choice needs at least one value")
    seen: list[Any] = []
    for i, v in enumerate(values):
        if not isinstance(v, str | int | float) or (isinstance(v, float) and not math.isfinite(v)):
            problems.append(
                f"{rpath}[{i}]: {v!r} is not a string, number or boolean a choice can hold"
            )
            continue
        if any(type(s) is type(v) and s == v for s in seen):
            problems.append(f"{rpath}[{i}]: {v!r} is listed twice")
        seen.append(v)
    if len(problems) > start:
        return None, problems
    return Param.choice(name, values), problems


def _parse_numeric(
    name: str, ptype: ParamType, values: list[Any], rpath: str, problems: list[str]
) -> tuple[Param | None, list[str]]:
    start = len(problems)
    sizes = {
        ParamType.UNIFORM: (2, 2),
        ParamType.QUNIFORM: (3, 3),
        ParamType.LOGUNIFORM: (2, 3),
        ParamType.QLOGUNIFORM: (3, 4),
    }[ptype]
    if not sizes[0] <= len(values) <= sizes[1]:
        problems.append(
            f"{rpath}: {ptype.value} takes {ptype.range_form}, got {len(values)} "
            f"value{'s' if len(values) != 1 else ''}"
        )
        return None, problems
    for i, v in enumerate(values):
        if not is_number(v):
            problems.append(f"{rpath}[{i}]: {v!r} is not a number")
    if len(problems) > start:
        return None, problems
    nums = [float(v) for v in values]
    low, high = nums[0], nums[1]
    step = nums[2] if ptype.is_quantized else None
    base_index = 3 if ptype is ParamType.QLOGUNIFORM else 2
    base = nums[base_index] if ptype.is_log and len(nums) > base_index else 10.0
    found = _numeric_problems(ptype, low, high, step, base)
    if found:
        problems.extend(f"{rpath}: {p}" for p in found)
        return None, problems
    return Param(name, ptype, low, high, step, base), problems


@dataclass(frozen=True, slots=True)
class SearchSpace:
    params: tuple[Param, ...]
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("a search space needs at least one parameter")
        by_name = {p.name: p for p in self.params}
        if len(by_name) != len(self.params):
            raise ValueError("parameter names must be unique")
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def of(cls, *params: Param) -> SearchSpace:
        return cls(tuple(params))

    @classmethod
    def from_mapping(cls, raw: object, path: str = "space") -> SearchSpace:
        """The ``[space]`` table; raises SpecError listing every problem by key path."""
        problems: list[str] = []
        params: list[Param] = []
        if not isinstance(raw, Mapping):
            raise SpecError([f"{path}: expected a table of parameters, got {type(raw).__name__}"])
        if not raw:
            raise SpecError([f"{path}: needs at least one parameter"])
        for name, entry in raw.items():
            param, found = _parse_param(str(name), entry, f"{path}.{name}" if path else str(name))
            problems.extend(found)
            if param is not None:
                params.append(param)
        if problems:
            raise SpecError(problems)
        return cls(tuple(params))

    def __getitem__(self, name: str) -> Param:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def dim(self) -> int:
        return sum(p.encoded_len for p in self.params)

    def sample(self, rng: np.random.Generator) -> Config:
        return {p.name: p.sample(rng) for p in self.params}

    def encode(self, config: Mapping[str, ParamValue]) -> np.ndarray[Any, np.dtype[np.float64]]:
        out: list[float] = []
        for p in self.params:
            if p.name not in config:
                raise ValueError(f"the configuration has no {p.name!r}")
            out.extend(p.encode(config[p.name]))
        return np.asarray(out, dtype=np.float64)

    def sample_encoded(self, rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
        """``n`` random points, already encoded (rows of ``dim`` numbers), distributed as
        :meth:`sample` draws them but not the same draws: vectorized, for a model-based searcher's
        candidates, of which only the chosen one is decoded."""
        return self.snap(rng.random((n, self.dim)))

    def neighbours(
        self,
        top: np.ndarray[Any, Any],
        n: int,
        sd: float,
        rng: np.random.Generator,
        flip: float = 0.0,
    ) -> np.ndarray[Any, Any]:
        """``n`` candidates, each a Gaussian step (``sd`` in the unit cube) from one of ``top``'s
        encoded configurations, snapped back into the space. ``flip``: the chance that each
        ``choice`` of a candidate is moved to one of its other values (uniformly) instead: a
        Gaussian step of a one-hot hardly ever changes its largest entry."""
        base = top[rng.integers(len(top), size=n)]
        out = self.snap(base + rng.normal(0.0, sd, size=base.shape))
        if flip <= 0.0:
            return out
        i = 0
        for p in self.params:
            k = p.encoded_len
            if p.type is ParamType.CHOICE and k > 1:
                moved = np.flatnonzero(rng.random(n) < flip)
                hot = np.argmax(out[moved, i : i + k], axis=1)
                other = (hot + rng.integers(1, k, size=len(moved))) % k
                out[moved, i : i + k] = 0.0
                out[moved, i + other] = 1.0
            i += k
        return out

    def balanced_choices(
        self, points: np.ndarray[Any, Any], rng: np.random.Generator
    ) -> np.ndarray[Any, Any]:
        """``points`` (encoded) with each ``choice``'s values dealt out evenly over the rows, in
        a random order: every value as often as any other (to one), none left out by the luck
        of the draw."""
        out = np.array(points, dtype=np.float64)
        n = len(out)
        i = 0
        for p in self.params:
            k = p.encoded_len
            if p.type is ParamType.CHOICE and k > 1:
                hot = rng.permutation(n) % k
                out[:, i : i + k] = 0.0
                out[np.arange(n), i + hot] = 1.0
            i += k
        return out

    def snap(self, points: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Encoded points moved onto what a configuration can encode to: a one-hot per
        ``choice`` (its largest entry), quantized parameters onto their lattice. Vectorized; the
        same as ``encode(decode(row))`` for each row, up to float rounding."""
        out = np.clip(np.array(points, dtype=np.float64), 0.0, 1.0)
        i = 0
        for p in self.params:
            n = p.encoded_len
            if p.type is ParamType.CHOICE:
                hot = np.argmax(out[:, i : i + n], axis=1)
                out[:, i : i + n] = 0.0
                out[np.arange(len(out)), i + hot] = 1.0
            elif p.type.is_quantized:
                assert p.step is not None
                u = out[:, i]
                if p.type.is_log:
                    lo, hi = math.log(p.low), math.log(p.high)
                    value = np.exp(lo + u * (hi - lo))
                else:
                    value = p.low + u * (p.high - p.low)
                k = np.clip(np.round((value - p.low) / p.step), 0, p._levels - 1)
                value = np.clip(p.low + k * p.step, p.low, p.high)
                if p.type.is_log:
                    out[:, i] = (np.log(value) - lo) / (hi - lo)
                else:
                    out[:, i] = (value - p.low) / (p.high - p.low)
            i += n
        return out

    def decode(self, vector: Sequence[float] | np.ndarray[Any, Any]) -> Config:
        values = np.asarray(vector, dtype=np.float64).ravel()
        if values.shape[0] != self.dim:
            raise ValueError(f"expected a vector of {self.dim} numbers, got {values.shape[0]}")
        out: Config = {}
        i = 0
        for p in self.params:
            n = p.encoded_len
            out[p.name] = p.decode(values[i : i + n].tolist())
            i += n
        return out

    def grid(self, points_per_param: int) -> list[Config]:
        """The cartesian product of every parameter's grid values; the last one varies fastest."""
        axes = [p.grid_values(points_per_param) for p in self.params]
        names = self.names
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]

    @property
    def finite_size(self) -> int | None:
        """How many configurations the space holds when every parameter is a ``choice`` or
        quantized (each lattice point once), None when one is continuous."""
        size = 1
        for p in self.params:
            if p.type is ParamType.CHOICE:
                size *= len(p.choices)
            elif p.type.is_quantized:
                size *= p._levels
            else:
                return None
        return size

    def grid_size(self, points_per_param: int) -> int:
        """``len(grid(points_per_param))``, without listing it."""
        return math.prod(p.grid_count(points_per_param) for p in self.params)

    def grid_point(self, index: int, points_per_param: int) -> Config:
        """``grid(points_per_param)[index]``, without listing the grid: the index written in
        the mixed radix of the parameters' value counts, the last parameter's digit lowest."""
        size = self.grid_size(points_per_param)
        if not 0 <= index < size:
            raise IndexError(f"grid point {index} of {size}")
        digits: list[int] = []
        for p in reversed(self.params):
            index, k = divmod(index, p.grid_count(points_per_param))
            digits.append(k)
        return {
            p.name: p.grid_value(k, points_per_param)
            for p, k in zip(self.params, reversed(digits), strict=True)
        }

    def grid_index(self, config: Mapping[str, ParamValue], points_per_param: int) -> int | None:
        """The index of a normalized ``config`` in :meth:`grid`, or None when it is off the
        grid."""
        index = 0
        for p in self.params:
            k = p.grid_position(config[p.name], points_per_param) if p.name in config else None
            if k is None:
                return None
            index = index * p.grid_count(points_per_param) + k
        return index

    def normalize(self, config: Mapping[str, ParamValue]) -> Config:
        """``config`` in the space's order with canonical values (ints for int parameters)."""
        return {p.name: p.normalize(config[p.name]) for p in self.params if p.name in config}

    def problems(self, config: object, path: str) -> list[str]:
        """What stops ``config`` from being a point of this space (empty when it is one)."""
        if not isinstance(config, Mapping):
            return [f"{path}: expected a table of parameter values, got {type(config).__name__}"]
        out: list[str] = []
        for p in self.params:
            if p.name not in config:
                out.append(f"{path}: missing {p.name!r}")
        for key in config:
            if key not in self._by_name:
                out.append(unknown_key(path, str(key), self.names))
        for p in self.params:
            if p.name not in config:
                continue
            value = config[p.name]
            where = f"{path}.{p.name}"
            if p.contains(value):
                continue
            if p.type is ParamType.CHOICE:
                out.append(f"{where}: {value!r} is not one of {p._choices_text()}")
            elif not is_number(value):
                out.append(f"{where}: expected a number, got {value!r}")
            elif p.type.is_quantized and p.low <= float(value) <= p.high:
                out.append(
                    f"{where}: {_fmt(value)} is not on the grid {_fmt(p._num(p.low))} + k * "
                    f"{_fmt(p._num(p.step or 0.0))}"
                )
            else:
                out.append(
                    f"{where}: {_fmt(value)} is outside the range "
                    f"[{_fmt(p._num(p.low))}, {_fmt(p._num(p.high))}]"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}
