#!/bin/sh
# Syne Tune 0.13.0's baselines (bench/syne_baselines.py) in their own environment, bench/.venv-syne:
# Syne Tune pins numpy < 1.27, which the Optuna environment of bench/quality.py does not share, and
# it is never a dependency of hpod. scikit-learn is what syne_tune.blackbox_repository (its
# simulator backend for a user-defined blackbox) imports beyond the gpsearchers extra.
#   bench/run-syne.sh --setup     make the environment only
#   bench/run-syne.sh [ARGS]      make it if missing, then run bench/syne_baselines.py ARGS
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-syne"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv.tmp"
    "$venv.tmp/bin/pip" install --quiet "syne-tune[gpsearchers]==0.13.0" scikit-learn
    mv "$venv.tmp" "$venv"
fi
if [ "${1:-}" = "--setup" ]; then
    exit 0
fi
exec "$venv/bin/python" "$here/syne_baselines.py" "$@"
