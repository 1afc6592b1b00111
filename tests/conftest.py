"""Test-wide settings."""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: the model-based searchers' GP fits are small, and on
# this 2-core machine OpenBLAS's extra thread only spins (fits ran 3x slower with it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings

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
