"""A fake pynvml for the tests: the same function names, GPUs described by a JSON file.

The daemon imports it in place of pynvml when ``HPOD_NVML_MODULE=tests.fake_nvml``; the GPUs are
read from the file named by ``HPOD_FAKE_NVML`` at every call, so a test can change them (a
foreign process arrives) while the daemon runs. In-process tests call ``configure`` instead.
Layout: ``{"gpus": [{"uuid", "name", "total_mib", "used_mib", "util", "pids"}]}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
_layout: dict[str, Any] | None = None


class NVMLError(Exception):
    pass


def configure(gpus: list[dict[str, Any]] | None) -> None:
    """In-process: use these GPUs (None: fall back to the file)."""
    global _layout
    _layout = None if gpus is None else {"gpus": gpus}


def gpu(
    index: int, *, used_mib: int = 0, pids: tuple[int, ...] = (), total_mib: int = 16384
) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{index:08d}-fake-0000-0000-000000000000",
        "name": "Fake GPU",
        "total_mib": total_mib,
        "used_mib": used_mib,
        "util": 0,
        "pids": list(pids),
    }


def _gpus() -> list[dict[str, Any]]:
    if _layout is not None:
        return list(_layout["gpus"])
    path = os.environ.get("HPOD_FAKE_NVML")
    if not path:
        raise NVMLError("NVML Shared Library Not Found")
    with open(path) as f:
        return list(json.load(f)["gpus"])


@dataclass(frozen=True)
class _Memory:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class _Util:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int


def nvmlInit() -> None:
    _gpus()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_gpus()[handle]["uuid"])


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpus()[handle]["name"])


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    g = _gpus()[handle]
    total, used = int(g["total_mib"]) * MIB, int(g["used_mib"]) * MIB
    return _Memory(total, used, total - used)


def nvmlDeviceGetUtilizationRates(handle: int) -> _Util:
    return _Util(int(_gpus()[handle].get("util", 0)), 0)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[_Process]:
    return [_Process(int(p), 256 * MIB) for p in _gpus()[handle].get("pids", [])]
