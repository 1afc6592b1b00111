"""Wake-ups of an event loop after a batch of the store's commits, made once for the batch.

Each ``loop.call_soon_threadsafe`` writes the loop's self-pipe: a system call, during which the
loop thread takes the GIL, and the writer then waits for it back. Settling a batch of answers
one wake-up each made as many hand-offs as answers; at 1,000 trials reporting, batches of a
hundred commits came out of it (bench/scale_concurrent.py). Inside :func:`batch` the calls are
queued and made as one per loop when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

_local = threading.local()

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe(fn, *args)``, or queued for the end of the current batch."""
    pending: dict[asyncio.AbstractEventLoop, list[Call]] | None = getattr(_local, "pending", None)
    if pending is None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(fn, *args)
        return
    pending.setdefault(loop, []).append((fn, args))


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Queue this thread's :func:`call_soon` calls until the block ends, then make them, in
    order, with one wake-up of each loop."""
    pending: dict[asyncio.AbstractEventLoop, list[Call]] = {}
    _local.pending = pending
    try:
        yield
    finally:
        _local.pending = None
        for loop, calls in pending.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_run_all, calls)


def _run_all(calls: list[Call]) -> None:
    for fn, args in calls:
        fn(*args)
