#!/bin/sh
# bench/quality.py in its own environment: Optuna is the benchmark's dependency, not hpod's.
# Syne Tune's rows run in two more, 0.13.0's and 0.16.0's (bench/run-syne.sh); where one cannot be
# made, quality.py says so and leaves those rows out.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-quality"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import optuna, torch, hpod" 2>/dev/null; then
    # torch pinned first: the CPU build on this machine's disk (hpod's DyHPO rows need it), not
    # the several-GB CUDA build a bare `torch` would pull.
    "$venv/bin/pip" install --quiet "torch==2.13.0"
    "$venv/bin/pip" install --quiet -e "$here/.." optuna
fi
sh "$here/run-syne.sh" --setup || echo "run-quality.sh: could not make bench/.venv-syne" >&2
sh "$here/run-syne.sh" --version 0.16.0 --setup ||
    echo "run-quality.sh: could not make bench/.venv-syne16" >&2
exec "$venv/bin/python" "$here/quality.py" "$@"
