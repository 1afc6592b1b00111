"""Fixtures of the daemon's service tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpod.daemon.store import Store


@pytest.fixture
def root() -> Iterator[Path]:
    """A short folder (a Unix socket path in it stays under the 108-byte limit), removed after."""
    path = Path(tempfile.mkdtemp(prefix="hpod"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(root: Path) -> Iterator[Store]:
    """A real store in ``root/state``, closed after."""
    with Store.open(root / "state") as opened:
        yield opened
