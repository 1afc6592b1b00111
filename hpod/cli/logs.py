"""``hpodctl logs STUDY TRIAL -f``: a trial's log as it grows, until the trial is over.

The daemon's ``logs`` method answers a log's last lines (read safely, hpod.daemon.statetree), not
a byte range, so following is done here: every :data:`POLL_S` the last :data:`WINDOW` lines are
read again and the lines past the ones already printed are printed (:func:`new_lines`). A line
is printed once it is complete (its newline written); a last line without one is printed when the
trial is over. It follows through a pause (a promoted trial's next run writes to the same log)
and stops once the trial has ended (completed, stopped or failed) or its study has.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from hpod.client import Client

POLL_S = 0.5  # how often the log is read again
WINDOW = 1000  # lines read each time: more new lines than these between two reads are cut
_FINAL = frozenset({"completed", "stopped", "failed"})


def new_lines(seen: Sequence[str], window: Sequence[str]) -> tuple[list[str], bool]:
    """The lines of ``window`` (the log's last lines now) past ``seen`` (its last lines before),
    and whether some may be missing between them (more came than a window holds).

    The new window is the old one moved on by the lines added: the first shift ``d`` whose old
    lines ``seen[d:]`` start the new window tells how many. Lines that repeat (the same text over
    and over) may make a shift look smaller than it was: then fewer are printed, never one twice.
    """
    for shift in range(len(seen) + 1):
        kept = len(seen) - shift
        if kept <= len(window) and list(window[:kept]) == list(seen[shift:]):
            return list(window[kept:]), kept == 0 and bool(seen)
    return list(window), True  # unreachable: shift == len(seen) always matches


def follow(client: Client, study: str, trial: int, stream: str, tail: int) -> int:
    """Print the log's last ``tail`` lines, then each new line, until the trial is over."""
    out = sys.stdout
    complete, partial = _split(client.logs(study, trial, stream=stream, tail=max(tail, WINDOW)))
    for line in complete[-tail:] if tail else []:
        out.write(line + "\n")
    out.flush()
    seen = complete
    while True:
        over = _is_over(client, study, trial)
        complete, partial = _split(client.logs(study, trial, stream=stream, tail=WINDOW))
        fresh, gap = new_lines(seen, complete)
        if gap and fresh:
            out.write("[hpodctl: more lines came than one read holds; some are not shown]\n")
        for line in fresh:
            out.write(line + "\n")
        out.flush()
        seen = complete
        if over:
            if partial:
                out.write(partial + "\n")
                out.flush()
            return 0
        time.sleep(POLL_S)


def _is_over(client: Client, study: str, trial: int) -> bool:
    """Whether the trial has ended, or its study (read before the log, so its last lines are
    read after the end)."""
    if str(client.trial(study, trial).get("state")) in _FINAL:
        return True
    return str(client.study(study).get("state")) in _FINAL


def _split(text: str) -> tuple[list[str], str]:
    """The complete lines, and the last one if its newline has not been written yet."""
    lines = text.split("\n")
    return lines[:-1], lines[-1]
