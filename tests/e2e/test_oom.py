"""Out of memory: a trial retried with its batch halved until it fits (docs/oom.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent

SPEC = """
name = "oom"
command = ["python", "trial_oom.py", "--mode", "{mode}"]
[objective]
metric = "acc"
mode = "max"
[space]
bs = {{ param_type = "choice", range = [16, 64, 128] }}
lr = {{ param_type = "uniform", range = [0.0, 1.0] }}
[searcher]
points_to_evaluate = [{{ bs = 16, lr = 0.1 }}, {{ bs = 128, lr = 0.5 }}]
{resources}
[limits]
max_trials = 2
max_concurrent = 1
[oom]
batch_size_key = "bs"
max_retries = 3
min_value = 8
{env}
"""


def _write(daemon: Any, text: str) -> Path:
    folder = daemon.root / "oom"
    folder.mkdir(exist_ok=True)
    shutil.copy(HERE / "trial_oom.py", folder / "trial_oom.py")
    path = folder / "study.toml"
    path.write_text(text)
    return path


def _check_retried(daemon: Any, study: str, chain: list[int]) -> None:
    detail = daemon.ctl_json("show", study)
    assert detail["state"] == "completed", detail
    assert detail["failures"] == [], detail["failures"]
    # The best is trial 1, the one that ran out of memory and was retried; trial 0 never was.
    assert detail["best"]["trial"] == 1, detail["best"]
    assert detail["best"]["config"]["bs"] == chain[-1]
    retries = [r for r in detail["oom_retries"] if r["trial"] == 1]
    assert [r["from"] for r in retries] + [retries[-1]["to"]] == chain, retries
    assert not [r for r in detail["oom_retries"] if r["trial"] == 0]
    trials = daemon.ctl_json("trials", study)
    assert trials[0]["retries"] == []
    assert len(trials[1]["retries"]) == len(chain) - 1
    assert trials[1]["state"] == "completed"
    shown = daemon.ctl("show", study, check=True).stdout
    assert "out-of-memory retries" in shown
    table = daemon.ctl("trials", study, check=True).stdout
    assert "bs " + ">".join(str(v) for v in chain) in table
    lines = daemon.ctl("events", study, "--json", check=True).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert sum(1 for e in events if e["kind"] == "trial_oom_retry") == len(chain) - 1


@pytest.mark.timeout(120)
def test_a_trial_out_of_memory_is_retried_with_half_the_batch(daemon: Any) -> None:
    path = _write(daemon, SPEC.format(mode="raise", env="", resources=""))
    res = daemon.ctl("submit", str(path), "--wait", timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    _check_retried(daemon, "oom-1", [128, 64, 16])


def _memory_cgroup() -> tuple[Path, str] | None:
    """A memory-limited cgroup of 48 MiB (v2 memory.max where the controller is there, else the
    v1 memory hierarchy), or None."""
    name = f"hpod-oom-test-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup/unified")
    if not v2.is_dir():
        v2 = Path("/sys/fs/cgroup")
    if (
        "memory" in (v2 / "cgroup.subtree_control").read_text().split()
        if (v2 / "cgroup.subtree_control").exists()
        else False
    ):
        path = v2 / name
        path.mkdir()
        (path / "memory.max").write_text(str(48 * 1024 * 1024))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        return path, "v2"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        path = v1 / name
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(48 * 1024 * 1024))
        with contextlib.suppress(OSError):
            (path / "memory.memsw.limit_in_bytes").write_text(str(48 * 1024 * 1024))
        return path, "v1"
    return None


@pytest.mark.timeout(150)
def test_a_trial_the_kernel_oom_kills_is_recognised_and_retried(daemon: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a memory-limited cgroup, and the kernel's log")
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("the kernel's log (/dev/kmsg) cannot be read here")
    try:
        made = _memory_cgroup()
    except OSError as exc:
        pytest.skip(f"cannot make a memory-limited cgroup: {exc}")
    if made is None:
        pytest.skip("no memory controller (cgroup v2 memory.max or v1 memory)")
    cgroup, _ = made
    try:
        env = f'[env]\nOOM_CGROUP = "{cgroup}"\n'
        # 128 and 64 MiB are past the 48 MiB limit: the kernel kills them; 16 fits.
        path = _write(daemon, SPEC.format(mode="alloc", env=env, resources=""))
        res = daemon.ctl("submit", str(path), "--wait", timeout=130)
        assert res.returncode == 0, res.stdout + res.stderr + daemon.output()
        detail = daemon.ctl_json("show", "oom-1")
        errors = [r["error"] for r in detail["oom_retries"]]
        assert errors, detail
        assert all("OOM killer" in e for e in errors), errors
        _check_retried(daemon, "oom-1", [128, 64, 16])
    finally:
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_a_real_cuda_out_of_memory_is_retried_with_half_the_batch(daemon: Any) -> None:
    if not _cuda():
        pytest.skip("no CUDA GPU here (torch with CUDA and a GPU are needed)")
    # bs 128 asks torch for 4/3 of the GPU's memory: torch.cuda.OutOfMemoryError; 64, 2/3 of it.
    resources = "[resources]\ngpus_per_trial = 1\n"
    path = _write(daemon, SPEC.format(mode="cuda", env="", resources=resources))
    res = daemon.ctl("submit", str(path), "--wait", timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr + daemon.output()
    _check_retried(daemon, "oom-1", [128, 64])
    notes = daemon.ctl_json("gpus")["oom_notes"]
    assert [n["trial"] for n in notes] == [1], notes
