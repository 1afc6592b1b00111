"""The objective report's PNGs (:mod:`hpod.plots`) beside report.json, drawn off the loop.

The daemon never imports matplotlib, nor :mod:`hpod.plots`: it looks the package up once
(:func:`available`), and each report's images are drawn by ``python -m hpod.plots``, a process of
its own that reads the report, the curves and the rungs on its stdin and writes the images, as
base64 JSON, on its stdout. It touches no file: the daemon writes the PNGs itself, as it writes
report.json (``hpod.daemon.statetree``: no link followed, 0600 and the owner's before the
rename), so a root daemon never follows a path that a user controls.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from hpod import wire
from hpod.core.objective import Objective
from hpod.daemon.reads import objective_number
from hpod.daemon.reports import best_rows
from hpod.daemon.statetree import Ids, open_dir, replace_file
from hpod.daemon.store import ReportRow
from hpod.plots import NAMES

__all__ = ["PLOT_NAMES", "PLOT_TIMEOUT", "available", "draw", "write_images"]

# The daemon writes no other name. (hpod.plots imports matplotlib only when it draws.)
PLOT_NAMES = NAMES
# The longest one drawing may take; past it the process is killed and the report has no images.
PLOT_TIMEOUT = 120.0
# The most bytes of images the process may answer with.
PLOT_MAX_BYTES = 64 * 1024**2
# The most reports a report's images draw. Past it they draw every report of the best trials and
# of an evenly spaced share of the rest: 270,000 reports (10,000 trials of 27 epochs) took
# minutes and 440 MB to draw, for curves no eye can tell apart.
PLOT_REPORTS_MAX = 20_000
# Of the trials drawn past that cap, this many are the best ones (by the report's ranking).
PLOT_BEST_TRIALS = 100


@functools.cache
def available() -> bool:
    """Whether matplotlib is installed (looked up once, never imported here)."""
    return importlib.util.find_spec("matplotlib") is not None


def encode(
    report: Mapping[str, Any],
    points: Iterable[Mapping[str, Any]],
    rungs: Sequence[Mapping[str, Any]],
) -> bytes:
    """What :func:`draw` hands ``hpod.plots``. Some seconds for a 10,000-trial study's
    reports: off the loop. ``points`` is read once, each encoded as it comes, so that an
    iterator over the store's pages (:func:`plot_points`) never holds every report at once."""
    head = json.dumps(wire.tag({"report": dict(report), "rungs": list(rungs)}), allow_nan=False)
    body = ",".join(json.dumps(wire.tag(dict(p)), allow_nan=False) for p in points)
    return (head[:-1] + ', "points": [' + body + "]}").encode("utf-8")


def drawn_trials(
    report: Mapping[str, Any], counts: Mapping[int, int], cap: int = PLOT_REPORTS_MAX
) -> list[int] | None:
    """The trials whose reports the images draw, by id; None: every one (``counts``, each
    trial's stored reports, add up to no more than ``cap``). Past the cap: the
    :data:`PLOT_BEST_TRIALS` best by the report's ``per_trial`` objective, then every k-th of
    the rest, as many as the cap holds at their mean reports a trial."""
    total = sum(counts.values())
    if total <= cap:
        return None
    valued = [
        r
        for r in report.get("per_trial") or []
        if isinstance(v := r.get("objective"), int | float) and v == v
    ]
    top = best_rows(report.get("objective") or {}, valued, PLOT_BEST_TRIALS)
    best = [tid for r in top if (tid := int(r["trial"])) in counts]
    room = cap - sum(counts[t] for t in best)
    rest = sorted(set(counts) - set(best))
    mean = total / len(counts)
    keep = max(0, int(room / mean))
    step = max(1, -(-len(rest) // keep)) if keep else len(rest) + 1
    return sorted([*best, *rest[::step]])


def plot_points(objective: Objective, rows: Iterable[ReportRow]) -> Iterator[dict[str, Any]]:
    """Each report as the images use it: its trial, resource, time and objective value (None
    where it had none); the metrics and the rest of a ``curves`` point are left out."""
    for r in rows:
        yield {
            "trial": r.trial_id,
            "resource": r.resource,
            "at": r.at,
            "value": objective_number(r.metrics.get(objective.metric)),
        }


async def draw(data: bytes) -> dict[str, bytes]:
    """The images of :func:`encode`'s ``data``, drawn by ``python -m hpod.plots`` (niced), by
    file name."""
    env = dict(os.environ, MPLBACKEND="Agg")
    with anyio.fail_after(PLOT_TIMEOUT):
        done = await anyio.run_process(
            [sys.executable, "-m", "hpod.plots"], input=data, env=env, check=True
        )
    if len(done.stdout) > PLOT_MAX_BYTES:
        raise ValueError(f"hpod.plots answered {len(done.stdout)} bytes")
    try:
        raw = json.loads(done.stdout)
        return {k: base64.b64decode(raw[k], validate=True) for k in PLOT_NAMES if k in raw}
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"hpod.plots answered something that is no images: {exc}") from None


def write_images(
    folder: Path, images: Mapping[str, bytes], *, within: Path, ids: Ids | None
) -> None:
    """Replace each image in ``folder`` atomically, as report.json is. Blocking: off the loop."""
    fd = open_dir(within, folder, ids, create=True)
    try:
        for name in PLOT_NAMES:
            if name in images:
                replace_file(fd, name, images[name], ids, folder)
        os.fsync(fd)
    finally:
        os.close(fd)
