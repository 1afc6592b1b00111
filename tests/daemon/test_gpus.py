"""The GPU pool against a fake NVML (the pynvml seam only): discovery, policy, leases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hpod.daemon.config import GpuConfig
from hpod.daemon.gpus import DevicePool, GpuInfo, Nvml, NvmlUnavailable, discover, load_nvml
from tests import fake_nvml


@pytest.fixture
def nvml() -> Iterator[Nvml]:
    fake_nvml.configure([fake_nvml.gpu(0), fake_nvml.gpu(1)])
    yield fake_nvml  # type: ignore[misc]
    fake_nvml.configure(None)


def not_ours(pid: int) -> bool:
    return False


def pool_of(gpus: list[GpuInfo], cpu: int = 2, **config: object) -> DevicePool:
    pool = DevicePool(cpu, GpuConfig(**config), nvml=True)  # type: ignore[arg-type]
    pool.update(gpus)
    return pool


def test_discover_reads_every_gpu(nvml: Nvml) -> None:
    fake_nvml.configure([fake_nvml.gpu(0), fake_nvml.gpu(1, used_mib=2048, pids=(4242, 7))])
    gpus = discover(nvml, lambda pid: pid == 7)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].uuid == "GPU-00000000-fake-0000-0000-000000000000"
    assert gpus[1].memory_free_mib == 16384 - 2048
    assert gpus[1].processes == (4242, 7)
    assert gpus[1].foreign == (4242,)


def test_load_nvml_without_a_library_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPOD_NVML_MODULE", "tests.fake_nvml")
    monkeypatch.delenv("HPOD_FAKE_NVML", raising=False)
    fake_nvml.configure(None)
    with pytest.raises(NvmlUnavailable, match="Not Found"):
        load_nvml()


@pytest.mark.parametrize("count", [2, 8])
def test_one_trial_per_gpu_never_shares(nvml: Nvml, count: int) -> None:
    fake_nvml.configure([fake_nvml.gpu(i) for i in range(count)])
    pool = pool_of(discover(nvml, not_ours))
    slots = []
    for trial in range(count):
        slot = pool.acquire("s", trial, 1, 1)
        assert slot is not None
        slots.append(slot)
    assert pool.acquire("s", count, 1, 1) is None
    assert not pool.fits(1, 1)
    devices = [s.devices for s in slots]
    assert all(len(d) == 1 for d in devices)
    assert len({d[0] for d in devices}) == count  # no GPU holds two trials
    pool.release(slots[3 % count])
    again = pool.acquire("s", 99, 1, 1)
    assert again is not None
    assert again.devices == slots[3 % count].devices


def test_two_trials_per_gpu_pack(nvml: Nvml) -> None:
    pool = pool_of(discover(nvml, not_ours))
    a = pool.acquire("s", 0, 1, 2)
    b = pool.acquire("s", 1, 1, 2)
    c = pool.acquire("s", 2, 1, 2)
    d = pool.acquire("s", 3, 1, 2)
    assert a
    assert b
    assert c
    assert d
    assert a.devices == b.devices  # the second packs onto the first's GPU
    assert c.devices == d.devices != a.devices
    assert pool.acquire("s", 4, 1, 2) is None
    holders = {g["uuid"]: [h["trial"] for h in g["holders"]] for g in pool.view()["gpus"]}
    assert holders == {a.devices[0]: [0, 1], c.devices[0]: [2, 3]}


def test_multi_gpu_trials_get_distinct_gpus(nvml: Nvml) -> None:
    fake_nvml.configure([fake_nvml.gpu(i) for i in range(8)])
    pool = pool_of(discover(nvml, not_ours))
    slots = [pool.acquire("s", t, 3, 1) for t in range(3)]
    assert slots[0]
    assert slots[1]
    assert slots[2] is None
    used = [u for s in slots[:2] if s for u in s.devices]
    assert len(used) == len(set(used)) == 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("avoid", {0}), ("share", {0, 1}), ("ignore", {0, 1, 2})],
)
def test_busy_gpus_follow_the_policy(nvml: Nvml, policy: str, expected: set[int]) -> None:
    fake_nvml.configure(
        [
            fake_nvml.gpu(0),
            fake_nvml.gpu(1, used_mib=4096, pids=(4242,)),  # a foreign process, memory to spare
            fake_nvml.gpu(2, used_mib=16000),  # below the 1024 MiB floor
        ]
    )
    pool = pool_of(discover(nvml, not_ours), busy_policy=policy, min_free_memory_mib=1024)
    got = set()
    while (slot := pool.acquire("s", len(got), 1, 1)) is not None:
        got.add(int(slot.devices[0][4:12]))
    assert got == expected


def test_our_own_processes_are_not_foreign(nvml: Nvml) -> None:
    fake_nvml.configure([fake_nvml.gpu(0, pids=(11,))])
    pool = pool_of(discover(nvml, lambda pid: pid == 11), busy_policy="avoid")
    assert pool.fits(1, 1)


def test_allowed_by_index_uuid_and_cuda_visible_devices(nvml: Nvml) -> None:
    fake_nvml.configure([fake_nvml.gpu(i) for i in range(4)])
    gpus = discover(nvml, not_ours)
    pool = pool_of(gpus, allowed=("1", gpus[3].uuid))
    assert [g.index for g in pool.gpus] == [1, 3]
    narrowed = DevicePool(1, GpuConfig(allowed=("1", gpus[3].uuid)), nvml=True, cuda_visible="3")
    narrowed.update(gpus)
    assert [g.index for g in narrowed.gpus] == [3]
    hidden = DevicePool(1, GpuConfig(), nvml=True, cuda_visible="")
    hidden.update(gpus)
    assert not hidden.has_gpus


def test_without_nvml_only_a_study_that_accepts_cpu_slots_gets_one_for_gpus() -> None:
    pool = DevicePool(2)
    # Asking for a GPU, without cpu_fallback: no CPU slot (it was handed one, silently).
    assert not pool.fits(1, 1)
    assert pool.acquire("s", 0, 1, 1) is None
    assert pool.free == 2
    a = pool.acquire("s", 0, 1, 1, cpu_fallback=True)
    b = pool.acquire("s", 1, 0, 1)
    assert a is not None
    assert b is not None
    assert a.devices == () == b.devices
    assert not pool.fits(1, 1, cpu_fallback=True)  # full
    assert pool.acquire("s", 2, 0, 1) is None
    pool.release(a)
    assert pool.free == 1


def test_a_study_that_could_never_get_its_gpus_is_told_why_and_how_to_fix_it(
    nvml: Nvml,
) -> None:
    bare = DevicePool(2)
    assert bare.gpu_refusal(0) is None
    refusal = bare.gpu_refusal(1)
    assert refusal is not None
    assert refusal.startswith("asks for 1 GPU per trial; this daemon has no GPU (NVML is not")
    assert "cpu_fallback = true" in refusal
    assert bare.gpu_refusal(1, cpu_fallback=True) is None
    assert bare.placement(1, cpu_fallback=True)["kind"] == "cpu"
    assert bare.placement(1)["kind"] == "none"
    assert bare.placement(0) == {"kind": "cpu", "reason": "gpus_per_trial = 0"}

    two = pool_of(discover(nvml, not_ours))
    assert two.gpu_refusal(2) is None
    assert two.placement(2) == {"kind": "gpu", "reason": "asks for 2 GPUs per trial"}
    too_many = two.gpu_refusal(3, cpu_fallback=True)
    assert too_many is not None
    assert too_many.startswith("asks for 3 GPUs per trial; this daemon may use 2")

    none_allowed = pool_of(discover(nvml, not_ours), allowed=["7"])
    refusal = none_allowed.gpu_refusal(1)
    assert refusal is not None
    assert "no GPU it may use (NVML sees 2; [gpu] allowed" in refusal


def test_cpu_studies_and_gpu_studies_use_separate_capacity(nvml: Nvml) -> None:
    pool = pool_of(discover(nvml, not_ours), cpu=1)
    cpu = pool.acquire("c", 0, 0, 1)
    g0 = pool.acquire("g", 0, 1, 1)
    g1 = pool.acquire("g", 1, 1, 1)
    assert cpu is not None
    assert cpu.devices == ()
    assert g0 is not None
    assert g1 is not None
    assert g0.devices != g1.devices
    assert not pool.fits(0, 1)
    assert not pool.fits(1, 1)
    view = pool.view()
    assert view["cpu_slots"]["holders"] == [{"slot": 0, "study": "c", "trial": 0}]


def test_a_trial_that_ran_out_of_memory_is_placed_where_more_is_free(nvml: Nvml) -> None:
    # Two trials share a GPU; trial 1 runs out of memory on GPU 0 with its half (8 GiB). Its
    # retry goes to GPU 1, where more than that is free; another trial still packs onto GPU 0.
    fake_nvml.configure([fake_nvml.gpu(0, used_mib=9000), fake_nvml.gpu(1)])
    pool = pool_of(discover(nvml, not_ours))
    first = pool.acquire("s", 0, 1, 2)
    oom = pool.acquire("s", 1, 1, 2)
    assert first
    assert oom
    assert oom.devices == first.devices
    pool.release(oom)
    assert pool.note_oom("s", 1, oom.devices, 0.5) == 8192
    assert pool.oom_note("s", 1) == 8192
    assert pool.view()["oom_notes"] == [{"study": "s", "trial": 1, "had_mib": 8192}]
    retry = pool.acquire("s", 1, 1, 2)
    assert retry
    assert retry.devices != first.devices
    other = pool.acquire("s", 2, 1, 2)
    assert other
    assert other.devices == first.devices


def test_an_oom_note_is_only_a_preference(nvml: Nvml) -> None:
    # Every GPU had as much as the trial had (one whole GPU each): the retry, with its halved
    # batch, goes where it would have gone anyway.
    pool = pool_of(discover(nvml, not_ours))
    slot = pool.acquire("s", 0, 1, 1)
    assert slot
    pool.release(slot)
    assert pool.note_oom("s", 0, slot.devices, 1.0) == 16384
    again = pool.acquire("s", 0, 1, 1)
    assert again
    assert again.devices == slot.devices
    assert pool.note_oom("s", 0, ("GPU-unknown",), 1.0) is None
