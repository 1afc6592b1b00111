"""On a machine with an NVIDIA GPU: real NVML, a real daemon, a trial that sees its GPU."""

from __future__ import annotations

import pytest

from hpod.daemon.gpus import NvmlUnavailable, discover, load_nvml

pytestmark = pytest.mark.gpu


def test_real_nvml_sees_the_gpus() -> None:
    try:
        nvml = load_nvml()
    except NvmlUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    try:
        gpus = discover(nvml, lambda pid: False)
    finally:
        nvml.nvmlShutdown()
    if not gpus:
        pytest.skip("NVML works but sees no GPU")
    for g in gpus:
        assert g.uuid.startswith(("GPU-", "MIG-"))
        assert g.memory_total_mib > 0
        print(g.to_dict())
