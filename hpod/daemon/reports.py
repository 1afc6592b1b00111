"""Periodic objective reports: ``report.json`` and ``report.csv`` in the study's folder.

``build_report`` is pure (the study, its clocks and GPU use in, a JSON-able dict out), so the
daemon's `report` method, the files and the ``objective_report`` log event all say the same.
``write_report`` replaces both files atomically: a reader sees the old report or the new one,
never half of one. The study's folder is its owner's, so the files are written as
``hpod.daemon.statetree`` says: no link followed, 0600 and the owner's before the rename.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpod import wire
from hpod.core.limits import Clocks, usage
from hpod.core.objective import Objective
from hpod.core.pareto import non_dominated_sort
from hpod.core.study import Best, Study
from hpod.daemon.statetree import Ids, open_dir, replace_file
from hpod.daemon.views import best_view, front_view, objective_view

__all__ = ["build_report", "report_summary", "write_report"]


def _num(value: float | None) -> float | None:
    # JSON has no NaN; a trial whose metric was not a number shows as null here.
    if value is None or not math.isfinite(value):
        return None
    return value


def _best_of(study: Study, curve: Mapping[float, float]) -> float | None:
    values = [v for v in curve.values() if not math.isnan(v)]
    if not values:
        return None
    return max(values) if study.objective.maximize else min(values)


def trial_rows(
    study: Study,
    run_seconds: Mapping[int, float],
    compute_seconds: Mapping[int, float],
    start: int = 0,
    stop: int | None = None,
) -> list[dict[str, Any]]:
    """The report's ``per_trial`` rows of trials ``start`` to ``stop`` (all: the defaults)."""
    objective = study.objective
    rows: list[dict[str, Any]] = []
    for t in study.trials[start:stop]:
        curve = t.curve
        # The curve is kept in resource order: its last key is its highest level.
        top = next(reversed(curve)) if curve else None
        rows.append(
            {
                "trial": t.trial_id,
                "state": t.state.value,
                "resource": top,
                "objective": _num(study.value_of(t.trial_id)) if curve else None,
                "last": _num(curve[top]) if top is not None else None,
                "best": _num(_best_of(study, curve)),
                "runs": t.runs,
                "run_seconds": round(run_seconds.get(t.trial_id, 0.0), 3),
                "compute_seconds": round(compute_seconds.get(t.trial_id, 0.0), 3),
                "config": dict(t.config),
            }
        )
        if objective.is_multi:
            vector = study.vector_of(t.trial_id)
            rows[-1]["values"] = (
                {n: _num(v) for n, v in zip(objective.names, vector, strict=True)}
                if curve
                else None
            )
    return rows


def build_report(
    study_id: str,
    study: Study,
    *,
    clocks: Clocks,
    now: float,
    created: float,
    ended: float | None,
    run_seconds: Mapping[int, float],
    compute_seconds: Mapping[int, float],
    gpus: Sequence[Mapping[str, Any]] = (),
    rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report as of ``now`` (wall clock seconds). ``rows``: its ``per_trial`` rows, made
    already by :func:`trial_rows` (the daemon makes them a slice at a time); None: made here."""
    spec = study.spec
    objective = study.objective
    if rows is None:
        rows = trial_rows(study, run_seconds, compute_seconds)

    fronts: dict[int, int] = {}
    by_id = {r["trial"]: r for r in rows}
    if objective.is_multi:
        # By Pareto front, crowding distance (larger first), trial id: Study.pareto's order.
        order = study.pareto()
        fronts = pareto_fronts(objective, order)
        ranked = [by_id[b.trial_id] for b in order]
    else:
        # The study's own order (its answer index): sorting 10,000 rows here held the loop
        # 57 ms. A row made before its trial changed is shown as it was made.
        ranked = [
            row
            for tid in study.top(spec.report.top_k)
            if (row := by_id.get(tid)) is not None and row["objective"] is not None
        ]
    top = [
        {
            "rank": i + 1,
            "trial": r["trial"],
            "objective": r["objective"],
            "resource": r["resource"],
            "state": r["state"],
            "config": r["config"],
            **({"values": r["values"], "front": fronts[r["trial"]]} if fronts else {}),
        }
        for i, r in enumerate(ranked[: spec.report.top_k])
    ]
    return {
        "study": study_id,
        "name": spec.name,
        "state": study.state.value,
        "end_reason": study.end_reason,
        "generated": now,
        "created": created,
        "ended": ended,
        "objective": objective_view(study),
        "elapsed": round(clocks.elapsed, 3),
        "compute": round(clocks.compute, 3),
        "limits": usage(spec.limits, clocks),
        "trials": {k: v for k, v in study.counts().items() if v},
        "total_trials": len(study.trials),
        "best": best_view(study_id, study.best()),
        **({"front": front_view(study_id, study)} if objective.is_multi else {}),
        "top_k": top,
        "per_trial": rows,
        "gpus": [dict(g) for g in gpus],
    }


def best_rows(
    objective: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], keep: int
) -> list[Mapping[str, Any]]:
    """The ``keep`` best of a report's ``per_trial`` rows (``objective``: the report's view of
    it; by the first metric's value for several), in trial order; rows with no value go last."""
    mode = str(objective.get("mode") or (objective.get("metrics") or [{}])[0].get("mode"))
    sign = -1.0 if mode.startswith("max") else 1.0

    def key(row: Mapping[str, Any]) -> tuple[int, float, int]:
        value = row.get("objective")
        if not isinstance(value, int | float) or value != value:
            return (1, 0.0, int(row["trial"]))
        return (0, sign * float(value), int(row["trial"]))

    return sorted(sorted(rows, key=key)[:keep], key=lambda r: int(r["trial"]))


def pareto_fronts(objective: Objective, ranked: Sequence[Best]) -> dict[int, int]:
    """Each trial's front number (0: the Pareto front) among ``ranked`` (Study.pareto)."""
    points = [objective.minimized(b.values) for b in ranked]
    out: dict[int, int] = {}
    for number, front in enumerate(non_dominated_sort(points)):
        for i in front:
            out[ranked[i].trial_id] = number
    return out


def report_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a report that goes into the ``objective_report`` log event."""
    keys = (
        "study",
        "state",
        "elapsed",
        "compute",
        "limits",
        "trials",
        "best",
        "front",
        "top_k",
        "gpus",
    )
    return {k: report.get(k) for k in keys}


def _csv_text(report: Mapping[str, Any]) -> str:
    rows: list[Mapping[str, Any]] = report.get("per_trial") or []
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r.get("config", {}) if k not in keys)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["trial", "state", "resource", "objective", "last", "best", "runs", "run_seconds"]
    # Several objectives: a column per metric, its value the trial ranks by.
    metrics = [str(m.get("name")) for m in (report.get("objective") or {}).get("metrics", [])]
    writer.writerow([*head, "compute_seconds", *metrics, *keys])
    for r in rows:
        cfg = r.get("config", {})
        values = r.get("values") or {}
        writer.writerow(
            [
                *("" if r.get(k) is None else r.get(k) for k in head),
                r.get("compute_seconds"),
                *("" if values.get(m) is None else values.get(m) for m in metrics),
                *("" if cfg.get(k) is None else cfg.get(k) for k in keys),
            ]
        )
    return buf.getvalue()


def write_report(
    folder: Path,
    report: Mapping[str, Any],
    *,
    within: Path | None = None,
    ids: Ids | None = None,
) -> None:
    """Replace ``report.json`` and ``report.csv`` atomically. Blocking: call it off the loop.

    ``folder`` is walked from ``within`` (default: its parent) without following links; the
    files are 0600 and belong to ``ids`` (None: the daemon's user). UnsafePath for a folder
    the daemon will not write in."""
    text = json.dumps(wire.tag(dict(report)), indent=2, allow_nan=False) + "\n"
    top = within if within is not None else folder.parent
    fd = open_dir(top, folder, ids, create=True)
    try:
        replace_file(fd, "report.json", text.encode("utf-8"), ids, folder)
        replace_file(fd, "report.csv", _csv_text(report).encode("utf-8"), ids, folder)
        # The renames are durable once the folder is.
        os.fsync(fd)
    finally:
        os.close(fd)
