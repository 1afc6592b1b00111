#!/usr/bin/env bash
# Idempotent set-up of a fresh checkout: .venv with hpod (editable), its examples and its tests.
# Needs only python3 >= 3.11 (or $PYTHON). Quiet when all is well, loud when anything fails.
# A second run with an unchanged pyproject.toml is a no-op of a few milliseconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.hpod-setup"
TORCH_VERSION="2.13.0"

trap 'echo "setup.sh: FAILED at line $LINENO (exit $?)" >&2' ERR

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup.sh: $PYTHON not found; install Python 3.11 or newer (or set PYTHON=...)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: $("$PYTHON" --version 2>&1) is too old: hpod needs Python >= 3.11" >&2
    exit 1
fi

want="$(cat pyproject.toml) torch==$TORCH_VERSION"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "setup.sh: installing into $VENV (quiet; errors are shown)" >&2
"${PIP[@]}" install -q --upgrade pip
# torch first and pinned, so that the examples extra's bare `torch` takes this one. `==2.13.0`
# also matches the local CPU build `2.13.0+cpu`, which pip prefers where one is served (a local
# wheel folder); from PyPI alone it is PyPI's CUDA build, several GB: to get the CPU build
# there, point pip at the CPU index with HPOD_TORCH_INDEX=https://download.pytorch.org/whl/cpu.
"${PIP[@]}" install -q "torch==$TORCH_VERSION" \
    ${HPOD_TORCH_INDEX:+--extra-index-url "$HPOD_TORCH_INDEX"}
"${PIP[@]}" install -q -e ".[examples,test]"

"$VENV/bin/python" -c 'import hpod, torch, sklearn' # what the examples and tests import
printf '%s' "$want" >"$STAMP"
echo "setup.sh: ready ($("$VENV/bin/python" --version), torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
