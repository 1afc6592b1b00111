"""Writing a spec's tables back out as TOML text (the standard library only reads TOML).

Only what a study spec holds: tables of strings, numbers, booleans and lists of them, lists of
inline tables (``points_to_evaluate``), and sub-tables. A spec made in Python
(``hpod.Optimizer``) or from another format (OTX's ``hpo_config.yaml``, :mod:`hpod.core.otx`)
is submitted as the TOML this module writes, so the daemon reads and stores that text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["to_toml"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML's basic-string escapes (\uXXXX, \", \\, \n ...).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(table: Mapping[str, Any]) -> str:
    """``table`` as TOML text: its plain keys first, then one ``[section]`` per sub-table, whose
    own tables (a parameter of ``[space]``, ``[scheduler.options]``) are written inline."""
    lines: list[str] = []
    sections: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            sections.append((str(key), value))
        else:
            lines.append(f"{_key(str(key))} = {_value(value)}")
    for key, section in sections:
        lines.append("")
        lines.append(f"[{_key(key)}]")
        lines.extend(f"{_key(str(k))} = {_value(v)}" for k, v in section.items())
    return "\n".join(lines) + "\n"
