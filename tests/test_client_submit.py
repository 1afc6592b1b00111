"""``Client.submit`` sends a request id and, on a lost daemon, sends the same submit again a
bounded number of times (tests/wire_server.py is the daemon)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpod import client as client_module
from hpod.client import Client
from hpod.errors import DaemonUnavailable, SpecError
from tests.wire_server import WireServer, raising

STUDY = {"study": "quad-1", "name": "quad"}


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer({"submit": {**STUDY, "existing": False}}) as s:
        yield s


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's back-off, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(client_module, "time", SimpleNamespace(sleep=slept.append))
    return slept


def test_each_submit_sends_a_request_id_of_its_own(server: WireServer, tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text('name = "quad"\n')
    with Client(server.path) as client:
        client.submit(spec)
        client.submit_text('name = "quad"\n', tmp_path)
        client.submit(spec, request_id="mine")
    ids = [params["request_id"] for params in server.calls("submit")]
    assert ids[2] == "mine"
    assert ids[0] != ids[1]
    assert all(uuid.UUID(rid).version == 4 for rid in ids[:2])


def test_a_submit_whose_answer_was_lost_is_sent_again_with_its_request_id(
    server: WireServer, tmp_path: Path, sleeps: list[float]
) -> None:
    answers = iter([None, {**STUDY, "existing": True}])

    def submit(params: dict[str, Any]) -> Any:
        answer = next(answers)
        if answer is None:
            server.drop_connections()  # the daemon died before its answer went out
        return answer

    server.methods["submit"] = submit
    with Client(server.path) as client:
        assert client.submit_text('name = "quad"\n', tmp_path) == {**STUDY, "existing": True}
    first, second = server.calls("submit")
    assert first == second
    assert len(sleeps) == 1


def test_a_daemon_that_stays_away_fails_the_submit_after_a_bounded_back_off(
    tmp_path: Path, sleeps: list[float]
) -> None:
    with (
        Client(str(tmp_path / "nobody.sock")) as client,
        pytest.raises(DaemonUnavailable, match="no hpod daemon is listening"),
    ):
        client.submit_text('name = "quad"\n', tmp_path)
    assert sleeps == list(client_module.SUBMIT_BACKOFF_S)
    assert 1.0 <= sum(sleeps) <= 10.0


def test_an_answered_error_is_not_retried(
    server: WireServer, tmp_path: Path, sleeps: list[float]
) -> None:
    server.methods["submit"] = raising(SpecError(["limits: needs at least one"]))
    with Client(server.path) as client, pytest.raises(SpecError):
        client.submit_text('name = "quad"\n', tmp_path)
    assert len(server.calls("submit")) == 1
    assert sleeps == []


def test_a_submit_carries_the_environment_that_finds_programs_and_what_pass_env_names(
    server: WireServer, tmp_path: Path
) -> None:
    env = {
        "PATH": "/home/u/venv/bin:/usr/bin",
        "VIRTUAL_ENV": "/home/u/venv",
        "CONDA_PREFIX": "/opt/conda/envs/x",
        "LC_ALL": "C.UTF-8",
        "WANDB_API_KEY": "listed",
        "AWS_SECRET_ACCESS_KEY": "not listed",
        "HPOD_SOCKET": "/run/hpod.sock",  # the daemon's to set, even when listed
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "BAD_BYTES": "caf\udce9",  # from bytes that are not UTF-8: the wire cannot carry it
    }
    text = 'name = "quad"\npass_env = ["WANDB_API_KEY", "HPOD_SOCKET"]\n'
    with Client(server.path) as client:
        client.submit_text(text, tmp_path, env=env)
        client.submit_text('name = "quad"\n', tmp_path, env={"PATH": "/bin"})
        # A spec the daemon will refuse still goes there to be refused, with the usual names.
        client.submit_text("name = [", tmp_path, env=env)
    sent = [params["env"] for params in server.calls("submit")]
    assert sent[0] == {
        "CONDA_PREFIX": "/opt/conda/envs/x",
        "LC_ALL": "C.UTF-8",
        "PATH": "/home/u/venv/bin:/usr/bin",
        "VIRTUAL_ENV": "/home/u/venv",
        "WANDB_API_KEY": "listed",
    }
    assert sent[1] == {"PATH": "/bin"}
    assert sent[2] == {k: sent[0][k] for k in sent[0] if k != "WANDB_API_KEY"}


def test_a_submit_without_env_carries_this_processs_environment(
    server: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", "/home/u/venv")
    with Client(server.path) as client:
        client.submit_text('name = "quad"\n', tmp_path)
    (params,) = server.calls("submit")
    assert params["env"]["VIRTUAL_ENV"] == "/home/u/venv"
    assert params["env"]["PATH"] == os.environ["PATH"]
