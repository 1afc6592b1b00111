"""End to end (issue 16, item 3): the paged ``curves`` method, ``hpodctl curves``, ``export`` and
``plot``, and the report's PNGs beside report.json, against a real daemon and its store."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from hpod.client import Client
from hpod.errors import InvalidParams, NotFound
from tests.e2e.specs import spec
from tests.e2e.test_set_and_reads import until
from tests.e2e.test_settings import serve

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("objective.png", "curves.png", "parallel.png", "rungs.png")
# ASHA on the 3 x 3 grid, 9 steps: rungs at 1 and 3; two trials at a time.
ASHA = spec("curvy", steps=9, limits="max_concurrent = 2", period="1s").replace(
    'type = "fifo"', 'type = "asha"\nmin_resource = 1\nreduction_factor = 3'
)


def matplotlib_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def stored_reports(d: Any, sid: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(d.state_dir / "hpod.sqlite3")
    try:
        return list(
            conn.execute(
                "SELECT id, trial_id, run, resource, metrics FROM reports WHERE study_id = ?"
                " ORDER BY id",
                (sid,),
            )
        )
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One daemon with one ended ASHA study, shared by the read tests below."""
    import shutil
    import tempfile

    from tests.e2e.conftest import DaemonHandle

    root = Path(tempfile.mkdtemp(prefix="hpod"))
    d = DaemonHandle(root, 2)
    d.start()
    try:
        path = d.write_spec("curvy", ASHA)
        with Client(d.socket) as c:
            sid = c.submit(path)["study"]
            assert c.wait(sid, timeout=90)["state"] == "completed"
        yield d, sid
    finally:
        if d.proc is not None:
            assert d.stop() == 0, d.output()
        shutil.rmtree(root, ignore_errors=True)


def test_curves_pages_through_every_report_in_store_order(ended: Any) -> None:
    d, sid = ended
    stored = stored_reports(d, sid)
    assert len(stored) > 9
    with Client(d.socket) as c:
        pages, after = [], 0
        while True:
            page = c.curves(sid, after=after, limit=4)
            pages.append(page)
            assert len(page["points"]) <= 4
            if page["next"] is None:
                break
            after = page["next"]
            assert after == page["points"][-1]["id"]
        points = [p for page in pages for p in page["points"]]
        assert len(pages) == -(-len(stored) // 4) or len(stored) % 4 == 0
        assert [(p["id"], p["trial"], p["run"], p["resource"]) for p in points] == [
            tuple(r[:4]) for r in stored
        ]
        assert all(
            p["value"] == json.loads(r[4])["loss"] for p, r in zip(points, stored, strict=True)
        )
        assert pages[0]["metric"] == "loss"
        assert pages[0]["resource"] == "step"
        assert c.curve_points(sid) == points
        # One trial's: only its points, the same pages.
        mine = c.curve_points(sid, 0)
        assert mine
        assert mine == [p for p in points if p["trial"] == 0]
        # The last page of a cursor at the end is empty, with no next.
        assert c.curves(sid, after=points[-1]["id"]) == {**pages[0], "points": [], "next": None}
        with pytest.raises(NotFound):
            c.curves(sid, 99)
        with pytest.raises(InvalidParams, match="limit"):
            c.curves(sid, limit=0)


def test_hpodctl_curves_prints_each_trial_and_its_json(ended: Any) -> None:
    d, sid = ended
    out = d.ctl("curves", sid, check=True).stdout
    assert "trial 0: loss by step" in out
    assert "STEP" in out
    assert "LOSS" in out
    one = d.ctl_json("curves", sid, "--trial", "1")
    assert one["metric"] == "loss"
    assert {p["trial"] for p in one["points"]} == {1}
    assert len(one["points"]) == sum(1 for r in stored_reports(d, sid) if r[1] == 1)


def test_export_csv_and_json_hold_every_trial_config_and_metric(ended: Any) -> None:
    d, sid = ended
    stored = stored_reports(d, sid)
    text = d.ctl("export", sid, "--format", "csv", check=True).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(stored)
    assert {"trial", "state", "config.x", "config.y", "metric.loss", "resource"} <= set(rows[0])
    assert sorted(int(r["report"]) for r in rows) == [r[0] for r in stored]
    assert {r["trial"] for r in rows} == {str(r[1]) for r in stored}
    by_id = {r[0]: json.loads(r[4]) for r in stored}
    for r in rows:
        assert float(r["metric.loss"]) == by_id[int(r["report"])]["loss"]
    out = d.root / "export.json"
    d.ctl("export", sid, "--format", "json", "--out", str(out), check=True)
    data = json.loads(out.read_text())
    assert data["study"] == sid
    assert len(data["trials"]) == len(d.ctl_json("trials", sid))
    assert sum(len(t["reports"]) for t in data["trials"]) == len(stored)
    assert all("x" in t["config"] and "y" in t["config"] for t in data["trials"])


@pytest.mark.skipif(not matplotlib_here(), reason="needs matplotlib (the plot extra)")
def test_hpodctl_plot_writes_the_four_pngs(ended: Any) -> None:
    d, sid = ended
    out = d.root / "plots"
    res = d.ctl("plot", sid, "--out", str(out), check=True)
    assert sorted(Path(line).name for line in res.stdout.split()) == sorted(NAMES)
    for name in NAMES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 10_000, name  # a drawing, not an empty canvas


@pytest.mark.skipif(not matplotlib_here(), reason="needs matplotlib (the plot extra)")
def test_the_report_writes_its_pngs_beside_report_json(ended: Any) -> None:
    d, sid = ended
    folder = d.state_dir / "studies" / sid
    # Drawn off the loop after the study's last report: there soon after it ended.
    until(lambda: all((folder / n).exists() for n in NAMES), 60, "the report's PNGs")
    for name in NAMES:
        st = (folder / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (folder / name).read_bytes().startswith(PNG)
    assert (folder / "report.json").exists()
    assert not list(folder.glob(".*.tmp"))
    # Drawn by a process of its own: the daemon never loaded matplotlib (its compiled parts
    # would be mapped into it).
    assert d.proc is not None
    maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    assert "matplotlib" not in maps


@pytest.mark.parametrize("plots", [True, False])
def test_setting_report_plots(daemon_factory: Any, plots: bool) -> None:
    if plots and not matplotlib_here():
        pytest.skip("needs matplotlib (the plot extra)")
    d = serve(daemon_factory, report_plots=plots)
    path = d.write_spec(
        "one", spec("one", steps=2, limits="max_trials = 2", points="partial_grid = true")
    )
    with Client(d.socket) as c:
        sid = c.submit(path)["study"]
        assert c.wait(sid, timeout=60)["state"] == "completed"
    folder = d.state_dir / "studies" / sid
    if plots:
        until(lambda: (folder / "rungs.png").exists(), 60, "the report's PNGs")
        return
    d.stop()  # a drawing would have been waited for by the shutdown
    assert (folder / "report.json").exists()
    assert not list(folder.glob("*.png"))
