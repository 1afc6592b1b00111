"""The daemon configuration: the shipped etc/hpod.toml, every problem at once, overrides."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from hpod.daemon.config import (
    ConfigError,
    DaemonConfig,
    GpuConfig,
    default_socket_path,
    default_state_dir,
)
from hpod.errors import ErrorCode, HpodError

ETC = Path(__file__).resolve().parents[2] / "etc" / "hpod.toml"
# A setting in etc/hpod.toml is "#key = value" or "#[table]": no space after the #.
SETTING = re.compile(r"^#(?=\[|[a-z_]+ = )", re.MULTILINE)


def uncommented_etc() -> str:
    return SETTING.sub("", ETC.read_text(encoding="utf-8"))


def test_shipped_file_is_all_comments():
    # As shipped it must change nothing: every non-blank line is a comment.
    text = ETC.read_text(encoding="utf-8")
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())
    assert DaemonConfig.from_file(ETC) == DaemonConfig.defaults()


def test_uncommented_etc_file_equals_the_defaults():
    assert DaemonConfig.from_toml(uncommented_etc(), source=str(ETC)) == DaemonConfig.defaults()


def test_etc_file_documents_every_key():
    text = uncommented_etc()
    top = {f.name for f in dataclasses.fields(DaemonConfig)} - {"gpu"}
    gpu = {f.name for f in dataclasses.fields(GpuConfig)}
    head, _, gpu_part = text.partition("\n[gpu]\n")
    for name in top:
        assert re.search(rf"(?m)^{name} = ", head), f"etc/hpod.toml lacks {name}"
    for name in gpu:
        assert re.search(rf"(?m)^{name} = ", gpu_part), f"etc/hpod.toml lacks gpu.{name}"


def test_defaults():
    cfg = DaemonConfig.defaults()
    assert cfg.socket is None
    assert cfg.trial_socket is None
    assert cfg.state_dir is None
    assert cfg.cpu_slots is None
    assert cfg.stop_grace == 10.0
    assert (cfg.log_level, cfg.log_format, cfg.durability) == ("info", "auto", "normal")
    assert cfg.socket_mode == 0o660
    assert cfg.socket_group is None
    assert cfg.admins == ()
    assert cfg.gpu == GpuConfig((), "avoid", 1024, 5.0)


def test_every_value_parsed(tmp_path: Path):
    text = f"""
socket = "{tmp_path}/c.sock"
trial_socket = "{tmp_path}/t.sock"
state_dir = "state"
cpu_slots = 3
stop_grace = "1m30s"
log_level = "WARN"
log_format = "json"
durability = "fsync"
socket_mode = "0600"
socket_group = "{os.getgid()}"
admins = [0, {os.getuid()}, 0]

[gpu]
allowed = [0, "GPU-abc"]
busy_policy = "share"
min_free_memory_mib = 0
refresh_seconds = 2.5
"""
    path = tmp_path / "hpod.toml"
    path.write_text(text)
    cfg = DaemonConfig.from_file(path)
    assert cfg.socket == f"{tmp_path}/c.sock"
    assert cfg.trial_socket == f"{tmp_path}/t.sock"
    assert cfg.state_dir == tmp_path / "state"  # relative to the file
    assert cfg.cpu_slots == 3
    assert cfg.stop_grace == 90.0
    assert cfg.log_level == "warning"
    assert cfg.log_format == "json"
    assert cfg.durability == "fsync"
    assert cfg.socket_mode == 0o600
    assert cfg.socket_group == str(os.getgid())
    assert cfg.admins == tuple(dict.fromkeys((0, os.getuid())))
    assert cfg.gpu == GpuConfig(("0", "GPU-abc"), "share", 0, 2.5)
    assert cfg.to_dict()["socket_mode"] == "0600"


def test_toml_octal_literal_and_auto():
    cfg = DaemonConfig.from_toml('socket_mode = 0o640\ncpu_slots = "auto"')
    assert cfg.socket_mode == 0o640
    assert cfg.cpu_slots is None


def test_bad_file_lists_every_problem(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(
        """
sockett = "/tmp/x.sock"
socket = "/tmp/{long}/hpod.sock"
cpu_slots = 0
stop_grace = "soon"
log_level = "verbose"
log_format = "jsno"
durability = true
socket_mode = "rw-rw----"
socket_group = "no-such-group-hpod-test"
admins = ["no-such-user-hpod-test", -1]

[gpu]
allowed = "all"
busy_policy = "avoidd"
min_free_memory_mib = -5
refresh_seconds = 0
refresh = 1
""".replace("{long}", "x" * 120)
    )
    with pytest.raises(ConfigError) as info:
        DaemonConfig.from_file(path)
    err = info.value
    problems = "\n".join(err.problems)
    expected = [
        "sockett: unknown key; did you mean 'socket'?",
        "socket: ",
        "at most 107",
        "cpu_slots: must be >= 1",
        "stop_grace: cannot read 'soon'",
        "log_level: 'verbose' is not one of",
        "log_format: 'jsno' is not one of auto, console, json; did you mean 'json'?",
        "durability: expected one of normal, fsync, got bool True",
        "socket_mode: 'rw-rw----' is not an octal mode",
        "socket_group: no group 'no-such-group-hpod-test'",
        "admins: [0] no user 'no-such-user-hpod-test'",
        "[1] expected a user name or a uid >= 0",
        "gpu.allowed: expected a list",
        "gpu.busy_policy: 'avoidd' is not one of avoid, share, ignore; did you mean 'avoid'?",
        "gpu.min_free_memory_mib: must be >= 0",
        "gpu.refresh_seconds: must be more than 0 seconds",
        "gpu.refresh: unknown key; did you mean 'refresh_seconds'?",
    ]
    for fragment in expected:
        assert fragment in problems, f"missing {fragment!r} in:\n{problems}"
    assert len(err.problems) == 15  # one line per key: both bad admins share one
    assert isinstance(err, HpodError)
    assert err.code is ErrorCode.INVALID_PARAMS
    assert str(path) in err.message
    assert err.data["problems"] == list(err.problems)


def test_toml_syntax_error_names_the_source():
    with pytest.raises(ConfigError, match=r"etc\.toml has 1 problem:\n  - TOML syntax error"):
        DaemonConfig.from_toml("socket = ", source="etc.toml")


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        DaemonConfig.from_file(tmp_path / "missing.toml")


def test_gpu_must_be_a_table():
    with pytest.raises(ConfigError, match=r"gpu: expected a \[gpu\] table"):
        DaemonConfig.from_toml('gpu = "all"')


def test_overrides_win_and_none_means_not_given(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = DaemonConfig.from_toml('cpu_slots = 4\nlog_level = "debug"\nstop_grace = 5')
    cfg = base.with_overrides(
        cpu_slots=2, state_dir=Path("st"), stop_grace="30s", socket=None, log_level=None
    )
    assert cfg.cpu_slots == 2
    assert cfg.state_dir == tmp_path / "st"  # absolute: relative to where the flag was typed
    assert cfg.stop_grace == 30.0
    assert cfg.log_level == "debug"  # None: the file's value stays
    assert base.cpu_slots == 4  # frozen: a new object


def test_overrides_are_checked():
    with pytest.raises(ConfigError) as info:
        DaemonConfig.defaults().with_overrides(cpu_slot=2, log_format="xml", gpu="all")
    problems = "\n".join(info.value.problems)
    assert "cpu_slot: unknown key; did you mean 'cpu_slots'?" in problems
    assert "log_format: 'xml' is not one of" in problems
    assert "gpu: expected a GpuConfig" in problems
    assert "the command line" in info.value.message
    gpu = GpuConfig(allowed=("1",))
    assert DaemonConfig.defaults().with_overrides(gpu=gpu).gpu is gpu


def test_resolved_values(tmp_path: Path):
    cfg = DaemonConfig.defaults().with_overrides(socket=str(tmp_path / "s.sock"), cpu_slots=7)
    assert cfg.resolved_socket() == tmp_path / "s.sock"
    assert cfg.resolved_trial_socket() == tmp_path / "s.sock"
    assert cfg.resolved_cpu_slots() == 7
    assert DaemonConfig.defaults().resolved_cpu_slots() >= 1
    assert DaemonConfig.defaults().resolved_state_dir() == default_state_dir()


def test_default_paths_for_root_and_users():
    assert default_state_dir(uid=0) == Path("/var/lib/hpod")
    assert default_socket_path(uid=0) == Path("/run/hpod/hpod.sock")
    env = {"XDG_STATE_HOME": "/xdg/state", "XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/h"}
    assert default_state_dir(uid=1000, env=env) == Path("/xdg/state/hpod")
    assert default_socket_path(uid=1000, env=env) == Path("/run/user/1000/hpod/hpod.sock")
    # Unset or relative XDG values are ignored, as the XDG spec says.
    bare = {"HOME": "/h", "XDG_STATE_HOME": "rel"}
    assert default_state_dir(uid=1000, env=bare) == Path("/h/.local/state/hpod")
    assert default_socket_path(uid=1000, env=bare) == Path("/tmp/hpod-1000/hpod.sock")


def test_config_errors_are_worded_as_spec_errors_are():
    # One builder for both lists of problems, so hpod serve and hpodctl submit read alike.
    from hpod.errors import SpecError, problems_message

    err = ConfigError(["cpu_slots: must be >= 1, got 0"], source="etc/hpod.toml")
    assert err.message == problems_message("etc/hpod.toml", err.problems)
    assert SpecError(err.problems).message == problems_message("the study spec", err.problems)


def test_config_reads_through_the_cores_section():
    # The daemon's reader is the spec's: no copy of the unknown-key or type wording of its own.
    from hpod.core import problems
    from hpod.daemon import config

    assert config.Section is problems.Section
    assert not hasattr(config, "_unknown_key")
    assert not hasattr(config, "_type_name")
