"""systemd/hpod.service: the settings the daemon relies on, and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpod.core.durations import parse_duration
from hpod.daemon.config import DaemonConfig

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hpod.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values; a unit file may repeat a key, so configparser will not do."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"a setting before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, got {values}"
    return values[0]


def test_service_settings(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    # SIGTERM to the daemon only: it stops its trials itself, with their grace period; and a
    # crash leaves them running for the next start to adopt (docs/live-restore.md).
    assert one(unit, "Service", "KillMode") == "process"
    assert one(unit, "Service", "Delegate") == "yes"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "RuntimeDirectory") == "hpod"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0755"
    assert one(unit, "Service", "StateDirectory") == "hpod"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_runs_as_root_to_start_trials_as_their_users(unit):
    for key in ("User", "Group", "DynamicUser", "NoNewPrivileges", "ProtectHome"):
        assert key not in unit["Service"], f"{key}= would keep trials from running as users"


def test_exec_start_serves_with_the_system_config(unit):
    argv = one(unit, "Service", "ExecStart").split()
    assert Path(argv[0]).is_absolute()
    assert argv[0].endswith("/hpod")
    assert argv[1:] == ["serve", "--config", "/etc/hpod/hpod.toml"]


def test_stop_timeout_outlasts_the_grace_period(unit):
    # systemd's SIGKILL must not overtake the daemon's own SIGTERM -> grace -> SIGKILL.
    timeout = parse_duration(one(unit, "Service", "TimeoutStopSec"), "TimeoutStopSec")
    assert timeout >= DaemonConfig.defaults().stop_grace + 20


def test_socket_and_state_paths_match_the_root_defaults(unit):
    from hpod.daemon.config import default_socket_path, default_state_dir

    runtime = one(unit, "Service", "RuntimeDirectory")
    state = one(unit, "Service", "StateDirectory")
    assert default_socket_path(uid=0).parent == Path("/run") / runtime
    assert default_state_dir(uid=0) == Path("/var/lib") / state


def _verify(path: Path) -> tuple[int, str]:
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _copy_with_exec_start(tmp_path: Path, text: str) -> Path:
    # verify checks that ExecStart's program exists; /usr/local/bin/hpod does not here, so
    # the copy points at the hpod of this interpreter's environment (or the interpreter).
    hpod = Path(sys.executable).parent / "hpod"
    program = hpod if hpod.exists() else Path(sys.executable)
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={program}", text)
    path = tmp_path / "hpod.service"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_systemd_analyze_verify(tmp_path: Path):
    good = _copy_with_exec_start(tmp_path, UNIT.read_text(encoding="utf-8"))
    rc, out = _verify(good)
    if rc != 0 and good.name not in out:
        pytest.skip(f"systemd-analyze verify does not work here: {out.strip()[:300]}")
    # verify exits 0 on mere warnings ("Unknown key ..., ignoring"): any line about the unit
    # counts as a failure.
    complaints = [line for line in out.splitlines() if good.name in line]
    assert rc == 0, out
    assert complaints == []

    # The check is not blind: a broken copy of the same unit is complained about.
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    broken = UNIT.read_text(encoding="utf-8").replace("KillMode=process", "KillMode=bogus")
    bad = _copy_with_exec_start(bad_dir, broken)
    _, out = _verify(bad)
    assert "kill mode" in out.lower(), out
