"""The GPU pool: GPUs found with NVML, leased to trials by UUID, with CPU slots beside them.

NVML sits behind one seam, ``Nvml``: the few pynvml calls used here. ``load_nvml`` returns pynvml
itself (or the module named by ``HPOD_NVML_MODULE``, which is how the tests put a fake in its
place), and ``discover`` turns it into ``GpuInfo`` snapshots. NVML calls block (a busy driver
can take a while), so the daemon calls ``discover`` in a worker thread and hands the snapshot
to ``DevicePool.update`` on the event loop.

The pool itself is plain bookkeeping: it never calls NVML. A trial with ``gpus_per_trial = 0``,
or any trial when no GPU is usable at all (no driver, no GPU, none allowed), takes a CPU slot.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from hpod.daemon.config import GpuConfig
from hpod.daemon.slots import Lease, Slot, SlotPool

__all__ = [
    "DevicePool",
    "GpuInfo",
    "Nvml",
    "NvmlUnavailable",
    "discover",
    "load_nvml",
    "visible_filter",
]

MIB = 1024 * 1024
# Shares of one GPU add up to at most 1; the slack absorbs 1/3 + 1/3 + 1/3 rounding.
_EPS = 1e-9


class Nvml(Protocol):
    """The pynvml calls hpod makes, so that a fake module can stand in for the real one."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Sequence[Any]: ...


class NvmlUnavailable(Exception):
    """No usable NVML: no library, no driver, or no GPU. The pool is CPU slots."""


def load_nvml() -> Nvml:
    """pynvml, initialised; raises NvmlUnavailable with the reason when it cannot be."""
    name = os.environ.get("HPOD_NVML_MODULE", "pynvml")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise NvmlUnavailable(f"cannot import {name}: {exc}") from None
    nvml = cast(Nvml, module)
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses built at run time
        raise NvmlUnavailable(f"{type(exc).__name__}: {exc}") from None
    return nvml


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization: int | None  # percent; None when the GPU does not say
    processes: tuple[int, ...]  # pids on it
    foreign: tuple[int, ...]  # ... of which hpod did not start

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_total_mib - self.memory_used_mib)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mib": self.memory_total_mib,
            "memory_used_mib": self.memory_used_mib,
            "memory_free_mib": self.memory_free_mib,
            "utilization": self.utilization,
            "processes": list(self.processes),
            "foreign": list(self.foreign),
        }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover(nvml: Nvml, ours: Callable[[int], bool]) -> list[GpuInfo]:
    """Every GPU NVML sees, now. Blocking: call it off the event loop."""
    out = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            util: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # not supported on some boards (MIG, vGPU)
            util = None
        try:
            pids = tuple(int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except Exception:
            pids = ()
        out.append(
            GpuInfo(
                index=index,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_total_mib=int(mem.total) // MIB,
                memory_used_mib=int(mem.used) // MIB,
                utilization=util,
                processes=pids,
                foreign=tuple(p for p in pids if not ours(p)),
            )
        )
    return out


def visible_filter(gpus: Sequence[GpuInfo], allowed: Iterable[str]) -> list[GpuInfo]:
    """The GPUs named in ``allowed`` (indices or UUIDs, UUID prefixes as CUDA takes them)."""
    wanted = [a.strip() for a in allowed if a.strip()]
    out = []
    for gpu in gpus:
        for name in wanted:
            if name.isdigit():
                if int(name) == gpu.index:
                    break
            elif gpu.uuid == name or gpu.uuid.startswith(name) or "GPU-" + name == gpu.uuid:
                break
        else:
            continue
        out.append(gpu)
    return out


def allowed_gpus(
    gpus: Sequence[GpuInfo], config: GpuConfig, cuda_visible: str | None
) -> list[GpuInfo]:
    """The configuration's ``allowed`` list, narrowed by the daemon's own CUDA_VISIBLE_DEVICES."""
    out = list(gpus)
    if config.allowed:
        out = visible_filter(out, config.allowed)
    if cuda_visible is not None:
        # Set (even empty) means whoever started the daemon chose its GPUs.
        out = visible_filter(out, cuda_visible.split(","))
    return out


@dataclass
class _GpuLease:
    lease: Lease
    devices: tuple[str, ...]
    share: float  # of each of its GPUs: 1 / trials_per_gpu


class DevicePool:
    """CPU slots plus the allowed GPUs; a lease is a CPU slot or a set of GPUs by UUID."""

    def __init__(
        self,
        cpu_slots: int,
        config: GpuConfig | None = None,
        *,
        nvml: bool = False,
        cuda_visible: str | None = None,
    ) -> None:
        self.config = config or GpuConfig()
        self.nvml = nvml  # NVML answered: GPUs (if any) are known
        self.cuda_visible = cuda_visible
        self._cpu = SlotPool.cpu(cpu_slots)
        self._gpus: list[GpuInfo] = []  # allowed ones, latest snapshot
        self._all: list[GpuInfo] = []
        self._leases: dict[int, _GpuLease] = {}
        self._next_lease = 0
        # (study, trial) -> the GPU memory (MiB) a run of it had when it ran out of memory: its
        # retry goes where more is free, if any GPU has that (note_oom; docs/oom.md).
        self._oom_notes: dict[tuple[str, int], int] = {}

    # -- the GPUs ---------------------------------------------------------------------------

    def update(self, gpus: Sequence[GpuInfo]) -> None:
        self._all = list(gpus)
        self._gpus = allowed_gpus(gpus, self.config, self.cuda_visible)

    @property
    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    @property
    def has_gpus(self) -> bool:
        return self.nvml and bool(self._gpus)

    def load(self, uuid: str) -> float:
        return sum(g.share for g in self._leases.values() if uuid in g.devices)

    def holders(self, uuid: str) -> list[Lease]:
        return [g.lease for g in self._leases.values() if uuid in g.devices]

    def usable(self, gpu: GpuInfo, share: float) -> bool:
        """Whether one more lease of ``share`` may go on ``gpu`` under the busy policy."""
        load = self.load(gpu.uuid)
        if load + share > 1.0 + _EPS:
            return False
        policy = self.config.busy_policy
        if policy == "ignore":
            return True
        if policy == "avoid" and gpu.foreign:
            return False
        # The floor guards against someone else's memory use; our own packed trials chose to
        # share, so a GPU we already hold is not refused for the memory they take.
        return load > 0 or gpu.memory_free_mib >= self.config.min_free_memory_mib

    # -- leases -----------------------------------------------------------------------------

    def _uses_gpus(self, gpus_per_trial: int) -> bool:
        return gpus_per_trial > 0 and self.has_gpus

    def _no_cpu_for(self, gpus_per_trial: int, cpu_fallback: bool) -> bool:
        # A study that asks for GPUs where there are none never gets a CPU slot unless it says
        # it accepts one: it ran on CPU slots silently (a restored one, or one whose GPUs went
        # at a refresh, now waits for GPUs instead).
        return gpus_per_trial > 0 and not self.has_gpus and not cpu_fallback

    def _no_gpu(self) -> str:
        if not self.nvml:
            return "this daemon has no GPU (NVML is not available)"
        return (
            f"this daemon has no GPU it may use (NVML sees {len(self._all)}; [gpu] allowed "
            "and CUDA_VISIBLE_DEVICES leave none)"
        )

    def gpu_refusal(self, gpus_per_trial: int, cpu_fallback: bool = False) -> str | None:
        """Why a study asking for ``gpus_per_trial`` could never run here, or None.

        No GPU at all: refused unless it accepts CPU slots. Fewer GPUs than one trial takes:
        refused whatever it accepts, since no trial of it could ever start."""
        asks = f"asks for {gpus_per_trial} GPU{'s' if gpus_per_trial > 1 else ''} per trial"
        if self._no_cpu_for(gpus_per_trial, cpu_fallback):
            return (
                f"{asks}; {self._no_gpu()}. Set [resources] cpu_fallback = true to run its "
                "trials on CPU slots, or gpus_per_trial = 0, or submit it to a daemon on a "
                "machine with GPUs"
            )
        if self._uses_gpus(gpus_per_trial) and gpus_per_trial > len(self._gpus):
            return (
                f"{asks}; this daemon may use {len(self._gpus)}, so no trial could ever "
                f"start. Lower gpus_per_trial to at most {len(self._gpus)}"
            )
        return None

    def placement(self, gpus_per_trial: int, cpu_fallback: bool = False) -> dict[str, str]:
        """Where a study's trials run, for `hpodctl show`: ``kind`` gpu, cpu or none (they wait
        for GPUs), and why."""
        if gpus_per_trial == 0:
            return {"kind": "cpu", "reason": "gpus_per_trial = 0"}
        asks = f"asks for {gpus_per_trial} GPU{'s' if gpus_per_trial > 1 else ''} per trial"
        if self._uses_gpus(gpus_per_trial):
            return {"kind": "gpu", "reason": asks}
        if cpu_fallback:
            return {
                "kind": "cpu",
                "reason": f"{asks}; {self._no_gpu()}, and the spec accepts CPU slots "
                "(cpu_fallback = true)",
            }
        return {"kind": "none", "reason": f"{asks}; {self._no_gpu()}: its trials wait for GPUs"}

    def _pick(
        self, gpus_per_trial: int, trials_per_gpu: int, needs_more_than: int | None = None
    ) -> list[GpuInfo] | None:
        share = 1.0 / trials_per_gpu
        fitting = [g for g in self._gpus if self.usable(g, share)]
        if len(fitting) < gpus_per_trial:
            return None

        # Fullest first: trials that may share a GPU pack onto one before opening another. A
        # trial that ran out of memory with ``needs_more_than`` MiB goes first to GPUs with
        # more free than that, where there are such.
        def key(g: GpuInfo) -> tuple[bool, float, int]:
            short = needs_more_than is not None and g.memory_free_mib <= needs_more_than
            return (short, -self.load(g.uuid), g.index)

        fitting.sort(key=key)
        return fitting[:gpus_per_trial]

    def note_oom(self, study: str, trial: int, devices: Sequence[str], share: float) -> int | None:
        """A run of the trial on ``devices`` ran out of memory: the pool learns that this
        configuration needs more than it had (the least of its GPUs' memory times its share of
        each), and places the trial's retry on a GPU with more free memory than that where
        there is one. Returns the MiB noted (None: none of its GPUs is known)."""
        had = [g.memory_total_mib * share for g in self._gpus if g.uuid in devices]
        if not had:
            return None
        mib = int(min(had))
        self._oom_notes[(study, trial)] = mib
        return mib

    def oom_note(self, study: str, trial: int) -> int | None:
        """The GPU memory (MiB) the trial ran out of memory with, if it did (note_oom)."""
        return self._oom_notes.get((study, trial))

    def fits(
        self, gpus_per_trial: int, trials_per_gpu: int = 1, *, cpu_fallback: bool = False
    ) -> bool:
        if self._uses_gpus(gpus_per_trial):
            return self._pick(gpus_per_trial, trials_per_gpu) is not None
        if self._no_cpu_for(gpus_per_trial, cpu_fallback):
            return False
        return self._cpu.free > 0

    def acquire(
        self,
        study: str,
        trial: int,
        gpus_per_trial: int = 0,
        trials_per_gpu: int = 1,
        *,
        cpu_fallback: bool = False,
    ) -> Slot | None:
        if self._no_cpu_for(gpus_per_trial, cpu_fallback):
            return None
        if not self._uses_gpus(gpus_per_trial):
            return self._cpu.acquire(study, trial)
        picked = self._pick(gpus_per_trial, trials_per_gpu, self._oom_notes.get((study, trial)))
        if picked is None:
            return None
        self._next_lease += 1
        devices = tuple(g.uuid for g in picked)
        self._leases[self._next_lease] = _GpuLease(
            Lease(study, trial), devices, 1.0 / trials_per_gpu
        )
        return Slot(self._next_lease, devices)

    def claim(
        self, study: str, trial: int, devices: Sequence[str], trials_per_gpu: int = 1
    ) -> Slot:
        """The slot of a run adopted after a restart (hpod.daemon.adoption): its process holds
        ``devices`` already, so it gets them whatever the load or the busy policy say, and a
        CPU slot even where the pool has no free one left (a smaller cpu_slots since)."""
        if not devices:
            slot = self._cpu.acquire(study, trial)
            if slot is not None:
                return slot
            self._next_lease += 1
            # Over the pool's size until it exits: released like a GPU lease, by its index.
            self._leases[self._next_lease] = _GpuLease(Lease(study, trial), (), 0.0)
            return Slot(-self._next_lease)
        self._next_lease += 1
        kept = tuple(devices)
        self._leases[self._next_lease] = _GpuLease(Lease(study, trial), kept, 1.0 / trials_per_gpu)
        return Slot(self._next_lease, kept)

    def release(self, slot: Slot) -> None:
        if slot.index < 0:
            if self._leases.pop(-slot.index, None) is None:
                raise ValueError(f"slot {slot.index} was not held")
            return
        if not slot.devices:
            self._cpu.release(slot)
            return
        if self._leases.pop(slot.index, None) is None:
            raise ValueError(f"GPU lease {slot.index} was not held")

    @property
    def size(self) -> int:
        """Trials that could run at once: CPU slots, plus one per GPU."""
        return self._cpu.size + len(self._gpus) if self.has_gpus else self._cpu.size

    @property
    def free(self) -> int:
        cpu = self._cpu.free
        if not self.has_gpus:
            return cpu
        return cpu + sum(1 for g in self._gpus if self.load(g.uuid) < _EPS)

    def view(self) -> dict[str, Any]:
        """What `hpodctl gpus` shows: every GPU NVML sees, who holds it, the CPU slots."""
        allowed = {g.uuid for g in self._gpus}
        gpus = []
        for g in self._all:
            row = g.to_dict()
            row["allowed"] = g.uuid in allowed
            row["load"] = round(self.load(g.uuid), 6)
            row["usable"] = g.uuid in allowed and self.usable(g, 1e-6)
            row["holders"] = [{"study": h.study, "trial": h.trial} for h in self.holders(g.uuid)]
            gpus.append(row)
        cpu = self._cpu.holders()
        return {
            "nvml": self.nvml,
            "busy_policy": self.config.busy_policy,
            "min_free_memory_mib": self.config.min_free_memory_mib,
            "gpus": gpus,
            "oom_notes": [
                {"study": st, "trial": tr, "had_mib": mib}
                for (st, tr), mib in sorted(self._oom_notes.items())
            ],
            "cpu_slots": {
                "size": self._cpu.size,
                "free": self._cpu.free,
                "holders": [
                    {"slot": i, "study": lease.study, "trial": lease.trial}
                    for i, lease in sorted(cpu.items())
                ],
            },
        }
