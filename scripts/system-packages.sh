#!/usr/bin/env bash
# The Debian packages some tests use (a real browser, tmux, a real Slurm with munge), installed
# with apt-get where this runs as root on a machine that has it. Idempotent: packages already
# there are not asked for again, so a second run costs a few milliseconds. Never fatal: where they
# cannot be installed (not root, no apt-get, no registry), the tests that need them skip and say
# why.
set -uo pipefail

PACKAGES=(chromium tmux slurm-wlm munge)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
((${#missing[@]})) || exit 0

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-packages.sh: not installing ${missing[*]} (needs root and apt-get); their tests skip" >&2
    exit 0
fi
echo "system-packages.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/tmp/hpod-apt.log 2>&1; then
    echo "system-packages.sh: apt-get failed (see /tmp/hpod-apt.log); the tests that need ${missing[*]} skip" >&2
fi
exit 0
