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
        "executor.type: 'extern' is not one of local, external; did you mean 'external'?",
        "executor.who: unknown key; expected one of type, lease, warm_start, warm_imports",
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
