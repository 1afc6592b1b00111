"""The daemon's side of fits: the busy flag it shares with the real worker process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from hpod.fit import cpu as sched
from hpod.fit.fitter import BUSY_REPORTS_PER_S, LOAD_SECONDS, Fitter


async def _until(condition: Callable[[], bool], what: str) -> None:
    try:
        with anyio.fail_after(10):
            while not condition():
                await anyio.sleep(LOAD_SECONDS / 4)
    except TimeoutError:
        pytest.fail(f"the flag never said {what} in 10 s")


@pytest.mark.anyio
async def test_the_worker_hears_that_reports_come_fast_and_then_that_they_stopped(
    tmp_path: Path,
) -> None:
    fitter = Fitter(lambda: None, flag_dir=tmp_path)
    worker = fitter.worker
    async with anyio.create_task_group() as tg:
        tg.start_soon(fitter._watch_load)
        await worker._start()  # the real worker process, as at a first fit
        flag = worker._flag_path
        # What the worker maps: the same byte, read as its Backoff reads it.
        seen = sched.Backoff(flag=flag)._busy
        assert seen is not None
        assert seen[0] == 0
        per_tick = int(BUSY_REPORTS_PER_S * LOAD_SECONDS * 3)

        async def report_fast() -> None:
            while True:
                for _ in range(per_tick):
                    fitter.count_report()
                await anyio.sleep(LOAD_SECONDS / 2)

        async with anyio.create_task_group() as load:
            load.start_soon(report_fast)
            await _until(lambda: seen[0] == 1, "busy")
            assert worker.busy
            load.cancel_scope.cancel()
        await _until(lambda: seen[0] == 0, "quiet again")
        assert not worker.busy
        tg.cancel_scope.cancel()
    await worker.aclose()
    assert not Path(flag).exists()  # the flag's file goes with the worker


@pytest.mark.anyio
async def test_the_daemon_keeps_the_flag_in_its_state_dir(tmp_path: Path) -> None:
    fitter = Fitter(lambda: None, flag_dir=tmp_path)
    await fitter.worker._start()
    try:
        assert fitter.worker._flag_path == str(tmp_path / "fit-busy")
        assert (tmp_path / "fit-busy").read_bytes() == b"\0"
        assert (tmp_path / "fit-busy").stat().st_mode & 0o777 == 0o600
    finally:
        await fitter.worker.aclose()
    assert not (tmp_path / "fit-busy").exists()
