#!/bin/sh
# bench/multiobjective.py in bench/.venv-quality (Optuna's NSGA-II), with Syne Tune 0.13's MOASHA
# from bench/.venv-syne (bench/run-syne.sh --setup makes it; without it that row is left out and
# the output says so). Neither is a dependency of hpod.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-quality"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import optuna, hpod" 2>/dev/null; then
    "$venv/bin/pip" install --quiet -e "$here/.." optuna
fi
sh "$here/run-syne.sh" --setup || echo "run-multiobjective.sh: could not make bench/.venv-syne" >&2
exec "$venv/bin/python" "$here/multiobjective.py" "$@"
