"""hpod.daemon.reads: every metric of a trial's reports, and the top k's rows."""

from __future__ import annotations

import math

from hpod.core.states import Decision
from hpod.daemon.reads import metric_summary, top_view
from hpod.daemon.store import ReportRow


def rep(i: int, resource: float | None, **metrics: object) -> ReportRow:
    return ReportRow(
        id=i,
        study_id="s-1",
        trial_id=0,
        run=1,
        resource=resource,
        metrics=dict(metrics),
        decision=Decision.CONTINUE,
        at=float(i),
    )


def test_every_metric_has_its_last_min_max_and_count() -> None:
    reports = [
        rep(1, 1.0, loss=0.5, acc=0.1, note="warmup"),
        rep(2, 2.0, loss=0.2, acc=0.3, lr=1e-3),
        rep(3, 3.0, loss=0.4, acc=math.nan, note="done"),
    ]
    out = metric_summary(reports, curve=False)
    assert out["loss"] == {"last": 0.4, "min": 0.2, "max": 0.5, "count": 3}
    # NaN is a value it reported (the last), but neither the least nor the most.
    assert math.isnan(out["acc"]["last"])
    assert (out["acc"]["min"], out["acc"]["max"], out["acc"]["count"]) == (0.1, 0.3, 3)
    assert out["note"] == {"last": "done", "min": None, "max": None, "count": 2}
    assert out["lr"] == {"last": 1e-3, "min": 1e-3, "max": 1e-3, "count": 1}
    assert "curve" not in out["loss"]


def test_the_curve_is_every_value_in_report_order() -> None:
    reports = [rep(1, 1.0, loss=0.5), rep(2, None, loss=0.3, step=7), rep(3, 2.0, loss=0.1)]
    out = metric_summary(reports, curve=True)
    assert out["loss"]["curve"] == [[1.0, 0.5], [None, 0.3], [2.0, 0.1]]
    assert out["step"]["curve"] == [[None, 7]]
    assert metric_summary([], curve=True) == {}


def test_top_view_takes_k_and_adds_the_last_reports_metrics() -> None:
    rows = [{"rank": 1, "trial": 0}, {"rank": 2, "trial": 1}, {"rank": 3, "trial": 2}]
    assert top_view(rows, 2, None) == rows[:2]
    last = {0: rep(9, 3.0, loss=0.1, acc=0.9)}
    out = top_view(rows, 5, last)
    assert [r["metrics"] for r in out] == [{"loss": 0.1, "acc": 0.9}, {}, {}]
    assert "metrics" not in rows[0]  # the rows given are not changed
