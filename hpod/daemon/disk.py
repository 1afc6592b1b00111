"""The state dir's disk: how much room is left, the hold on launching while there is too little,
and the store writes kept in memory until there is room for them.

A full disk is the machine's trouble, not a study's, and it passes: someone deletes a file, a
trial's log is cut to its tail. So the daemon never ends for it, and never marks work failed for
it. While the state dir's filesystem has less free space than ``min_free_disk``, or since a write
failed for want of space, the daemon is *held*: no trial starts, every study not yet ended shows
the reason (``held`` in ``hpodctl ls``/``show``), reads are answered as ever, and a report whose
commit fails is answered ``STORE_FULL`` (not stored, not counted). The trials service polls
:meth:`Disk.poll` every :data:`POLL_SECONDS`; once there is room and every kept write is stored,
the hold lifts by itself.

A write the daemon makes of its own accord (a trial's launch or exit record, a study's state,
its clocks) goes through :meth:`Disk.write`: when the disk is full it is kept, in order, and
written once there is room, so nothing the daemon has decided is lost while the daemon runs. Once
one write is kept, later ones queue behind it (a later update of the same row must not land
first). Nothing kept was ever acknowledged to anyone: a report is acknowledged only once stored.

``state_dir/disk-reserve`` is a few MiB (a quarter of ``min_free_disk``, at most 4 MiB) that the
daemon allocates while there is room and deletes at start-up when the disk is short: SQLite
cannot even open a database in WAL mode on a disk with no free page (it must size its ``-shm``
file), so without it a daemon stopped on a full disk could not come back up held. While the
reserve is missing, the hold lifts only once there is room for ``min_free_disk`` and the reserve
both, so a daemon that used it at start-up never launches into the room it freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from hpod.core.sizes import format_size
from hpod.daemon.store import (
    Op,
    Store,
    TrialRow,
    disk_full,
    insert_trial_op,
    update_study_op,
    update_trial_op,
)
from hpod.errors import StoreFull

log = structlog.get_logger("hpod.daemon")

# How often a held daemon looks at the free space again (and retries its kept writes), and how
# often the trials' logs are measured against their log_limit.
POLL_SECONDS = 2.0
RESERVE_NAME = "disk-reserve"
RESERVE_MAX = 4 * 1024**2
LIFT_FLOOR = 1024**2
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged user could still write on ``path``'s filesystem; None if unknown.

    ``f_bavail``, not ``f_bfree``: on ext4 the blocks kept for root are no room for the trials,
    which run as their owners."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def reserve_size(min_free: int) -> int:
    """The reserve's size for ``min_free_disk``: none when that is 0 (the admin asked for no
    margin), else a quarter of it, at most RESERVE_MAX (what opening the store and a restart's
    first writes take, with room to spare)."""
    return min(RESERVE_MAX, min_free // 4)


def release_reserve(state_dir: Path, min_free: int) -> bool:
    """At start-up, before the store opens: delete the reserve when the disk has less room than
    ``min_free`` (so little that the store may not open); whether it was deleted."""
    free = free_bytes(state_dir)
    if free is None or free >= min_free:
        return False
    try:
        os.unlink(state_dir / RESERVE_NAME)
    except FileNotFoundError:
        return False
    log.warning(
        "disk_reserve_released",
        state_dir=str(state_dir),
        free=format_size(free),
        reserve=format_size(reserve_size(min_free)),
    )
    return True


def _make_reserve(state_dir: Path, size: int) -> None:
    path = state_dir / RESERVE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        # Real pages (posix_fallocate), not a sparse file: deleting it must free them.
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    os.close(fd)


class Disk:
    """The hold on launching and the writes kept for lack of room; one per daemon."""

    def __init__(self, store: Store, state_dir: Path, min_free: int) -> None:
        self.store = store
        self.state_dir = state_dir
        self.min_free = min_free
        # Why nothing starts (the text `hpodctl ls`/`show` show); None: not held.
        self.held: str | None = None
        # Writes that failed for want of room, in the order they were made.
        self.kept: list[tuple[Op, ...]] = []
        self._write_failed = False  # a write failed for room since the hold last lifted
        self._listeners: list[Callable[[bool], None]] = []
        self.reserve = reserve_size(min_free)
        self._keep_reserve()
        self.check()  # a daemon started on a full disk comes up held

    # -- what others hear ------------------------------------------------------------------------

    def listen(self, fn: Callable[[bool], None]) -> None:
        """``fn(held)`` once each time the hold starts (True) or lifts (False)."""
        self._listeners.append(fn)

    def attach(self) -> None:
        """On the daemon's event loop, once it serves: a write that fails for room on the
        store's writer thread (a report's too) holds at once, on this loop."""
        loop = asyncio.get_running_loop()

        def from_writer() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is the daemon
                loop.call_soon_threadsafe(self.noticed_full)

        self.store.on_full = from_writer

    # -- the free space --------------------------------------------------------------------------

    def free(self) -> int | None:
        return free_bytes(self.state_dir)

    @property
    def floor(self) -> int:
        """The free space the hold lifts at once a write failed: min_free_disk, and never less
        than a MiB (else min_free_disk = 0 would launch again into a disk with no room)."""
        return max(self.min_free, LIFT_FLOOR)

    def short(self) -> bool:
        """Whether there is too little room right now (held, or under the floor)."""
        if self.held is not None:
            return True
        free = self.free()
        return free is not None and free < self.floor

    @property
    def needed(self) -> int:
        """The free space under which the daemon holds: min_free_disk, and the reserve's room
        while it is missing (used at start-up, or never made)."""
        missing = self.reserve and not (self.state_dir / RESERVE_NAME).exists()
        return self.min_free + (self.reserve if missing else 0)

    def check(self) -> None:
        """Hold, keep holding (with the free space of now in the reason) or lift."""
        free = self.free()
        if free is None:
            return  # statvfs failed: nothing to go by, nothing changes
        needed = self.needed
        if free < needed:
            cause = f"under min_free_disk ({format_size(self.min_free)})"
            if needed > self.min_free:
                cause = (
                    f"under min_free_disk ({format_size(self.min_free)}) and the daemon's "
                    f"{format_size(self.reserve)} reserve"
                )
        elif self._write_failed and (self.kept or free < self.floor):
            cause = "a write to the store failed for want of room"
        elif self.kept:
            cause = f"{len(self.kept)} writes waiting to be stored"
        else:
            self._lift(free)
            return
        self._hold(
            f"disk full: {format_size(free)} free of the state dir {self.state_dir}, {cause}; "
            "no trial starts until there is room, then the study goes on by itself"
        )

    def noticed_full(self) -> None:
        """A write failed for want of room (its caller got StoreFull): hold at once."""
        self._write_failed = True
        self.check()

    def _hold(self, reason: str) -> None:
        was = self.held
        self.held = reason
        if was is None:
            log.warning("disk_full_hold", reason=reason, kept=len(self.kept))
            self._tell(True)

    def _lift(self, free: int) -> None:
        self._write_failed = False
        if self.held is None:
            return
        self.held = None
        log.info("disk_full_lifted", free=format_size(free), state_dir=str(self.state_dir))
        self._tell(False)

    def _tell(self, held: bool) -> None:
        for fn in self._listeners:
            fn(held)

    # -- writes ----------------------------------------------------------------------------------

    async def write(self, *ops: Op) -> bool:
        """Store ``ops`` atomically, or keep them for when there is room; whether they are
        stored now. Any error other than a full disk is raised, as ``Store.write`` does."""
        if not ops:
            return True
        if self.kept:
            # Behind the kept ones: an update must never land before an earlier one of its row.
            self.kept.append(ops)
            return False
        try:
            await self.store.write(*ops)
        except StoreFull:
            self.kept.append(ops)
            self.noticed_full()
            return False
        return True

    async def insert_trial(self, row: TrialRow) -> bool:
        return await self.write(insert_trial_op(row))

    async def update_trial(self, study_id: str, trial_id: int, **fields: Any) -> bool:
        return await self.write(update_trial_op(study_id, trial_id, **fields))

    async def update_study(self, study_id: str, **fields: Any) -> bool:
        return await self.write(update_study_op(study_id, **fields))

    async def flush(self) -> bool:
        """Store the kept writes, oldest first, as far as the disk lets; whether none is left.

        A kept write that fails for another reason (its row gone) would fail the same way every
        time: it is logged and dropped, so it cannot hold the daemon for ever."""
        while self.kept:
            ops = self.kept[0]
            try:
                await self.store.write(*ops)
            except StoreFull:
                self._write_failed = True
                return False
            except Exception as exc:
                if disk_full(exc):
                    return False
                log.error("kept_write_dropped", error=str(exc), sql=ops[0].sql[:80])
            self.kept.pop(0)
        return True

    async def poll(self) -> None:
        """The watcher's round: store what was kept, look at the free space, and make the
        reserve again once there is room for it."""
        if self.kept:
            stored = len(self.kept)
            if await self.flush():
                log.info("kept_writes_stored", writes=stored)
        self.check()
        if self.held is None:
            self._keep_reserve()

    def _keep_reserve(self) -> None:
        """Make the reserve again once there is room for it above min_free_disk."""
        if not self.reserve or (self.state_dir / RESERVE_NAME).exists():
            return
        free = self.free()
        if free is not None and free >= self.min_free + self.reserve:
            _make_reserve(self.state_dir, self.reserve)

    def forget(self) -> None:
        """At shutdown, after a last :meth:`flush`: what is still kept is lost with the process
        (the store was never told it: a restart goes by what it holds), and the log says so."""
        if self.kept:
            log.warning(
                "kept_writes_lost",
                writes=len(self.kept),
                reason="the disk was still full at shutdown; a restart goes by what is stored",
            )
            self.kept.clear()
