"""What the daemon answers: JSON-able views of studies and trials, built from the core's state."""

from __future__ import annotations

from typing import Any

from hpod.core.study import Best, Study, TrialRecord


def best_view(study_id: str, best: Best | None) -> dict[str, Any] | None:
    if best is None:
        return None
    return {
        "study": study_id,
        "trial": best.trial_id,
        "config": best.config,
        "objective": best.objective,
        "resource": best.resource,
    }


def trial_view(
    study: Study, rec: TrialRecord, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    curve = rec.curve
    out: dict[str, Any] = {
        "trial": rec.trial_id,
        "state": rec.state.value,
        "config": rec.config,
        "bracket": rec.bracket,
        "resume_from": rec.resume_from,
        "max_resource": rec.max_resource,
        "resource": curve[-1][0] if curve else None,
        "objective": study.value_of(rec.trial_id) if curve else None,
        "runs": rec.runs,
        "error": rec.error,
    }
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
        "objective": {
            "metric": study.objective.metric,
            "mode": study.objective.mode.value,
            "resource": study.objective.resource,
        },
    }
