from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hpod.core.limits import Clocks
from hpod.core.spec import StudySpec
from hpod.core.study import Study
from hpod.daemon.reports import build_report, report_summary, trial_rows, write_report

SPEC = """
name = "r"
command = ["true"]
[objective]
metric = "loss"
mode = "min"
resource = "step"
[space]
x = { param_type = "uniform", range = [0.0, 1.0] }
[scheduler]
type = "fifo"
max_resource = 3
[limits]
optimization_time = "10s"
[report]
top_k = 2
"""


def study_with_results() -> Study:
    study = Study.new(StudySpec.from_toml(SPEC, base_dir=Path("/")))
    for loss in ([0.5, 0.4], [0.2, 0.3], [math.nan]):
        launch = study.next_launch(0.0)
        assert launch is not None
        for step, value in enumerate(loss, start=1):
            study.on_report(launch.trial_id, {"step": step, "loss": value}, 0.0)
        study.on_exit(launch.trial_id, 0, 0.0)
    return study


def test_build_report() -> None:
    study = study_with_results()
    r = build_report(
        "r-1",
        study,
        clocks=Clocks(2.5, 5.0, 3),
        now=100.0,
        created=90.0,
        ended=None,
        run_seconds={0: 1.0},
        compute_seconds={0: 2.0},
    )
    assert r["limits"]["optimization_time"]["share"] == 0.25
    assert r["best"]["trial"] == 1
    # Mode min ranks by the mean of the last reports (hpod.core.answer), the last one beside it.
    assert r["best"]["objective"] == pytest.approx(0.25)
    assert (r["best"]["last"], r["best"]["window"]) == (0.3, 2)
    assert [t["trial"] for t in r["top_k"]] == [1, 0]
    rows = {t["trial"]: t for t in r["per_trial"]}
    assert rows[1]["last"] == 0.3
    assert rows[1]["best"] == 0.2
    assert rows[2]["last"] is None  # NaN
    assert rows[0]["compute_seconds"] == 2.0
    assert set(report_summary(r)) >= {"elapsed", "limits", "best", "top_k", "trials"}


def test_write_report_replaces_both_files(tmp_path: Path) -> None:
    study = study_with_results()
    r = build_report(
        "r-1",
        study,
        clocks=Clocks(),
        now=1.0,
        created=0.0,
        ended=None,
        run_seconds={},
        compute_seconds={},
    )
    write_report(tmp_path, r)
    write_report(tmp_path, r)
    assert json.loads((tmp_path / "report.json").read_text())["best"]["trial"] == 1
    lines = (tmp_path / "report.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "x"
    assert len(lines) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.json"]


def test_per_trial_rows_made_in_slices_are_the_rows_made_at_once() -> None:
    # The daemon makes a report's rows a slice at a time (the loop turns between slices).
    study = study_with_results()
    whole = trial_rows(study, {0: 1.0}, {0: 2.0})
    sliced = [row for i in range(3) for row in trial_rows(study, {0: 1.0}, {0: 2.0}, i, i + 1)]
    assert json.dumps(sliced) == json.dumps(whole)
    assert [r["trial"] for r in whole] == [0, 1, 2]
    assert (whole[0]["resource"], whole[0]["last"], whole[0]["best"]) == (2.0, 0.4, 0.4)
