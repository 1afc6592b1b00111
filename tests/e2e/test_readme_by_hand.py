"""The README's "A first study by hand" block, pasted into a shell as one block: the daemon it
starts in the background is waited for (`hpodctl ping --wait`), so `submit` never races it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def test_the_hand_run_block_runs_as_pasted() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A first study by hand", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None
    text = block.group(1)
    assert "hpodctl ping --wait" in text
    assert text.index("hpodctl ping --wait") < text.index("hpodctl submit")
    root = tempfile.mkdtemp(prefix="hpod")
    try:
        # The same block on a socket and a state folder of the test's own; this interpreter's
        # environment in place of `. .venv/bin/activate`.
        text = text.replace("/tmp/hpod.sock", f"{root}/s").replace(
            "~/.local/state/hpod", f"{root}/state"
        )
        text = text.replace(". .venv/bin/activate\n", "")
        script = "set -e\ntrap 'kill %1 2>/dev/null; wait' EXIT\n" + text
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
        }
        env.pop("HPOD_SOCKET", None)
        res = subprocess.run(
            ["bash", "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pong from hpod" in res.stdout
    assert "state     completed" in res.stdout
    assert "objective" in res.stdout  # hpodctl best quadratic-1
