"""The spec's [executor] table: who starts the trials (issue 14, item 6)."""

from __future__ import annotations

import pytest

from hpod.core.spec import DEFAULT_LEASE, ExecutorSpec, ExecutorType, StudySpec
from hpod.errors import SpecError

BASE = """
name = "ext"
{command}

[objective]
metric = "loss"
mode = "min"

[space]
x = {{ param_type = "uniform", range = [0.0, 1.0] }}
{extra}
"""


def _spec(extra: str = "", command: str = "") -> StudySpec:
    return StudySpec.from_toml(BASE.format(extra=extra, command=command), base_dir="/tmp")


def _problems(extra: str = "", command: str = "") -> list[str]:
    with pytest.raises(SpecError) as info:
        _spec(extra, command)
    return list(info.value.problems)


def test_the_default_executor_is_local_and_needs_a_command() -> None:
    spec = _spec(command='command = ["python", "t.py"]')
    assert spec.executor == ExecutorSpec()
    assert spec.executor.type is ExecutorType.LOCAL
    assert not spec.executor.external
    assert "executor" not in spec.to_dict()
    assert _problems() == [
        'command: missing; e.g. command = ["python", "train.py", "--lr", "{lr}"]'
    ]


def test_an_external_study_needs_no_command_and_has_a_lease() -> None:
    spec = _spec('[executor]\ntype = "external"\n')
    assert spec.executor.external
    assert spec.executor.lease == DEFAULT_LEASE == 600.0
    assert spec.command == ()
    short = _spec('[executor]\ntype = "external"\nlease = "90s"\n')
    assert short.executor.lease == 90.0
    # The stored form reads back to the same spec (a restart restores it from there).
    assert StudySpec.from_mapping(short.to_dict(), base_dir="/tmp") == short
    assert short.to_dict()["executor"] == {"type": "external", "lease": 90.0}


def test_every_problem_of_the_executor_table_is_named() -> None:
    assert _problems('[executor]\ntype = "extern"\nlease = "5s"\nwho = 1\n') == [
        "executor.type: 'extern' is not one of local, external, slurm; did you mean 'external'?",
        "executor.who: unknown key; expected one of type, lease, warm_start, warm_imports, "
        "partition, account, qos, time_limit, gpus, gres, cpus, memory, sbatch_args, setup, "
        "poll, checkpoint_root",
        'command: missing; e.g. command = ["python", "train.py", "--lr", "{lr}"]',
    ]
    assert _problems('[executor]\ntype = "external"\nlease = 0\n') == [
        "executor.lease: must be longer than 0, got 0"
    ]
    assert _problems('[executor]\nlease = "5s"\n', command='command = ["t"]') == [
        'executor.lease: only an external executor has a lease (type = "external")'
    ]
    assert _problems('[executor]\ntype = "external"\n[resources]\ngpus_per_trial = 1\n') == [
        "resources.gpus_per_trial: an external study's trials run where their caller starts "
        "them, on no slot or GPU of the daemon's; got 1, leave it 0 (or out)"
    ]


# -- [executor] type = "slurm" (docs/slurm.md) ----------------------------------------------------

SLURM = """
[limits]
max_concurrent = 4

[executor]
type = "slurm"
{keys}
"""
COMMAND = 'command = ["python", "t.py"]'


def test_a_slurm_executor_reads_every_key() -> None:
    keys = """
partition = "gpu"
account = "proj1"
qos = "normal"
time_limit = "1h30m"
gpus = 2
cpus = 8
memory = "16GiB"
sbatch_args = ["--exclusive", "--constraint=a100"]
setup = "module load cuda/12"
poll = "5s"
checkpoint_root = "/shared/ckpt"
"""
    spec = _spec(SLURM.format(keys=keys), COMMAND)
    slurm = spec.executor.slurm
    assert spec.executor.type is ExecutorType.SLURM
    assert spec.executor.remote
    assert not spec.executor.external
    assert slurm is not None
    assert (slurm.partition, slurm.account, slurm.qos) == ("gpu", "proj1", "normal")
    assert slurm.time_limit == 5400.0
    assert (slurm.gpus, slurm.cpus, slurm.memory) == (2, 8, 16 * 1024**3)
    assert slurm.sbatch_args == ("--exclusive", "--constraint=a100")
    assert slurm.setup == "module load cuda/12"
    assert slurm.poll == 5.0
    assert slurm.checkpoint_root == "/shared/ckpt"
    assert spec.to_dict()["executor"]["partition"] == "gpu"


def test_a_slurm_executor_is_local_by_default_and_asks_for_nothing() -> None:
    spec = _spec(SLURM.format(keys=""), COMMAND)
    assert spec.executor.slurm is not None
    assert spec.executor.slurm.gpus == 0
    assert spec.executor.slurm.partition is None
    assert _spec(command=COMMAND).executor.slurm is None


def test_gpus_per_trial_is_what_each_job_asks_for() -> None:
    spec = _spec(SLURM.format(keys="") + "\n[resources]\ngpus_per_trial = 2\n", COMMAND)
    assert spec.executor.slurm is not None
    assert spec.executor.slurm.gpus == 2
    problems = _problems(
        SLURM.format(keys="gpus = 1") + "\n[resources]\ngpus_per_trial = 2\n", COMMAND
    )
    assert problems == [
        "executor.gpus: 1 differs from resources.gpus_per_trial (2); give one of them"
    ]


def test_every_slurm_problem_is_named_by_its_key_path() -> None:
    keys = """
partition = "two words"
gpus = -1
gres = "gpu:1"
cpus = 0
memory = "lots"
time_limit = "soon"
sbatch_args = ["--output=x.log", "--exclusive"]
checkpoint_root = "relative/path"
lease = "1m"
"""
    problems = _problems(SLURM.format(keys=keys), COMMAND)
    assert problems[:2] == [
        'executor.lease: only an external executor has a lease (type = "external")',
        "executor.partition: must be one word, as sbatch takes it; got 'two words'",
    ]
    joined = "\n".join(problems)
    for key in ("gpus", "cpus", "memory", "time_limit", "sbatch_args", "checkpoint_root"):
        assert f"executor.{key}:" in joined, key
    assert "--output is hpod's to set" in joined


def test_slurm_needs_max_concurrent_and_its_keys_need_slurm() -> None:
    no_cap = '\n[executor]\ntype = "slurm"\n'
    assert _problems(no_cap, COMMAND) == [
        'limits.max_concurrent: needed with [executor] type = "slurm": it bounds the study\'s '
        "jobs, queued and running"
    ]
    local = '\n[executor]\npartition = "gpu"\n'
    assert _problems(local, COMMAND) == [
        'executor.partition: only a Slurm executor has it (type = "slurm")'
    ]
