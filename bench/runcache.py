"""A benchmark's cache of runs: one JSON line a run, keyed by method, benchmark, seed and the
fingerprint of the code that made it (bench/syne_baselines.py, bench/answer_rule.py). A file
named .gz is gzip, one member per appended row, which gzip reads back as one stream.

Standard library only: Syne Tune's environment imports it too.
"""

from __future__ import annotations

import fcntl
import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Key = tuple[str, str, int, str]


def read_cache(path: Path) -> dict[Key, dict[str, Any]]:
    """Every run in the cache by its key (a later line wins); empty when there is no file."""
    out: dict[Key, dict[str, Any]] = {}
    if path.exists():
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                out[(row["method"], row["benchmark"], row["seed"], row["fingerprint"])] = row
    return out


def append_cache(path: Path, row: Mapping[str, Any]) -> None:
    """Add one run (its ``fingerprint`` set) to the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    with path.open("ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two of these may append at once
        f.write(gzip.compress(line) if path.suffix == ".gz" else line)
