"""A trial's log kept under its ``[report] log_limit``: past the limit, cut to its tail.

The daemon measures each running trial's ``stdout.log`` and ``stderr.log`` every few seconds
(hpod.daemon.disk.POLL_SECONDS). One that has grown past the limit keeps its last half: that tail
is copied to the head of the file, after a line saying how much was cut, and the file is
truncated (``ftruncate``) behind it. The trial writes through a descriptor opened with
``O_APPEND`` (hpod.daemon.runner), so its next write lands at the new end; nothing needs to be
reopened or signalled.

It is an approximation, and these are its edges:

- a log may pass the limit by what the trial writes between two looks (a few seconds);
- bytes the trial writes while the tail is being copied are copied too, but those written in the
  instant between the last look at the size and the truncation are lost;
- a reader (``hpodctl logs``) that reads during the cut may see the tail twice or a piece of it;
- a trial that reopened its log itself without ``O_APPEND`` keeps writing at its old offset, past
  the new end, and leaves a hole (zeros) in the file.

As everywhere below ``studies/`` (hpod.daemon.statetree), the log is reached without following a
link and cut only when it is a regular file of the study's owner with one link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpod.core.sizes import format_size
from hpod.daemon.statetree import Ids, walk_dir
from hpod.errors import HpodError

_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20
# How many times the copy follows a trial that keeps writing while it is cut, before it cuts.
_CATCH_UP = 4


def cut_to_tail(fd: int, limit: int) -> int:
    """If the file ``fd`` is longer than ``limit``, keep its last ``limit // 2`` bytes (after a
    line that says so) and drop the rest; the number of bytes dropped (0: it was short enough)."""
    size = os.fstat(fd).st_size
    if size <= limit:
        return 0
    keep = limit // 2
    start = size - keep
    note = (
        f"=== hpod cut {format_size(start)} of this log here: it had passed its log_limit of "
        f"{format_size(limit)} ([report] log_limit); what follows is its last part ===\n"
    ).encode()
    # The tail may start mid-line: begin it at the next line, where one comes soon.
    head = os.pread(fd, min(keep, 4096), start)
    newline = head.find(b"\n")
    if 0 <= newline < len(head) - 1:
        start += newline + 1
    dropped = start
    os.pwrite(fd, note, 0)
    at = len(note)
    end = size
    # A forward copy to lower offsets is safe where source and target overlap: every chunk is
    # read before anything at or after it is written.
    for _ in range(_CATCH_UP):
        while start < end:
            chunk = os.pread(fd, min(_CHUNK, end - start), start)
            if not chunk:
                break
            os.pwrite(fd, chunk, at)
            start += len(chunk)
            at += len(chunk)
        grown = os.fstat(fd).st_size
        if grown <= end:
            break
        end = grown  # the trial wrote meanwhile: copy that too
    os.ftruncate(fd, at)
    return dropped


def cut_trial_logs(
    top: Path, trial_dir: Path, ids: Ids | None, limit: int, streams: tuple[str, ...]
) -> dict[str, int]:
    """Cut each of a trial's logs that is past ``limit`` (see :func:`cut_to_tail`); the bytes
    dropped by stream. A folder or log the daemon will not use, or one that is missing, is left
    alone: the trial's start refuses it, and hpodctl logs says why."""
    cut: dict[str, int] = {}
    try:
        dir_fd, _trusted = walk_dir(top, trial_dir, ids, create=False)
    except (OSError, HpodError):
        return cut
    try:
        for stream in streams:
            try:
                fd = os.open(f"{stream}.log", _FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                want = os.geteuid() if ids is None else ids.uid
                if not stat.S_ISREG(st.st_mode) or st.st_uid != want or st.st_nlink != 1:
                    continue
                dropped = cut_to_tail(fd, limit)
            except OSError:
                continue
            finally:
                os.close(fd)
            if dropped:
                cut[stream] = dropped
    finally:
        os.close(dir_fd)
    return cut


def cut_logs(
    runs: list[tuple[Path, Path, Ids | None, int]], streams: tuple[str, ...]
) -> list[dict[str, int]]:
    """:func:`cut_trial_logs` for each ``(top, trial_dir, ids, limit)``, in one call (the daemon
    makes it on a worker thread every poll: one hand-off for every running trial, not one each).
    A log is looked at with one ``lstat`` of its path; only one that seems past its limit is
    opened as :func:`cut_trial_logs` opens it, which decides (a link, or someone else's file,
    is never cut), so a poll of a thousand trials costs two thousand ``lstat`` calls."""
    out: list[dict[str, int]] = []
    for top, trial_dir, ids, limit in runs:
        over = False
        # A string join, not a Path one: this thread holds the GIL the loop wants meanwhile.
        folder = os.fspath(trial_dir)
        for stream in streams:
            try:
                over = over or os.lstat(f"{folder}/{stream}.log").st_size > limit
            except OSError:
                continue
        out.append(cut_trial_logs(top, trial_dir, ids, limit, streams) if over else {})
    return out
