"""hpod.trial against a real socket speaking the wire (tests/wire_server.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod import trial
from hpod.core.states import Decision
from hpod.errors import DaemonUnavailable, InvalidParams, MethodNotFound, TokenRejected
from tests.wire_server import WireServer, raising

pytestmark = pytest.mark.usefixtures("clean_trial_env")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer({"trial.report": {"decision": "CONTINUE"}}) as srv:
        yield srv


@pytest.fixture
def in_trial(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("HPOD_SOCKET", server.path)
    monkeypatch.setenv("HPOD_STUDY", "s1")
    monkeypatch.setenv("HPOD_TRIAL", "3")
    monkeypatch.setenv("HPOD_TOKEN", "secret")
    return server


def test_decisions_are_the_enum_members() -> None:
    assert trial.CONTINUE is Decision.CONTINUE
    assert trial.PAUSE is Decision.PAUSE
    assert trial.STOP is Decision.STOP


def test_report_round_trip(in_trial: WireServer) -> None:
    in_trial.methods["trial.report"] = {"decision": "PAUSE"}
    decision = trial.report(epoch=3, val_acc=0.91, diverged=False)
    assert decision is trial.PAUSE
    [params] = in_trial.calls("trial.report")
    assert params == {
        "study": "s1",
        "trial": 3,
        "token": "secret",
        "metrics": {"epoch": 3, "val_acc": 0.91, "diverged": False},
    }
    assert isinstance(params["trial"], int)


def test_reports_share_one_connection(in_trial: WireServer) -> None:
    decisions = [trial.report(epoch=e, loss=1.0 / e) for e in range(1, 4)]
    assert decisions == [trial.CONTINUE] * 3
    assert in_trial.connections == 1
    assert len(in_trial.calls("hello")) == 1
    assert in_trial.calls("hello")[0]["client"] == "hpod.trial"


def test_non_finite_metrics_travel_tagged(in_trial: WireServer) -> None:
    trial.report(epoch=1, loss=math.nan, grad=-math.inf)
    [params] = in_trial.calls("trial.report")
    assert math.isnan(params["metrics"]["loss"])
    assert params["metrics"]["grad"] == -math.inf


def test_numeric_lookalikes_are_converted_and_others_refused(in_trial: WireServer) -> None:
    class Scalar:  # what a numpy float32 or a 0-d tensor looks like to us
        def __float__(self) -> float:
            return 0.5

    trial.report(epoch=1, acc=Scalar())
    assert in_trial.calls("trial.report")[0]["metrics"]["acc"] == 0.5
    with pytest.raises(TypeError, match="'acc' must be a number"):
        trial.report(epoch=1, acc="high")
    with pytest.raises(ValueError, match="at least one metric"):
        trial.report()


def test_token_rejected(in_trial: WireServer) -> None:
    in_trial.methods["trial.report"] = raising(TokenRejected("bad token for trial 3"))
    with pytest.raises(TokenRejected, match="HPOD_TOKEN does not match") as info:
        trial.report(epoch=1, acc=0.5)
    assert "bad token for trial 3" in info.value.message


def test_reconnects_after_the_connection_drops(in_trial: WireServer) -> None:
    assert trial.report(epoch=1, acc=0.5) is trial.CONTINUE
    in_trial.drop_connections()
    in_trial.methods["trial.report"] = {"decision": "STOP"}
    assert trial.report(epoch=2, acc=0.6) is trial.STOP
    assert len(in_trial.calls("hello")) == 2
    assert [p["metrics"]["epoch"] for p in in_trial.calls("trial.report")] == [1, 2]


def test_reconnects_to_a_restarted_daemon(in_trial: WireServer) -> None:
    assert trial.report(epoch=1, acc=0.5) is trial.CONTINUE
    in_trial.restart()
    in_trial.methods["trial.report"] = {"decision": "PAUSE"}
    assert trial.report(epoch=2, acc=0.6) is trial.PAUSE
    assert [p["metrics"]["epoch"] for p in in_trial.calls("trial.report")] == [1, 2]
    assert in_trial.connections == 2


def test_gives_up_after_one_reconnect(in_trial: WireServer) -> None:
    assert trial.report(epoch=1, acc=0.5) is trial.CONTINUE
    in_trial.close()  # gone for good: the socket file too
    with pytest.raises(DaemonUnavailable, match="hpod serve --socket"):
        trial.report(epoch=2, acc=0.6)


def test_no_daemon_at_all(in_trial: WireServer) -> None:
    in_trial.close()
    with pytest.raises(DaemonUnavailable, match="hpod serve --socket"):
        trial.report(epoch=1, acc=0.5)


def test_report_oom(in_trial: WireServer) -> None:
    assert trial.report_oom() is False  # a daemon without trial.oom: not an error
    in_trial.methods["trial.oom"] = {}
    assert trial.report_oom() is True
    assert in_trial.calls("trial.oom")[-1] == {"study": "s1", "trial": 3, "token": "secret"}


def test_method_not_found_still_raises_for_report(in_trial: WireServer) -> None:
    del in_trial.methods["trial.report"]
    with pytest.raises(MethodNotFound):
        trial.report(epoch=1)


def test_missing_identity_is_explained(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPOD_SOCKET", server.path)
    with pytest.raises(InvalidParams, match="HPOD_STUDY, HPOD_TRIAL, HPOD_TOKEN"):
        trial.report(epoch=1)


def test_environment_accessors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPOD_SOCKET", "/nowhere.sock")
    monkeypatch.setenv("HPOD_STUDY", "s7")
    monkeypatch.setenv("HPOD_TRIAL", "12")
    monkeypatch.setenv("HPOD_CONFIG", json.dumps({"lr": 0.01, "opt": "adam"}))
    monkeypatch.setenv("HPOD_RESUME_FROM", "9")
    monkeypatch.setenv("HPOD_MAX_RESOURCE", "27")
    ckpt = tmp_path / "trials" / "12" / "checkpoint"
    monkeypatch.setenv("HPOD_CHECKPOINT_DIR", str(ckpt))
    assert trial.inside_hpod()
    assert trial.config() == {"lr": 0.01, "opt": "adam"}
    assert trial.config({"lr": 1.0, "width": 64}) == {"lr": 0.01, "opt": "adam", "width": 64}
    assert trial.resume_from() == 9
    assert trial.max_resource() == 27
    assert trial.max_resource(default=5) == 27
    assert trial.trial_id() == 12
    assert trial.study_id() == "s7"
    assert trial.checkpoint_dir() == ckpt
    assert ckpt.is_dir()
    assert trial.trial_dir() == ckpt.parent
    monkeypatch.setenv("HPOD_TRIAL_DIR", str(tmp_path / "elsewhere"))
    assert trial.trial_dir() == tmp_path / "elsewhere"


def test_bad_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPOD_CONFIG", "[1, 2]")
    with pytest.raises(InvalidParams, match="JSON object"):
        trial.config()
    monkeypatch.setenv("HPOD_CONFIG", "{nope")
    with pytest.raises(InvalidParams, match="not JSON"):
        trial.config()
    monkeypatch.setenv("HPOD_RESUME_FROM", "3.0")
    assert trial.resume_from() == 3
    monkeypatch.setenv("HPOD_RESUME_FROM", "2.5")
    with pytest.raises(InvalidParams, match="HPOD_RESUME_FROM must be an integer"):
        trial.resume_from()
    monkeypatch.setenv("HPOD_RESUME_FROM", "three")
    with pytest.raises(InvalidParams, match="HPOD_RESUME_FROM must be an integer"):
        trial.resume_from()


def test_outside_hpod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not trial.inside_hpod()
    assert trial.config() == {}
    assert trial.config({"lr": 0.1}) == {"lr": 0.1}
    assert trial.resume_from() == 0
    assert trial.max_resource(default=10) == 10
    with pytest.raises(InvalidParams, match="default"):
        trial.max_resource()
    assert trial.trial_id() is None
    assert trial.study_id() is None
    assert trial.checkpoint_dir() == tmp_path / "checkpoint"
    assert (tmp_path / "checkpoint").is_dir()
    assert trial.trial_dir() == tmp_path
    assert trial.report(epoch=1, acc=0.5) is trial.CONTINUE
    assert trial.report(epoch=2, acc=0.6) is trial.CONTINUE
    assert trial.report_oom() is False
    err = capsys.readouterr().err
    assert err.count("not running inside hpod") == 1  # said once, not per report


def test_import_is_stdlib_only_and_cheap() -> None:
    code = (
        "import sys, hpod.trial\n"
        "heavy = [m for m in ('numpy', 'anyio', 'structlog', 'scipy', 'hpod.client')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""
