"""The reads a controller needs (issue 14): the top k trials, and every metric of one trial.

Pure over the engine's trials and the store's report rows; the wire methods
(:class:`hpod.daemon.methods.Methods`) read the rows off the event loop and build these views.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hpod.core.objective import Objective
from hpod.core.states import TrialState
from hpod.core.study import Study
from hpod.daemon.reports import pareto_fronts
from hpod.daemon.store import ReportRow

__all__ = ["curves_page", "metric_summary", "ranked", "top_view"]


def objective_number(value: Any) -> float | None:
    """A reported value as a float; None for one missing, not a number, or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def ranked(study: Study, *, only_completed: bool = False) -> list[dict[str, Any]]:
    """Every trial with an objective value, best first, as ``hpodctl report``'s top-k ranks
    them (its estimate where it got to, as ``Study.best``: the mean of its last counted reports,
    or its best for ``*_global``; ``last``: its last report, ``window``: how many the estimate
    averages; ties: the one that went further, then the lower id). ``only_completed``: trials
    that reached the end only."""
    objective = study.objective
    rows: list[dict[str, Any]] = []
    for t in study.trials:
        if not t.curve or (only_completed and t.state is not TrialState.COMPLETED):
            continue
        est = study.answer_of(t.trial_id)
        value = math.nan if est is None else est.value
        if math.isnan(value) and not objective.is_multi:
            continue
        rows.append(
            {
                "trial": t.trial_id,
                "objective": value,
                "last": math.nan if est is None else est.last,
                "window": 1 if est is None else est.window,
                "resource": t.last_resource,
                "state": t.state.value,
                "config": dict(t.config),
                "runs": t.runs,
            }
        )
    if objective.is_multi:
        # By Pareto front, crowding distance (larger first), trial id (Study.pareto), with
        # each metric's value and the front's number.
        order = study.pareto()
        fronts = pareto_fronts(objective, order)
        by_id = {r["trial"]: r for r in rows}
        rows = []
        for b in order:
            if b.trial_id not in by_id:
                continue
            row = by_id[b.trial_id]
            row["values"] = dict(zip(objective.names, b.values, strict=True))
            row["front"] = fronts[b.trial_id]
            rows.append(row)
    else:
        rows.sort(key=lambda r: (objective.sort_key(r["objective"]), -r["resource"], r["trial"]))
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    return rows


def top_view(
    rows: Sequence[dict[str, Any]], k: int, last: Mapping[int, ReportRow] | None
) -> list[dict[str, Any]]:
    """The first ``k`` of :func:`ranked`; with ``last`` (each trial's last report), every
    metric of that report as ``metrics`` (ClearML's ``all_metrics``)."""
    out = [dict(r) for r in rows[:k]]
    if last is not None:
        for row in out:
            rep = last.get(row["trial"])
            row["metrics"] = dict(rep.metrics) if rep is not None else {}
    return out


def metric_summary(reports: Iterable[ReportRow], *, curve: bool) -> dict[str, dict[str, Any]]:
    """Every metric the reports carry: its ``last`` value, its ``min`` and ``max`` over the
    numbers among them (None: none was a number), and with ``curve`` every value in report
    order as ``[resource, value]`` pairs (resource: the report's objective resource, or None)."""
    out: dict[str, dict[str, Any]] = {}
    for rep in reports:
        for name, value in rep.metrics.items():
            entry = out.setdefault(name, {"last": None, "min": None, "max": None, "count": 0})
            entry["last"] = value
            entry["count"] += 1
            if objective_number(value) is not None:
                entry["min"] = value if entry["min"] is None else min(entry["min"], value)
                entry["max"] = value if entry["max"] is None else max(entry["max"], value)
            if curve:
                entry.setdefault("curve", []).append([rep.resource, value])
    return out


def curves_page(objective: Objective, rows: Sequence[ReportRow], limit: int) -> dict[str, Any]:
    """The ``curves`` answer: the first ``limit`` of ``rows`` (report rows, oldest first) as
    points ``{id, trial, run, resource, at, value, metrics}`` (``value``: the objective metric's,
    None where the report had none or not a number), and ``next``: the last point's id when
    ``rows`` held more than ``limit``, else None. Reads nothing of the study but its (fixed)
    objective, so it may run off the loop."""
    points = [
        {
            "id": r.id,
            "trial": r.trial_id,
            "run": r.run,
            "resource": r.resource,
            "at": r.at,
            "value": objective_number(r.metrics.get(objective.metric)),
            "metrics": dict(r.metrics),
        }
        for r in rows[:limit]
    ]
    return {
        "metric": objective.metric,
        "mode": objective.mode.value,
        "resource": objective.resource,
        "points": points,
        "next": points[-1]["id"] if len(rows) > limit else None,
    }
