"""What the daemon answers: JSON-able views of studies and trials, built from the core's state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hpod import wire
from hpod.core.plans import TrialView
from hpod.core.study import Best, OomRetry, Study

# A page of ``trials`` stops once its views hold this many bytes of JSON, whatever ``limit``
# says: it leaves room for the largest configuration, and a page costs the loop a bounded time
# to build and encode (a quarter of the line cap, about 1,000 trials, held the loop 30-40 ms a
# page; 32 KiB, about 125 trials, a few ms).
PAGE_BYTES = wire.MAX_LINE // 32


def best_view(study_id: str, best: Best | None) -> dict[str, Any] | None:
    """One trial as ``best`` answers it: ``objective``, the estimate it ranks by (the mean of
    its last ``window`` counted reports, or its best one for ``*_global``: hpod.core.answer),
    and ``last``, its last counted report; a multi-objective one with ``values``, each metric's
    value (``objective`` is the first one's)."""
    if best is None:
        return None
    out: dict[str, Any] = {
        "study": study_id,
        "trial": best.trial_id,
        "config": best.config,
        "objective": best.objective,
        "last": best.last,
        "window": best.window,
        "resource": best.resource,
    }
    if best.values:
        out["values"] = dict(zip(best.names, best.values, strict=True))
    return out


def front_view(study_id: str, study: Study) -> list[dict[str, Any]]:
    """The Pareto front (multi-objective ``best``), ranked by crowding distance, then trial id;
    a single objective's is its best, alone."""
    views = (best_view(study_id, b) for b in study.front())
    return [v for v in views if v is not None]


def objective_view(study: Study) -> dict[str, Any]:
    objective = study.objective
    out: dict[str, Any] = {
        "metric": objective.metric,
        "mode": objective.mode.value,
        "resource": objective.resource,
    }
    if objective.is_multi:
        out["metrics"] = [{"name": m.name, "mode": m.mode.value} for m in objective.metrics]
    return out


class Viewed(TrialView, Protocol):
    """What a trial's view reads: the study's own trial (``Study.trial``, ``Study.trials``)."""

    @property
    def runs(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def retries(self) -> Sequence[OomRetry]: ...


def trial_view(study: Study, rec: Viewed, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    curve = rec.curve
    # The curve is in resource order: its last key is its highest level.
    top = next(reversed(curve)) if curve else None
    out: dict[str, Any] = {
        "trial": rec.trial_id,
        "state": rec.state.value,
        "config": dict(rec.config),
        "bracket": rec.bracket,
        "resume_from": rec.resume_from,
        "max_resource": rec.max_resource,
        "resource": top,
        # The estimate it ranks by for the answer, and its last counted report (hpod.core.answer).
        "objective": study.value_of(rec.trial_id) if curve else None,
        "last": curve[top] if top is not None else None,
        "runs": rec.runs,
        "error": rec.error,
        # Out-of-memory retries, oldest first: {run, key, from, to, at, error} (docs/oom.md).
        "retries": [r.to_dict() for r in rec.retries],
    }
    if study.objective.is_multi:
        # Each metric's value the trial ranks by (``objective`` is the first one's).
        vector = study.vector_of(rec.trial_id)
        out["values"] = dict(zip(study.objective.names, vector, strict=True)) if curve else None
    if extra:
        out.update(extra)
    return out


def summary_view(
    study_id: str,
    study: Study,
    *,
    owner: int,
    created: float,
    ended: float | None,
    held: str | None = None,
) -> dict[str, Any]:
    counts = {k: v for k, v in study.counts().items() if v}
    return {
        "study": study_id,
        "name": study.spec.name,
        "state": study.state.value,
        "owner": owner,
        "created": created,
        "ended": ended,
        "end_reason": study.end_reason,
        # Why nothing starts now though the study is not over: "disk full: ..." (hpod.daemon.disk).
        "held": held,
        "trials": counts,
        "total_trials": len(study.trials),
        "max_trials": study.spec.limits.max_trials,
        "best": best_view(study_id, study.best()),
        "objective": objective_view(study),
        **({"front": front_view(study_id, study)} if study.objective.is_multi else {}),
    }


def trials_page(study: Study, after: int, limit: int) -> dict[str, Any]:
    """The paged ``trials`` answer: the views of trials ``after``, ``after + 1``... (at most
    ``limit``, and no more than :data:`PAGE_BYTES` of them), and ``next``: the ``after`` of the
    next page, or None when this page reached the last trial there is now."""
    total = len(study.trials)
    views: list[dict[str, Any]] = []
    size = 0
    at = after
    end = min(total, after + limit)
    trials = study.trials
    while at < end and size < PAGE_BYTES:
        t = trials[at]
        view = trial_view(study, t)
        # About the view's JSON size (its repr, without encoding it twice): a config of
        # non-ASCII text is up to 6 times longer in JSON, which 32 pages of this still hold.
        size += 200 + len(repr(view["config"])) + len(repr(view["retries"])) + len(t.error or "")
        views.append(view)
        at += 1
    return {"trials": views, "next": at if at < total else None}
