"""A loop-lag probe for bench/scale.py: on ``HPOD_BENCH_LOOP_PROBE=FILE``, every callback an
asyncio loop runs in this process is timed (``Handle._run``: a task's step, a timer, an I/O
callback), in wall time and in the loop thread's CPU time (which leaves out the time other
processes held the CPU), and at exit FILE gets the longest ones: each over 2 ms with its
wall-clock start, so the bench can leave out the daemon's start (the store's restore, before
it serves). The variable is taken out of the environment: the trials do not inherit it.

Only on the bench's PYTHONPATH; nothing of hpod imports it.
"""

from __future__ import annotations

import os

_OUT = os.environ.pop("HPOD_BENCH_LOOP_PROBE", None)

if _OUT:
    import asyncio.events
    import atexit
    import json
    import time

    _stalls: list[tuple[float, float, str]] = []
    _count = [0, 0.0]
    _orig = asyncio.events.Handle._run

    def _name(cb: object) -> str:
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, asyncio.Task):
            return owner.get_name()
        return getattr(cb, "__qualname__", repr(cb)[:60])

    # HPOD_BENCH_PROFILE=NAME: callbacks whose name holds NAME run under cProfile, and the
    # slowest one's profile is written beside FILE (FILE.prof): where a stall's time went.
    _PROFILE = os.environ.pop("HPOD_BENCH_PROFILE", None)
    _slowest = [0.0]

    def _run(self: asyncio.events.Handle) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        prof = None
        if _PROFILE:
            # Every callback profiled: a task's name may change inside the step (a request's
            # task is named for its method once it has read the line).
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            _orig(self)
        finally:
            if prof is not None:
                prof.disable()
                took = time.thread_time() - c0
                if _PROFILE in _name(self._callback) and took > _slowest[0]:
                    _slowest[0] = took
                    prof.dump_stats(_OUT + ".prof")
            dt = time.perf_counter() - t0
            _count[0] += 1
            _count[1] += dt
            if dt > 0.002:
                cpu = time.thread_time() - c0
                _stalls.append((time.time() - dt, dt * 1e3, cpu * 1e3, _name(self._callback)))

    asyncio.events.Handle._run = _run  # type: ignore[method-assign]

    # The collector's pauses (the loop thread's CPU time), by generation: a loop stall may be
    # one (it runs inside whatever callback allocated), which no profile of its code shows.
    import gc

    _gc: list[tuple[float, float, int]] = []
    _gc_start = [0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_start[0] = time.thread_time()
        else:
            took = (time.thread_time() - _gc_start[0]) * 1e3
            if took > 2.0:
                _gc.append((time.time(), took, info.get("generation", -1)))

    gc.callbacks.append(_on_gc)

    _PID = os.getpid()

    def _dump() -> None:
        # A forked child (the fit worker) runs this at its exit too: only the daemon writes.
        if os.getpid() != _PID:
            return
        with open(_OUT, "w") as f:
            json.dump(
                {"callbacks": _count[0], "busy_s": _count[1], "stalls": _stalls, "gc": _gc}, f
            )

    atexit.register(_dump)

# HPOD_BENCH_TRACEMALLOC=FILE: where the daemon's memory is, as allocated by line (the innermost
# frame of hpod's own code), written at its exit: what a study's size costs, by the line that
# made it. Slows the daemon several times over: read its sizes, not its times.
_MEM_OUT = os.environ.pop("HPOD_BENCH_TRACEMALLOC", None)

if _MEM_OUT:
    import atexit as _atexit
    import tracemalloc

    tracemalloc.start(6)
    _MEM_PID = os.getpid()

    def _mem_dump() -> None:
        if os.getpid() != _MEM_PID:
            return
        snap = tracemalloc.take_snapshot()
        by_line: dict[str, list[int]] = {}
        for stat in snap.statistics("traceback"):
            frames = [f for f in stat.traceback if "/hpod/" in f.filename] or list(stat.traceback)
            inner = frames[-1]
            key = f"{inner.filename.rsplit('/hpod/', 1)[-1]}:{inner.lineno}"
            entry = by_line.setdefault(key, [0, 0])
            entry[0] += stat.size
            entry[1] += stat.count
        with open(_MEM_OUT, "w") as f:
            total = sum(size for size, _ in by_line.values())
            f.write(f"traced {total / 2**20:.1f} MiB\n")
            for key, (size, count) in sorted(by_line.items(), key=lambda kv: -kv[1][0])[:60]:
                f.write(f"{size / 2**20:8.2f} MiB {count:9d}  {key}\n")

    _atexit.register(_mem_dump)
