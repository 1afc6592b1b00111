"""`hpodctl top`'s view without a terminal: what the state becomes from snapshots and events, the
lines it draws (80 columns, cut to the height), and the tail of the event stream."""

from __future__ import annotations

from typing import Any

import pytest

from hpod.cli.top import TopState, _fmt_rate, tail_cursor
from hpod.client import Client
from tests.wire_server import WireServer

SUMMARY = {
    "study": "s1", "name": "quad", "state": "running", "owner": 0,
    "trials": {"running": 2, "completed": 1}, "total_trials": 3, "max_trials": 10,
    "best": {"trial": 0, "objective": 0.5}, "objective": {"metric": "loss", "mode": "min"},
}  # fmt: skip
DETAIL = {
    "limits_detail": {
        "optimization_time": {"limit": 600.0, "used": 60.0, "share": 0.1},
        "max_trials": {"limit": 10.0, "used": 3.0, "share": 0.3},
    },
    "deadline": None,
}
LONG = {f"param_{i}": 0.123456789 * i for i in range(12)}
TRIALS = [
    {"trial": 0, "state": "completed", "resource": 9, "max_resource": 9, "objective": 0.5},
    {"trial": 1, "state": "running", "resource": 2, "max_resource": 9, "objective": 0.9,
     "config": LONG},
    {"trial": 2, "state": "running", "resource": None, "max_resource": 9, "objective": None,
     "config": {"x": 1}},
]  # fmt: skip
GPUS = {
    "gpus": [
        {"index": 0, "memory_used_mib": 2048, "memory_total_mib": 81920, "utilization": 40,
         "holders": [{"study": "s1", "trial": 1}]},
        {"index": 1, "memory_used_mib": 0, "memory_total_mib": 81920, "utilization": 0,
         "holders": [{"study": "s1", "trial": 1}]},
    ],
    "cpu_slots": {"size": 2, "free": 1, "holders": [{"slot": 0, "study": "s1", "trial": 2}]},
}  # fmt: skip


def _state() -> TopState:
    state = TopState(None, "/run/hpod/hpod.sock")
    for sid in state.apply_studies([SUMMARY]):
        state.apply_detail(sid, DETAIL)
        state.apply_trials(sid, TRIALS)
    state.apply_gpus(GPUS)
    return state


def _cells(lines: list[str], first: str, second: str) -> list[str]:
    return next(line.split() for line in lines if line.split()[:2] == [first, second])


def test_the_view_from_the_snapshots() -> None:
    lines = _state().lines(80, None, now=0.0)
    assert all(len(line) <= 80 for line in lines)
    study = _cells(lines, "s1", "running")
    assert study == ["s1", "running", "1/10", "0.5", "(trial", "0)", "time", "10%", "trials", "30%"]
    assert _cells(lines, "s1", "1")[:6] == ["s1", "1", "2/9", "-", "0.9", "gpu0,1"]
    assert _cells(lines, "s1", "2")[:6] == ["s1", "2", "-/9", "-", "-", "cpu"]
    assert ["0", "2048/81920", "MiB", "40%", "s1/1"] in [line.split() for line in lines]
    assert "cpu slots: 1 free of 2; held by s1/2" in lines


def test_reports_move_the_trial_and_the_best() -> None:
    state = _state()
    state.read_upto = 10
    # An event from before the snapshot dates the rate only; the later ones move the row.
    base = {"study": "s1", "trial": 1, "kind": "trial_reported"}
    state.apply_event({**base, "id": 9, "at": 100.0,
                       "data": {"resource": 1, "metrics": {"loss": 2.0}}})  # fmt: skip
    assert _cells(state.lines(80, None, 0.0), "s1", "1")[2:5] == ["2/9", "-", "0.9"]
    state.apply_event({**base, "id": 11, "at": 130.0,
                       "data": {"resource": 4, "metrics": {"loss": 0.25}}})  # fmt: skip
    state.apply_event({"id": 12, "study": "s1", "trial": 1, "at": 130.0, "kind": "new_best",
                       "data": {"trial": 1, "objective": 0.25}})  # fmt: skip
    lines = state.lines(80, None, 0.0)
    assert _cells(lines, "s1", "1")[2:5] == ["4/9", "6/m", "0.25"]  # 3 steps in 30 s
    assert _cells(lines, "s1", "running")[3:6] == ["0.25", "(trial", "1)"]
    assert not state.reload.is_set()  # nothing else to read for a report
    state.apply_event({"id": 13, "study": "s1", "trial": 1, "at": 131.0, "kind": "trial_ended",
                       "data": {}})  # fmt: skip
    assert state.reload.is_set()  # which trials run has changed: read them again


def test_the_view_fits_the_height() -> None:
    state = _state()
    many = [{"trial": i, "state": "running", "resource": 1, "max_resource": 9} for i in range(50)]
    state.apply_trials("s1", many)
    lines = state.lines(80, 24, 0.0)
    assert len(lines) <= 24
    assert any(line.startswith("... ") and "more running trials" in line for line in lines)


@pytest.mark.parametrize(
    ("rate", "shown"), [(None, "-"), (2.5, "2.5/s"), (0.2, "12/m"), (1 / 7200, "0.5/h")]
)
def test_rates(rate: float | None, shown: str) -> None:
    assert _fmt_rate(rate) == shown


@pytest.mark.parametrize("last", [0, 1, 1023, 1024, 5000, 123_457])
def test_the_tail_of_the_stream(last: int) -> None:
    asked: list[int] = []

    def events(params: dict[str, Any]) -> Any:
        asked.append(params["after"])
        after = params["after"]
        return {"events": [{"id": after + 1}] if after < last else [], "cursor": after}

    with WireServer({"events": events}) as server, Client(server.path) as client:
        assert tail_cursor(client, None) == last
    assert len(asked) < 45  # a few dozen one-event polls, never the history


def test_a_lost_daemon_is_said_and_the_last_state_kept() -> None:
    state = _state()
    state.set_error("no hpod daemon is listening on /run/hpod/hpod.sock")
    lines = state.lines(80, None, 0.0)
    assert lines[-1] == "! no hpod daemon is listening on /run/hpod/hpod.sock"
    assert _cells(lines, "s1", "1")[:3] == ["s1", "1", "2/9"]  # still shown
