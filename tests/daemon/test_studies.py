"""The studies service with a real store: admit, restore, end, shut down.

No dispatcher runs here (the trials service's task group is never opened), so no trial starts:
these are the studies' own lifecycles, and what the store keeps of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hpod.core.states import StudyState
from hpod.daemon.config import DaemonConfig
from hpod.daemon.gpus import DevicePool
from hpod.daemon.runtime import StopReason, StudyRuntime
from hpod.daemon.store import Store, StudyRow
from hpod.daemon.studies import Studies
from hpod.daemon.trials import Trials
from hpod.errors import BadState, ErrorCode, NoGpus, ShuttingDown
from hpod.fit.fitter import Fitter
from tests.daemon.fakes import spec_toml

pytestmark = pytest.mark.anyio


def services(store: Store, root: Path) -> Studies:
    """A studies service as the daemon builds one at start-up, with a registry of its own."""
    config = DaemonConfig.defaults()
    pool = DevicePool(1)
    trials = Trials(config, pool, store, {}, trial_socket=str(root / "s"))
    fitter = Fitter(lambda: None, flag_dir=root / "state")
    return Studies(config, store, root / "state", fitter, pool, trials)


def seen(study: StudyRuntime) -> tuple[Any, ...]:
    return (
        study.id,
        study.seq,
        study.owner,
        study.spec,
        study.engine.state,
        study.engine.end_reason,
        study.folder,
        study.created,
        study.ended,
        study.done.is_set(),
    )


def stored(sid: str, text: str, root: Path) -> StudyRow:
    """A running study's row as a daemon before this one stored it (``name-seq`` ids)."""
    name, seq = sid.rsplit("-", 1)
    return StudyRow(
        id=sid,
        seq=int(seq),
        name=name,
        owner_uid=1000,
        spec_toml=text,
        base_dir=str(root),
        state=StudyState.RUNNING,
        created_at=time.time(),
    )


async def admit(studies: Studies, root: Path, name: str, owner: int = 1000) -> StudyRuntime:
    return await studies.admit(spec_toml(name, limits="max_trials = 3"), root, owner)


async def test_restored_studies_are_the_admitted_ones(store: Store, root: Path) -> None:
    first = services(store, root)
    await admit(first, root, "one", owner=1000)
    two = await admit(first, root, "two", owner=2000)
    await first.end(two, StudyState.STOPPED, "stopped by a test", StopReason.USER)
    assert two.done.is_set()

    second = services(store, root)
    await second.restore()
    assert [seen(s) for s in second.all()] == [seen(s) for s in first.all()]
    assert [s.id for s in second.all()] == ["one-1", "two-2"]
    # A study admitted after the restart takes the next number, never a used one.
    assert (await admit(second, root, "one")).id == "one-3"


async def test_a_submitted_environment_is_kept_filtered_by_the_daemon_and_restored(
    store: Store, root: Path
) -> None:
    first = services(store, root)
    sent = {
        "PATH": "/home/u/venv/bin:/usr/bin",
        "VIRTUAL_ENV": "/home/u/venv",
        "HF_HOME": "/scratch/hf",  # named by the spec's pass_env
        "AWS_SECRET_ACCESS_KEY": "x",  # named by nothing: a client that sent all it had
        "HPOD_TOKEN": "forged",  # the trial contract's: never the submitter's
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }
    text = spec_toml("env", top='pass_env = ["HF_HOME", "AWS_ACCESS_KEY_ID"]')
    study = await first.admit(text, root, 1000, env=sent)
    kept = {"PATH": sent["PATH"], "VIRTUAL_ENV": sent["VIRTUAL_ENV"], "HF_HOME": "/scratch/hf"}
    assert study.client_env == kept
    old = await first.admit(spec_toml("old"), root, 1000)  # an old client: the daemon's own
    assert old.client_env is None
    once = await first.admit_once(spec_toml("once"), root, 1000, "r-1", env={"PATH": "/bin"})
    assert once.study.client_env == {"PATH": "/bin"}

    second = services(store, root)
    await second.restore()
    assert {s.id: s.client_env for s in second.all()} == {
        study.id: kept,
        old.id: None,
        once.study.id: {"PATH": "/bin"},
    }


async def test_ending_an_ended_study_raises_bad_state(store: Store, root: Path) -> None:
    studies = services(store, root)
    study = await admit(studies, root, "one")
    await studies.end(study, StudyState.STOPPED, "first", StopReason.USER)
    with pytest.raises(BadState, match="one-1 has already ended"):
        await studies.end(study, StudyState.COMPLETED, "second", StopReason.LIMIT)
    row = store.load_study(study.id)
    assert row is not None
    assert (row.state, row.end_reason) == (StudyState.STOPPED, "first")
    assert row.ended_at is not None


async def test_shutdown_marks_running_studies_interrupted(store: Store, root: Path) -> None:
    studies = services(store, root)
    running = await admit(studies, root, "one")
    ended = await admit(studies, root, "two")
    await studies.end(ended, StudyState.STOPPED, "stopped by a test", StopReason.USER)

    await studies.shutdown()
    assert running.engine.state is StudyState.INTERRUPTED
    assert ended.engine.state is StudyState.STOPPED
    states = {row.id: row.state for row in store.load_studies()}
    assert states == {"one-1": StudyState.INTERRUPTED, "two-2": StudyState.STOPPED}
    with pytest.raises(ShuttingDown):
        await admit(studies, root, "three")

    # The next start resumes what the shutdown interrupted.
    again = services(store, root)
    await again.restore()
    assert again.get("one-1").engine.state is StudyState.RUNNING
    assert again.get("two-2").engine.state is StudyState.STOPPED
    row = store.load_study("one-1")
    assert row is not None
    assert row.state is StudyState.RUNNING


async def test_a_bad_stored_spec_is_skipped_with_a_log_line(store: Store, root: Path) -> None:
    first = services(store, root)
    await admit(first, root, "good")
    # No space, no objective.
    await store.insert_study(stored("broken-2", 'name = "broken"\ncommand = ["true"]\n', root))

    second = services(store, root)
    with capture_logs() as logs:
        await second.restore()
    assert [s.id for s in second.all()] == ["good-1"]
    [line] = [entry for entry in logs if entry["event"] == "study_unreadable"]
    assert line["study"] == "broken-2"
    assert line["log_level"] == "error"
    assert any("space" in problem for problem in line["problems"])


GPU_STUDY = "[resources]\ngpus_per_trial = 1\n"


async def test_a_gpu_study_without_gpus_is_refused_unless_it_accepts_cpu_slots(
    store: Store, root: Path
) -> None:
    studies = services(store, root)  # DevicePool(1): no NVML
    text = spec_toml("gpu", limits="max_trials = 1") + GPU_STUDY
    with pytest.raises(NoGpus) as refused:
        await studies.admit(text, root, 1000)
    assert refused.value.code is ErrorCode.NO_GPUS
    assert refused.value.message.startswith(
        "study gpu asks for 1 GPU per trial; this daemon has no GPU (NVML is not available)"
    )
    assert "cpu_fallback = true" in refused.value.message
    assert store.load_studies() == []
    assert studies.all() == []
    ok = await studies.admit(text + "cpu_fallback = true\n", root, 1000)
    assert ok.spec.resources.cpu_fallback
    assert [s.id for s in studies.all()] == [ok.id]


async def test_a_stored_gpu_study_restored_without_gpus_waits_for_them_and_says_so(
    store: Store, root: Path
) -> None:
    text = spec_toml("gpu", limits="max_trials = 1") + GPU_STUDY
    await store.insert_study(stored("gpu-1", text, root))  # admitted where there were GPUs
    studies = services(store, root)
    with capture_logs() as logs:
        await studies.restore()
    assert [s.id for s in studies.all()] == ["gpu-1"]  # never dropped
    [line] = [entry for entry in logs if entry["event"] == "study_waits_for_gpus"]
    assert line["study"] == "gpu-1"
    assert line["log_level"] == "warning"
    # Nor run on a CPU slot it did not accept.
    assert not studies.trials.wants_slot(studies.all()[0], time.monotonic())


def test_the_daemon_loads_scipy_only_for_a_study_with_a_model() -> None:
    # scipy is 28 MB of RSS: a daemon whose studies are fifo or ASHA never imports it, and a
    # BO study's searcher does.
    code = (
        "import sys, pathlib\n"
        "import hpod.daemon.app\n"
        "from hpod.core.spec import StudySpec\n"
        "from hpod.core.study import Study\n"
        'base = \'name = "s"\\ncommand = ["true"]\\n[objective]\\n'
        'metric = "loss"\\nmode = "min"\\n[space]\\n'
        'x = { param_type = "uniform", range = [0.0, 1.0] }\\n\'\n'
        "Study.new(StudySpec.from_toml(base, base_dir=pathlib.Path('/')))\n"
        "print('scipy' in sys.modules)\n"
        "bo = base + '[searcher]\\ntype = \"bo\"\\n'\n"
        "Study.new(StudySpec.from_toml(bo, base_dir=pathlib.Path('/')))\n"
        "print('scipy' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "True"]
