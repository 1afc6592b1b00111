"""hpodctl and hpod.Client against a real socket speaking the wire (tests/wire_server.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod.cli.hpodctl import _user, main
from hpod.client import Client, default_socket_path
from hpod.errors import EXIT_STUDY_NOT_COMPLETED, DaemonUnavailable, ErrorCode, NotFound
from tests.wire_server import WireServer, raising

pytestmark = pytest.mark.usefixtures("clean_trial_env")

REPO = Path(__file__).resolve().parent.parent

BEST = {"study": "s1", "trial": 4, "config": {"lr": 0.01, "width": 128}, "objective": 0.97,
        "last": 0.975, "window": 5, "resource": 20}  # fmt: skip
SUMMARY = {
    "study": "s1",
    "name": "digits-mlp",
    "state": "running",
    "owner": 1000,
    "created": 1_700_000_000.0,
    "ended": None,
    "end_reason": None,
    "trials": {"running": 2, "completed": 3, "failed": 1},
    "best": BEST,
}
DETAIL = {
    **SUMMARY,
    "limits": {"max_trials": 10, "optimization_time": 300.0},
    "failures": [
        {
            "trial": 5,
            "exit_code": 1,
            "error": "exited with status 1",
            "stderr_tail": "Traceback (most recent call last):\nValueError: lr too big\n",
        }
    ],
}
TRIALS = [
    {"trial": 0, "state": "completed", "config": {"lr": 0.01, "width": 128}, "resume_from": 0,
     "max_resource": 20, "resource": 20, "objective": 0.97, "last": 0.975, "exit_code": 0,
     "runs": 1, "run_seconds": 3.2, "error": None},
    {"trial": 1, "state": "running", "config": {"lr": 0.2, "width": 16}, "resume_from": 0,
     "max_resource": 20, "resource": None, "objective": None, "last": None, "exit_code": None,
     "runs": 1,
     "run_seconds": 0.5, "error": None},
]  # fmt: skip

GOOD_SPEC = """
name = "quad"
command = ["python", "trial.py", "{x}"]
workdir = "."

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = { param_type = "uniform", range = [-1.0, 1.0] }

[scheduler]
type = "fifo"
max_resource = 10
"""

# Three mistakes, each reported with its key path.
BAD_SPEC = """
name = "quad"
command = ["python", "trial.py", "{lr}"]

[objective]
metric = "loss"
mode = "maximum"
resource = "step"

[space]
lr = { param_type = "loguniform", range = [0, 1] }

[scheduler]
type = "fifo"
max_resource = 10

[limits]
max_trials = -5
"""


def _methods() -> dict[str, Any]:
    return {
        "ping": {"pong": True, "version": "0.1.0", "uptime": 125.0},
        "submit": {"study": "s1", "name": "quad"},
        "studies": [SUMMARY],
        "study": DETAIL,
        "trials": TRIALS,
        "best": BEST,
        "stop": {"study": "s1", "state": "stopped"},
        "wait": {**SUMMARY, "state": "completed", "trials": {"completed": 6}},
        "logs": {"text": "line 1\nline 2\n"},
        "report": {
            "study": "s1",
            "top_k": [{"rank": 1, "trial": 4, "objective": 0.97}],
            "generated": 1.0,
        },
        "gpus": [{"index": 0, "uuid": "GPU-1", "trials": ["s1/4"]}],
        "trial.report": {"decision": "PAUSE"},
    }


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer(_methods()) as srv:
        yield srv


@pytest.fixture
def no_daemon_path() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="hpod")
    yield os.path.join(folder, "absent.sock")
    os.rmdir(folder)


def run(server: WireServer, *argv: str) -> int:
    return main(["--socket", server.path, *argv])


def json_out(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


# -- no daemon --------------------------------------------------------------------------------


def test_no_daemon(no_daemon_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "--socket", no_daemon_path]) == ErrorCode.UNAVAILABLE.exit_status
    err = capsys.readouterr().err
    assert err.startswith("hpodctl: no hpod daemon is listening on")
    assert f"hpod serve --socket {no_daemon_path}" in err


def test_no_daemon_via_env(
    no_daemon_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPOD_SOCKET", no_daemon_path)
    assert main(["ls"]) == ErrorCode.UNAVAILABLE.exit_status
    assert no_daemon_path in capsys.readouterr().err


def test_subprocess_no_daemon(no_daemon_path: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", no_daemon_path, "ls"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.returncode == ErrorCode.UNAVAILABLE.exit_status
    assert "hpod serve --socket" in proc.stderr
    assert proc.stdout == ""


# -- reads ------------------------------------------------------------------------------------


def test_socket_before_or_after_the_subcommand(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", server.path, "ping"]) == 0
    assert main(["ping", "--socket", server.path]) == 0
    out = capsys.readouterr().out
    assert out.count("pong from hpod 0.1.0") == 2
    assert "up 2m05s" in out
    assert server.calls("hello")[0]["client"] == "hpod.Client"


@pytest.mark.parametrize(
    ("argv", "method", "params"),
    [
        (["ping"], "ping", {}),
        (["ls"], "studies", {}),
        (["show", "s1"], "study", {"study": "s1"}),
        (["trials", "s1"], "trials", {"study": "s1", "after": 0}),  # paged (Client.iter_trials)
        (["best", "s1"], "best", {"study": "s1", "front": True}),
        (["wait", "s1", "--timeout", "5"], "wait", {"study": "s1", "timeout": 5.0}),
        (["report", "s1"], "report", {"study": "s1"}),
        (["gpus"], "gpus", {}),
    ],
)
def test_json_is_the_raw_result(
    server: WireServer,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    method: str,
    params: dict[str, Any],
) -> None:
    assert run(server, *argv, "--json") == 0
    assert json_out(capsys) == _methods()[method]
    assert server.calls(method) == [params]


def test_best_json_has_the_contract_keys(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server, "best", "s1", "--json") == 0
    assert {"study", "trial", "config", "objective"} <= json_out(capsys).keys()


def test_json_keeps_non_finite_values_valid(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.methods["best"] = {**BEST, "objective": float("nan")}
    assert run(server, "best", "s1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["objective"] == {"$float": "nan"}


def test_ls_table(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "ls") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["STUDY", "NAME", "STATE", "TRIALS", "BEST", "OWNER"]
    owner = _user(1000)  # the owner's user name where uid 1000 has one here, else 1000
    assert row.split() == ["s1", "digits-mlp", "running", "4/6", "0.97", "(trial", "4)", owner]
    assert header.index("NAME") == row.index("digits-mlp")  # aligned columns


def test_ls_empty(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.methods["studies"] = []
    assert run(server, "ls") == 0
    assert capsys.readouterr().out == "no studies\n"


def test_show_lists_failures_with_their_stderr(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server, "show", "s1") == 0
    out = capsys.readouterr().out
    assert "state     running" in out
    assert "trials    4/6 done: 2 running, 3 completed, 1 failed" in out
    assert "best      0.97 (trial 4) lr=0.01 width=128" in out
    assert "  max_trials" in out
    assert "failures (1):\n  trial 5 (exit code 1): exited with status 1\n" in out
    assert "      Traceback (most recent call last):\n      ValueError: lr too big\n" in out


def test_trials_table(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "trials", "s1") == 0
    lines = capsys.readouterr().out.splitlines()
    heads = ["TRIAL", "STATE", "RESOURCE", "OBJECTIVE", "LAST", "RUNS", "CONFIG"]
    assert lines[0].split() == heads
    first = ["0", "completed", "20", "0.97", "0.975", "1", "lr=0.01", "width=128"]
    assert lines[1].split() == first
    assert lines[2].split() == ["1", "running", "-", "-", "-", "1", "lr=0.2", "width=16"]
    assert lines[0].index("CONFIG") == lines[1].index("lr=0.01")


def test_best_human(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "best", "s1") == 0
    out = capsys.readouterr().out
    assert "trial      4" in out
    # The estimate it ranks by, what it averages, and the last report beside it.
    assert "objective  0.97 (mean of its last 5 reports)\n" in out
    assert "last       0.975 (its last report)\n" in out
    assert "  lr     0.01" in out


def test_daemon_error_maps_to_its_exit_status(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.methods["best"] = raising(NotFound("study s1 has no result yet"))
    assert run(server, "best", "s1") == ErrorCode.NOT_FOUND.exit_status
    assert capsys.readouterr().err == "hpodctl: study s1 has no result yet\n"


def test_logs(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "logs", "s1", "3") == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"
    assert run(server, "logs", "s1", "3", "--stdout", "--tail", "5", "--json") == 0
    assert json_out(capsys) == {"text": "line 1\nline 2\n"}
    assert server.calls("logs") == [
        {"study": "s1", "trial": 3, "stream": "stderr", "tail": 50},
        {"study": "s1", "trial": 3, "stream": "stdout", "tail": 5},
    ]


def test_stop(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "stop", "s1") == 0
    assert capsys.readouterr().out == "study s1: stopped\n"


def test_objective_report_and_gpus_human(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server, "report", "s1") == 0
    out = capsys.readouterr().out
    assert "study" in out
    assert "top:" in out
    assert run(server, "gpus") == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["INDEX", "UUID", "TRIALS"]


# -- wait and submit --------------------------------------------------------------------------


def test_wait_exit_status(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "wait", "s1") == 0
    assert "state     completed" in capsys.readouterr().out
    assert server.calls("wait") == [{"study": "s1"}]
    server.methods["wait"] = {**SUMMARY, "state": "stopped", "end_reason": "stopped by uid 0"}
    assert run(server, "wait", "s1") == EXIT_STUDY_NOT_COMPLETED
    assert "state     stopped (stopped by uid 0)" in capsys.readouterr().out


class _AnyUuid4:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and uuid.UUID(other).version == 4


ANY_ID = _AnyUuid4()


def test_submit(
    server: WireServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(GOOD_SPEC)
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", "/home/u/venv/bin:/usr/bin")
    monkeypatch.setenv("VIRTUAL_ENV", "/home/u/venv")
    monkeypatch.setenv("WANDB_API_KEY", "secret")  # not listed in the spec's pass_env
    monkeypatch.setenv("HPOD_TOKEN", "never")
    assert run(server, "submit", str(spec)) == 0
    assert capsys.readouterr().out == "submitted study s1 (quad)\n"
    (params,) = server.calls("submit")
    # Through hpod.Client: a request id of its own, so a retry after a lost answer is safe; the
    # environment that finds the submitter's programs, nothing else of it.
    assert params == {
        "spec": GOOD_SPEC,
        "base_dir": str(tmp_path),
        "request_id": ANY_ID,
        "env": {"PATH": "/home/u/venv/bin:/usr/bin", "VIRTUAL_ENV": "/home/u/venv"},
    }
    assert run(server, "submit", str(spec), "--json") == 0
    assert json_out(capsys)["study"] == "s1"


def test_submit_wait(
    server: WireServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(GOOD_SPEC)
    assert run(server, "submit", str(spec), "--wait", "--json") == 0
    assert json_out(capsys)["state"] == "completed"
    server.methods["wait"] = {**SUMMARY, "state": "failed"}
    assert run(server, "submit", str(spec), "--wait") == EXIT_STUDY_NOT_COMPLETED
    assert "state     failed" in capsys.readouterr().out
    assert server.calls("wait") == [{"study": "s1"}, {"study": "s1"}]


def test_submit_bad_spec_never_reaches_the_daemon(
    server: WireServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(BAD_SPEC)
    assert run(server, "submit", str(spec)) == ErrorCode.INVALID_SPEC.exit_status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the study spec has 3 problems:" in captured.err
    for key_path in ("objective.mode:", "space.lr.range:", "limits.max_trials:"):
        assert key_path in captured.err
    assert server.requests == []


def test_submit_missing_file(
    server: WireServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run(server, "submit", str(tmp_path / "nope.toml"))
    assert status == ErrorCode.INVALID_SPEC.exit_status
    assert "nope.toml" in capsys.readouterr().err
    assert server.requests == []


# -- hpodctl report key=value inside a trial --------------------------------------------------


def _trial_env(monkeypatch: pytest.MonkeyPatch, server: WireServer) -> None:
    monkeypatch.setenv("HPOD_SOCKET", server.path)
    monkeypatch.setenv("HPOD_STUDY", "s1")
    monkeypatch.setenv("HPOD_TRIAL", "2")
    monkeypatch.setenv("HPOD_TOKEN", "tok")


def test_report_metrics_inside_a_trial(
    server: WireServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _trial_env(monkeypatch, server)
    assert main(["report", "epoch=3", "val_acc=0.91", "loss=nan", "gap=-inf", "lr=1e-3"]) == 0
    assert capsys.readouterr().out == "PAUSE\n"
    [params] = server.calls("trial.report")
    metrics = params["metrics"]
    assert params["trial"] == 2
    assert params["token"] == "tok"
    assert metrics["epoch"] == 3
    assert isinstance(metrics["epoch"], int)
    assert metrics["val_acc"] == 0.91
    assert metrics["loss"] != metrics["loss"]  # NaN
    assert metrics["gap"] == float("-inf")
    assert metrics["lr"] == 0.001


def test_report_metrics_bad_usage(
    server: WireServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _trial_env(monkeypatch, server)
    assert main(["report", "epoch=three"]) == 2
    assert main(["report", "s1", "epoch=3"]) == 2
    assert capsys.readouterr().out == ""
    assert server.calls("trial.report") == []


def test_report_metrics_outside_hpod(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "epoch=1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "CONTINUE\n"
    assert "not running inside hpod" in captured.err


def test_subprocess_report_inside_a_trial(server: WireServer) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HPOD_SOCKET": server.path,
        "HPOD_STUDY": "s1",
        "HPOD_TRIAL": "7",
        "HPOD_TOKEN": "tok",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "report", "epoch=1", "acc=0.5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "PAUSE\n"
    [params] = server.calls("trial.report")
    # Its own process, so a sender of its own, and its first report (hpod.trial's seq).
    assert params == {
        "study": "s1",
        "trial": 7,
        "token": "tok",
        "metrics": {"epoch": 1, "acc": 0.5},
        "sender": params["sender"],
        "seq": 1,
    }
    assert params["sender"].split("-")[0] != str(os.getpid())


# -- hpod.Client ------------------------------------------------------------------------------


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_socket_path({"HPOD_SOCKET": "/x.sock"}) == "/x.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_socket_path({}) == "/run/hpod/hpod.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    runtime = str(tmp_path)
    assert default_socket_path({"XDG_RUNTIME_DIR": runtime}) == f"{runtime}/hpod/hpod.sock"
    if not Path("/run/user/1234").is_dir():
        assert default_socket_path({}) == "/tmp/hpod-1234/hpod.sock"


def test_client_api(server: WireServer, tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(GOOD_SPEC)
    with Client(server.path) as client:
        assert client.ping()["pong"] is True
        assert client.submit(spec) == {"study": "s1", "name": "quad"}
        assert client.submit_text("x", "relative")["study"] == "s1"
        assert client.studies() == [SUMMARY]
        assert client.best("s1") == BEST
        assert client.logs("s1", 1, tail=2) == "line 1\nline 2\n"
        assert client.wait("s1", timeout=3)["state"] == "completed"
    assert server.calls("submit")[1]["base_dir"] == str(Path("relative").absolute())
    # One connection for the calls, one of its own for wait.
    assert server.connections == 2


def test_client_reconnects_once(server: WireServer) -> None:
    with Client(server.path) as client:
        client.ping()
        server.restart()
        assert client.studies() == [SUMMARY]
        server.close()
        with pytest.raises(DaemonUnavailable, match="hpod serve --socket"):
            client.ping()


def test_show_says_when_a_fit_waits_for_the_reports() -> None:
    from hpod.cli.hpodctl import _render_decisions

    quiet = {"fits": 2, "fitting": True, "fit_yields_to_reports": False}
    assert _render_decisions(quiet).splitlines()[1] == "  fits: 2, one running now"
    busy = {**quiet, "fit_yields_to_reports": True}
    assert "paused while reports come faster than 1,000 a second" in _render_decisions(busy)


def test_preview_says_how_many_points_a_grid_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "grid.toml"
    spec.write_text(
        'name = "g"\ncommand = ["train", "{x}"]\n[objective]\nmetric = "loss"\nmode = "min"\n'
        '[space]\nx = { param_type = "quniform", range = [0.0, 1.0, 0.1] }\n'
        '[searcher]\ntype = "grid"\npartial_grid = true\n[limits]\nmax_trials = 5\n'
    )
    assert main(["preview", str(spec)]) == 0
    out = capsys.readouterr().out
    line = "grid      11 points (5 per continuous parameter); partial_grid: the first 5 in grid"
    line += " order"
    assert line in out.splitlines()
    # Without partial_grid the same spec is refused, with the way out in the problem.
    spec.write_text(spec.read_text().replace("partial_grid = true\n", ""))
    assert main(["preview", str(spec)]) == ErrorCode.INVALID_SPEC.exit_status
    assert "searcher.partial_grid = true" in capsys.readouterr().err


def test_an_event_is_one_readable_line() -> None:
    from hpod.cli.hpodctl import _fmt_event

    event = {
        "id": 17,
        "study": "s1",
        "trial": 3,
        "at": 1_700_000_000.5,
        "kind": "trial_ended",
        "data": {"state": "completed", "objective": 0.12, "resource": 27, "error": None},
    }
    line = _fmt_event(event)
    assert line.endswith("  #17  trial 3  trial_ended  state=completed objective=0.12 resource=27")
    assert "\n" not in line
    best = {"id": 5, "study": "s1", "trial": None, "at": 1.0, "kind": "study_ended",
            "data": {"state": "completed", "best": {"trial": 3, "lr": 0.1}}}  # fmt: skip
    assert "s1 study  study_ended  state=completed trial=3 lr=0.1" in _fmt_event(
        best, with_study=True
    )
