"""Whether another user can reach this checkout: tests that run code as another user skip when
it cannot (a clone under a 0700 folder such as mktemp -d's), rather than fail on a permission the
code under test never set."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def first_closed(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that users other than its owner cannot search."""
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def skip_unless_others_reach_the_checkout() -> None:
    """Skip, naming the folder, when another user cannot reach the checkout or its interpreter."""
    for path in (REPO, Path(sys.prefix)):
        closed = first_closed(path)
        if closed is not None:
            pytest.skip(
                f"{closed} is not searchable by other users (mode "
                f"{stat.S_IMODE(closed.stat().st_mode):o}), so a process dropped to another user "
                f"cannot reach {path}: clone into a folder others can search (0755) to run this"
            )
