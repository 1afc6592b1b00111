"""hpodctl's manners (issue 16): global options anywhere, --version, a closed pipe, an example in
every command's --help, and `best -k` (the top-k table that was `hpodctl top`)."""

from __future__ import annotations

import functools
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod import __version__
from hpod.cli import logs
from hpod.cli.hpodctl import _commands, _fmt_change, _parser, main
from hpod.errors import ErrorCode, NotFound
from tests.wire_server import WireServer, raising

pytestmark = pytest.mark.usefixtures("clean_trial_env")

REPO = Path(__file__).resolve().parent.parent

STUDIES = [{"study": "s1", "name": "quad", "state": "running", "owner": 0, "trials": {}}]
TOP = [
    {"rank": 1, "trial": 4, "objective": 0.5, "last": 0.45, "window": 5, "resource": 9,
     "state": "completed", "config": {"x": 0.1}, "runs": 1},
    {"rank": 2, "trial": 2, "objective": 0.7, "last": 0.7, "window": 3, "resource": 3,
     "state": "paused", "config": {"x": 0.3}, "runs": 1},
]  # fmt: skip


@pytest.fixture
def server() -> Iterator[WireServer]:
    methods: dict[str, Any] = {
        "ping": {"pong": True, "version": "0.1.0"},
        "studies": STUDIES,
        "top": TOP,
        "stop": {"study": "s1", "state": "stopped"},
        "set": {"study": "s1", "made": [], "changes": []},
    }
    with WireServer(methods) as srv:
        yield srv


def _hpodctl(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpod.cli.hpodctl", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--socket", "{s}", "ls"],
        ["--socket", "{s}", "ls", "--json"],
        ["ls", "--json", "--socket", "{s}"],
        ["--json", "ls", "--socket", "{s}"],
    ],
)
def test_global_options_before_or_after_the_command(
    server: WireServer, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([a.replace("{s}", server.path) for a in argv]) == 0
    assert json.loads(capsys.readouterr().out) == STUDIES


def test_json_on_the_commands_that_change_things(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--json", "--socket", server.path, "stop", "s1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"study": "s1", "state": "stopped"}
    assert main(["--socket", server.path, "set", "s1", "max_trials=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["study"] == "s1"


def test_version() -> None:
    with _hpodctl("--version", stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == f"hpodctl (hpod) {__version__}\n"


def test_best_k_is_the_top_k_table(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", server.path, "best", "s1", "-k", "2", "--completed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RANK", "TRIAL", "OBJECTIVE", "LAST", "RESOURCE", "STATE", "CONFIG"]
    assert lines[1].split() == ["1", "4", "0.5", "0.45", "9", "completed", "x=0.1"]
    assert server.calls("top") == [
        {"study": "s1", "k": 2, "only_completed": True, "all_metrics": False}
    ]
    assert main(["--socket", server.path, "--json", "best", "s1", "-k", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == TOP


def test_every_command_has_an_example_in_its_help() -> None:
    commands = _commands(_parser())
    assert {"submit", "ls", "best", "wait", "logs", "ping"} <= commands.keys()
    for name, command in commands.items():
        text = command.format_help()
        assert f"example:\n  hpodctl {name}" in text, name


def test_a_closed_pipe_ends_quietly(server: WireServer) -> None:
    # Far more than a pipe holds, so that hpodctl is still writing when `head` has gone.
    server.methods["studies"] = [{**STUDIES[0], "study": f"s{i}"} for i in range(10_000)]
    with _hpodctl(
        "--socket", server.path, "ls", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline().split()[0] == "STUDY"
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    assert err == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as a program the pipe's signal ended


def test_owners_are_user_names(server: WireServer, capsys: pytest.CaptureFixture[str]) -> None:
    nobody = next(uid for uid in range(4242, 5000) if not _has_user(uid))
    server.methods["studies"] = [
        {**STUDIES[0], "owner": 0},
        {**STUDIES[0], "study": "s2", "owner": nobody},
    ]
    assert main(["--socket", server.path, "ls"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[-1] for r in rows] == ["root", str(nobody)]  # a uid with no name stays a number
    assert main(["--socket", server.path, "ls", "--json"]) == 0
    assert [s["owner"] for s in json.loads(capsys.readouterr().out)] == [0, nobody]
    change = {"key": "max_trials", "value": 9, "from": 5, "at": 0.0, "by": 0}
    assert _fmt_change(change).endswith(" root: max_trials 5 -> 9")
    assert f" uid {nobody}: " in _fmt_change({**change, "by": nobody})


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_ping_wait_waits_for_a_daemon_that_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tempfile.mkdtemp(prefix="hpod")
    path = os.path.join(folder, "s.sock")
    tried = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # ping found no daemon and waits before trying again
        tried.set()
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    status: list[int] = []
    pinger = threading.Thread(
        target=lambda: status.append(main(["ping", "--wait", "--socket", path])), daemon=True
    )
    pinger.start()
    try:
        assert tried.wait(60), "ping never tried"
        with WireServer({"ping": {"pong": True, "version": "0.1.0"}}, path=path):
            pinger.join(60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert status == [0]
    assert f"pong from hpod 0.1.0 on {path}" in capsys.readouterr().out


def test_ping_wait_gives_up_at_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    folder = tempfile.mkdtemp(prefix="hpod")
    path = os.path.join(folder, "absent.sock")
    try:
        assert main(["ping", "--wait", "--timeout", "0.3", "--socket", path]) == 3
    finally:
        os.rmdir(folder)
    err = capsys.readouterr().err
    assert err == f"hpodctl: no hpod daemon answered on {path} within 0.3 s\n"
    assert main(["ping", "--socket", path]) == 3  # without --wait: at once, as before


def test_logs_follow_prints_each_line_once_until_the_trial_ends(
    server: WireServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    texts = iter(
        [
            "a\nb\n",
            "a\nb\nc\npart",  # a line being written: shown once complete
            "a\nb\nc\npartial done\nd\n",
            "c\npartial done\nd\ne\ntail",  # cut to its tail ([report] log_limit), then over
        ]
    )
    states = iter(["running", "running", "completed"])
    server.methods["logs"] = lambda params: {"text": next(texts)}
    server.methods["trial"] = lambda params: {"trial": 3, "state": next(states)}
    server.methods["study"] = {"study": "s1", "state": "running"}
    assert main(["--socket", server.path, "logs", "s1", "3", "-f", "--tail", "1"]) == 0
    assert capsys.readouterr().out == "b\nc\npartial done\nd\ne\ntail\n"
    assert [c["tail"] for c in server.calls("logs")] == [1000, 1000, 1000, 1000]


@pytest.mark.parametrize(
    ("seen", "window", "fresh", "gap"),
    [
        ([], ["a"], ["a"], False),
        (["a", "b"], ["a", "b"], [], False),
        (["a", "b"], ["b", "c"], ["c"], False),
        (["a", "b"], ["x", "y"], ["x", "y"], True),  # more came than a window holds
        (["x", "x"], ["x", "x"], [], False),  # repeats: never printed twice
    ],
)
def test_new_lines(seen: list[str], window: list[str], fresh: list[str], gap: bool) -> None:
    assert logs.new_lines(seen, window) == (fresh, gap)


@functools.cache
def _bash_script() -> str:
    return main_output(["completion", "bash"])


def _complete(words: list[str], env: dict[str, str]) -> list[str]:
    """What bash offers for the last of ``words`` with hpodctl's completion script loaded."""
    script = _bash_script()
    line = " ".join(shlex.quote(w) for w in words)
    probe = (
        f"{script}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words) - 1}\n"
        '_hpodctl\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        ["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return res.stdout.split()


def main_output(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "hpod.cli.hpodctl", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion(server: WireServer, tmp_path: Path) -> None:
    # `hpodctl` on PATH: this interpreter's, running this checkout.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hpodctl").write_text(f'#!/bin/sh\nexec {sys.executable} -m hpod.cli.hpodctl "$@"\n')
    (bin_dir / "hpodctl").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert _complete(["hpodctl", "be"], env) == ["best"]
    assert _complete(["hpodctl", "--json", "tr"], env) == ["trials"]
    assert "--follow" in _complete(["hpodctl", "logs", "--"], env)
    assert "--socket" in _complete(["hpodctl", "logs", "--"], env)
    # A STUDY: the daemon's study ids, on the socket the line names.
    assert _complete(["hpodctl", "--socket", server.path, "best", ""], env) == ["s1"]
    assert _complete(["hpodctl", "show", "--socket", server.path, "s"], env) == ["s1"]
    assert _complete(["hpodctl", "--socket", "/nonexistent/x", "best", ""], env) == []
    # A SPEC: files.
    (tmp_path / "study.toml").write_text("")
    words = ["hpodctl", "submit", str(tmp_path / "stu")]
    assert _complete(words, env) == [str(tmp_path / "study.toml")]
    zsh = main_output(["completion", "zsh"])
    assert zsh.startswith("# zsh completion")
    assert "bashcompinit" in zsh


def test_top_of_an_unknown_study_says_so(
    server: WireServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.methods["study"] = raising(NotFound("no study 'nope'"))
    assert main(["--socket", server.path, "top", "nope"]) == ErrorCode.NOT_FOUND.exit_status
    assert capsys.readouterr().err == "hpodctl: no study 'nope'\n"


def test_report_inside_a_trial_with_json(
    server: WireServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.methods["trial.report"] = {"decision": "PAUSE"}
    for name, value in {"SOCKET": server.path, "STUDY": "s1", "TRIAL": "2", "TOKEN": "t"}.items():
        monkeypatch.setenv(f"HPOD_{name}", value)
    assert main(["--json", "report", "epoch=3", "loss=0.5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"decision": "PAUSE"}
