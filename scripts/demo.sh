#!/usr/bin/env bash
# The demo: set-up, a daemon of your own in the background, the digits study submitted and
# waited for, its best configuration, and the daemon stopped again (also on Ctrl-C or failure).
# Exits non-zero if any step failed or the study did not complete.
#   HPOD_DEMO_KEEP=1 scripts/demo.sh   keeps the state folder (store, trial logs, checkpoints)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

# The venv first on PATH: the daemon runs the study's `python train.py` with the daemon's PATH,
# and that python must be the one with torch. NOTIFY_SOCKET unset: started from a systemd
# unit's shell, the daemon would otherwise send READY=1 for that unit.
export PATH="$ROOT/.venv/bin:$PATH"
export VIRTUAL_ENV="$ROOT/.venv"
unset NOTIFY_SOCKET HPOD_SOCKET

# A short folder: a Unix socket path may have at most 107 bytes.
WORK="$(mktemp -d /tmp/hpod-demo.XXXXXX)"
SOCK="$WORK/hpod.sock"
STATE="$WORK/state"
LOG="$WORK/daemon.log"
DAEMON_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo "demo: stopping the daemon (pid $DAEMON_PID)" >&2
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        # It stops its trials with their grace period first; give it that, then insist.
        for _ in $(seq 1 300); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            echo "demo: the daemon did not stop within 30 s: SIGKILL" >&2
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
            rc=1
        fi
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if ((rc != 0)); then
        echo "demo: FAILED (exit $rc); the daemon's log ends with:" >&2
        tail -n 30 "$LOG" >&2 2>/dev/null || true
    fi
    if [[ "${HPOD_DEMO_KEEP:-0}" == 1 || rc -ne 0 ]]; then
        echo "demo: kept $WORK (daemon.log, state/)" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "demo: starting hpod serve on $SOCK (log: $LOG)" >&2
hpod serve --socket "$SOCK" --state-dir "$STATE" --cpu-slots 2 >"$LOG" 2>&1 &
DAEMON_PID=$!

# Wait for the socket file (bounded), then for an answer to ping.
for _ in $(seq 1 600); do
    [[ -S "$SOCK" ]] && break
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo "demo: the daemon exited before opening its socket" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ ! -S "$SOCK" ]]; then
    echo "demo: no socket at $SOCK after 60 s" >&2
    exit 1
fi
hpodctl --socket "$SOCK" ping

# submit + wait, in two steps so that the study's id is known for `best` afterwards.
SUBMITTED="$(hpodctl --socket "$SOCK" submit examples/digits/study.toml --json)"
STUDY="$(printf '%s' "$SUBMITTED" | python -c 'import json, sys; print(json.load(sys.stdin)["study"])')"
echo "demo: submitted study $STUDY (digits-mlp); waiting for it to end" >&2
hpodctl --socket "$SOCK" wait "$STUDY" --timeout 600

echo
echo "== hpodctl best $STUDY"
hpodctl --socket "$SOCK" best "$STUDY"
echo
echo "== hpodctl best $STUDY --json"
hpodctl --socket "$SOCK" best "$STUDY" --json
