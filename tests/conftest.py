"""Test-wide settings."""

from __future__ import annotations

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
