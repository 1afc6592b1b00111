"""Test-wide settings."""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: the model-based searchers' GP fits are small, and on
# this 2-core machine OpenBLAS's extra thread only spins (fits ran 3x slower with it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from hpod import trial

# A study's trials run in its submitter's environment (hpod.core.passenv): a test that submits
# from this process passes on its PATH, and the specs' `python` must be this interpreter, the one
# with hpod installed, however pytest was started (.venv/bin/pytest without an activated venv).
_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

# The machine is small and shared with trial processes the e2e tests start: time-based health
# checks and deadlines would fail a correct test for being slow. derandomize keeps every run of a
# property test the same, so CI cannot go red on a draw nobody can reproduce.
settings.register_profile(
    "hpod",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("hpod")


@pytest.fixture
def clean_trial_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No HPOD_* variable of the shell leaks in, and the reporter's connection is closed after."""
    for name in list(os.environ):
        if name.startswith("HPOD_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trial, "_warned_outside", False)
    yield
    trial.close()


@pytest.fixture
def anyio_backend() -> str:
    """The daemon runs on asyncio (uvloop is not used), so its async tests do too."""
    return "asyncio"
