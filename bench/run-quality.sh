#!/bin/sh
# bench/quality.py in its own environment: Optuna is the benchmark's dependency, not hpod's.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-quality"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -e "$here/.." optuna
fi
exec "$venv/bin/python" "$here/quality.py" "$@"
