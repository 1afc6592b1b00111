#!/bin/sh
# Syne Tune's baselines (bench/syne_baselines.py) in their own environments: Syne Tune 0.13.0 in
# bench/.venv-syne (it pins numpy < 1.27, which the Optuna environment of bench/quality.py does not
# share), Syne Tune 0.16.0 in bench/.venv-syne16; neither is a dependency of hpod. scikit-learn is
# what syne_tune.blackbox_repository (its simulator backend for a user-defined blackbox) imports
# beyond the gpsearchers extra, and 0.16.0's also imports huggingface_hub.
#   bench/run-syne.sh [--version 0.16.0] --setup     make the environment only
#   bench/run-syne.sh [--version 0.16.0] [ARGS]      make it if missing, then run
#                                                    bench/syne_baselines.py ARGS
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=0.13.0
if [ "${1:-}" = "--version" ]; then
    version=$2
    shift 2
fi
case "$version" in
    0.13.0) venv="$here/.venv-syne"; extra="" ;;
    0.16.0) venv="$here/.venv-syne16"; extra="huggingface_hub" ;;
    *) echo "run-syne.sh: version 0.13.0 or 0.16.0, not $version" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv.tmp"
    python3 -m venv "$venv.tmp"
    # pip as a module: the venv is moved into place, and its scripts' #! lines name the old path.
    "$venv.tmp/bin/python" -m pip install --quiet "syne-tune[gpsearchers]==$version" scikit-learn $extra
    mv "$venv.tmp" "$venv"
fi
if [ "${1:-}" = "--setup" ]; then
    exit 0
fi
exec "$venv/bin/python" "$here/syne_baselines.py" "$@"
