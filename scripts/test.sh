#!/usr/bin/env bash
# The checks every change must pass: set-up, then ruff, mypy --strict and pytest.
# Every check runs even when an earlier one fails, so one run shows everything; the exit
# status is non-zero if any failed. Extra arguments go to pytest (e.g. -k config -x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/system-packages.sh  # chromium, tmux, slurm-wlm, munge for the tests that use them

failed=()
run() {
    echo "==> $*" >&2
    if ! "$@"; then
        failed+=("$1")
    fi
}

run .venv/bin/ruff check .
run .venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
run .venv/bin/mypy            # files and --strict come from pyproject.toml
# pytest exits 5 when it collected no tests: that is a failure too, not a pass.
run .venv/bin/pytest -q "$@"

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed" >&2
