"""hpod.trial against a real socket speaking the wire (tests/wire_server.py)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod import trial, wire
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
        "sender": params["sender"],
        "seq": 1,
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


def test_gives_up_after_one_reconnect(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "0")
    assert trial.report(epoch=1, acc=0.5) is trial.CONTINUE
    in_trial.close()  # gone for good: the socket file too
    with pytest.raises(DaemonUnavailable, match="hpod serve --socket"):
        trial.report(epoch=2, acc=0.6)


def test_no_daemon_at_all(in_trial: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "0")
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


# -- a reporter that waits for its daemon (issue 13) ----------------------------------------------

SENDER = re.compile(r"(\d+)-[0-9a-f]{8}")


@pytest.fixture(autouse=True)
def fresh_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a reporting process of its own: its reports are numbered from 1."""
    monkeypatch.setattr(trial, "_sender", None)


def _stamps(server: WireServer) -> list[tuple[str, int]]:
    return [(p["sender"], p["seq"]) for p in server.calls("trial.report")]


def test_each_report_carries_its_sender_and_a_sequence_number(in_trial: WireServer) -> None:
    for epoch in range(1, 4):
        trial.report(epoch=epoch, loss=1.0)
    stamps = _stamps(in_trial)
    assert [seq for _, seq in stamps] == [1, 2, 3]
    assert len({sender for sender, _ in stamps}) == 1
    match = SENDER.fullmatch(stamps[0][0])
    assert match is not None
    assert int(match.group(1)) == os.getpid()


def test_a_forked_child_is_a_sender_of_its_own(in_trial: WireServer) -> None:
    trial.report(epoch=1, loss=1.0)
    pid = os.fork()
    if pid == 0:  # the child: report once, say how it went by the exit status
        code = 1
        try:
            code = 0 if trial.report(epoch=2, loss=1.0) is trial.CONTINUE else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    trial.report(epoch=3, loss=1.0)
    (parent, one), (child, child_seq), (parent_again, two) = _stamps(in_trial)
    assert (one, two, child_seq) == (1, 2, 1)
    assert parent == parent_again != child
    match = SENDER.fullmatch(child)
    assert match is not None
    assert int(match.group(1)) == pid


def test_a_report_whose_answer_was_lost_is_sent_again_the_same(in_trial: WireServer) -> None:
    """The daemon took the report but the connection died before its answer (a kill -9 after
    the commit): the report is sent again with the same sender and seq, so the daemon can tell
    it from a new one."""
    trial.report(epoch=1, loss=1.0)
    answers = iter([None, {"decision": "PAUSE"}])

    def once_lost(params: dict[str, Any]) -> Any:
        answer = next(answers)
        if answer is None:
            in_trial.drop_connections()  # the answer is written to a dead connection
        return answer

    in_trial.methods["trial.report"] = once_lost
    assert trial.report(epoch=2, loss=0.5) is trial.PAUSE
    first, lost, resent = _stamps(in_trial)
    assert lost == resent == (first[0], 2)
    assert [p["metrics"] for p in in_trial.calls("trial.report")[1:]] == [
        {"epoch": 2, "loss": 0.5}
    ] * 2
    assert in_trial.connections == 2


def test_a_report_waits_while_the_daemon_restarts(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No socket file (ENOENT), then one nobody listens on (ECONNREFUSED), then a daemon: the
    report waits through both and is answered by the new daemon, with its own seq."""
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "30")
    folder = tempfile.mkdtemp(prefix="hpod")
    path = os.path.join(folder, "s.sock")
    monkeypatch.setenv("HPOD_SOCKET", path)
    first = WireServer({"trial.report": {"decision": "CONTINUE"}}, path=path)
    trial.report(epoch=1, loss=1.0)
    first.close()  # the socket file goes with it, the folder stays
    connects: list[float] = []
    back: list[WireServer] = []
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def restarted(params: dict[str, Any]) -> Any:
        return {"decision": "STOP"}

    def comeback() -> None:
        # The stale socket file once the reporter has tried the missing one, a listening daemon
        # once it has been refused there.
        deadline = time.monotonic() + 20
        while not connects and time.monotonic() < deadline:
            time.sleep(0.01)
        stale.bind(path)
        refused = len(attempts)
        while len(attempts) == refused and time.monotonic() < deadline:
            time.sleep(0.01)
        stale.close()
        os.unlink(path)
        back.append(WireServer({"trial.report": restarted}, path=path))

    attempts: list[BaseException] = []
    real_connection = wire.SyncConnection

    def counting(*args: Any, **kwargs: Any) -> Any:
        connects.append(time.monotonic())
        try:
            return real_connection(*args, **kwargs)
        except BaseException as exc:
            attempts.append(exc)
            raise

    monkeypatch.setattr(trial, "SyncConnection", counting)
    helper = threading.Thread(target=comeback)
    helper.start()
    try:
        started = time.monotonic()
        assert trial.report(epoch=2, loss=0.5) is trial.STOP
        waited = time.monotonic() - started
    finally:
        helper.join()
        for srv in back:
            srv.close()
        shutil.rmtree(folder, ignore_errors=True)
    causes = [exc.__cause__ for exc in attempts]
    assert any(isinstance(c, FileNotFoundError) for c in causes), attempts
    assert any(isinstance(c, ConnectionRefusedError) for c in causes), attempts
    assert waited < 20
    [params] = back[0].calls("trial.report")
    assert params["seq"] == 2
    assert params["metrics"] == {"epoch": 2, "loss": 0.5}


def test_a_report_gives_up_after_the_reconnect_timeout(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "0.6")
    trial.report(epoch=1, loss=1.0)
    in_trial.close()
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable) as info:
        trial.report(epoch=2, loss=0.5)
    waited = time.monotonic() - started
    assert 0.6 <= waited < 5
    message = info.value.message
    assert "0.6s" in message
    assert "HPOD_RECONNECT_TIMEOUT" in message
    assert "reconnect_timeout" in message
    assert "hpod serve --socket" in message  # what was wrong at the last try


def test_a_reconnect_timeout_of_zero_is_one_reconnect(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "0")
    trial.report(epoch=1, loss=1.0)
    in_trial.close()
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="hpod serve --socket"):
        trial.report(epoch=2, loss=0.5)
    assert time.monotonic() - started < 1


def test_a_bad_reconnect_timeout_is_named(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "soon")
    trial.report(epoch=1, loss=1.0)
    in_trial.close()
    with pytest.raises(InvalidParams, match="HPOD_RECONNECT_TIMEOUT"):
        trial.report(epoch=2, loss=0.5)


def test_a_token_refused_after_a_reconnect_is_not_retried(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that came back without adopting this run: the trial must stop, not train on."""
    monkeypatch.setenv("HPOD_RECONNECT_TIMEOUT", "30")
    trial.report(epoch=1, loss=1.0)
    in_trial.restart()
    in_trial.methods["trial.report"] = raising(TokenRejected("no running trial s1/3"))
    started = time.monotonic()
    with pytest.raises(TokenRejected, match="HPOD_TOKEN does not match"):
        trial.report(epoch=2, loss=0.5)
    assert time.monotonic() - started < 1
    assert len(in_trial.calls("trial.report")) == 2  # the first, and the refused one only


def test_a_report_the_daemon_does_not_answer_in_time_is_sent_again(
    in_trial: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout no longer gives up at once: the seq makes a re-send safe."""
    monkeypatch.setattr(trial, "_TIMEOUT", 0.3)
    release = threading.Event()
    calls = iter([True, False])

    def slow_once(params: dict[str, Any]) -> Any:
        if next(calls):
            release.wait(10)
        return {"decision": "CONTINUE"}

    in_trial.methods["trial.report"] = slow_once
    try:
        assert trial.report(epoch=1, loss=1.0) is trial.CONTINUE
    finally:
        release.set()
    slow, resent = _stamps(in_trial)
    assert slow == resent
    assert in_trial.connections == 2


def test_hpodctl_report_waits_and_re_sends_too(in_trial: WireServer) -> None:
    """`hpodctl report key=value` is trial.report in a process of its own: the same re-send."""
    answers = iter([None, {"decision": "PAUSE"}])

    def once_lost(params: dict[str, Any]) -> Any:
        answer = next(answers)
        if answer is None:
            in_trial.drop_connections()
        return answer

    in_trial.methods["trial.report"] = once_lost
    env = {**os.environ, "PYTHONPATH": str(REPO), "HPOD_RECONNECT_TIMEOUT": "30"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", "report", "epoch=4", "loss=0.25"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "PAUSE\n"
    lost, resent = _stamps(in_trial)
    assert lost == resent
    assert lost[1] == 1
    match = SENDER.fullmatch(lost[0])
    assert match is not None
    assert int(match.group(1)) != os.getpid()


def test_oom_guard_reports_a_frameworks_oom_and_raises_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpod import trial

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError, by name
        pass

    told: list[bool] = []
    monkeypatch.setattr(trial, "report_oom", lambda: told.append(True) or True)
    with pytest.raises(OutOfMemoryError), trial.oom_guard():
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="CUDA error"), trial.oom_guard():
        raise RuntimeError("CUDA error: out of memory")  # an older torch
    with pytest.raises(ValueError, match="not a memory"), trial.oom_guard():
        raise ValueError("not a memory problem")
    assert told == [True, True]
    assert trial.is_oom_error(MemoryError())
    assert not trial.is_oom_error(KeyError("x"))
