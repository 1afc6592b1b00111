#!/usr/bin/env bash
# A trial that is not Python: it reports with `hpodctl report key=value ...` and reads the
# decision word (CONTINUE, PAUSE or STOP) that hpodctl prints on stdout.
#
#   bash trial.sh X Y     # the study passes {x} and {y}; by hand, any two numbers
#
# loss = (x - 0.3)^2 + (y + 0.2)^2 + 1/step, for step = HPOD_RESUME_FROM+1 .. HPOD_MAX_RESOURCE
# (5 outside hpod). On PAUSE or STOP (and on SIGTERM, at the end of the step) it writes
# state.txt into HPOD_CHECKPOINT_DIR and exits 0.
set -euo pipefail

x=${1:-0}
y=${2:-0}
start=${HPOD_RESUME_FROM:-0}
end=${HPOD_MAX_RESOURCE:-5}
sleep_s=${TRIAL_SLEEP:-0}

terminated=0
trap 'terminated=1' TERM   # only record: the loop saves and exits at the end of the step

report() {
    if [[ -z "${HPOD_SOCKET:-}" ]]; then
        echo CONTINUE   # by hand, with or without hpodctl installed
        return
    fi
    # hpodctl reads HPOD_SOCKET, HPOD_STUDY, HPOD_TRIAL and HPOD_TOKEN from the environment.
    hpodctl report "$@"
}

save_state() {
    if [[ -n "${HPOD_CHECKPOINT_DIR:-}" ]]; then
        mkdir -p "$HPOD_CHECKPOINT_DIR"
        printf 'step=%s loss=%s\n' "$1" "$2" >"$HPOD_CHECKPOINT_DIR/state.txt.tmp"
        mv -f "$HPOD_CHECKPOINT_DIR/state.txt.tmp" "$HPOD_CHECKPOINT_DIR/state.txt"  # atomic
    fi
}

if [[ "$start" -gt 0 && -f "${HPOD_CHECKPOINT_DIR:-/nonexistent}/state.txt" ]]; then
    echo "resumed: $(cat "$HPOD_CHECKPOINT_DIR/state.txt")"
fi

step=$start
loss=nan
while [[ "$step" -lt "$end" ]]; do
    step=$((step + 1))
    if [[ "$sleep_s" != 0 ]]; then
        # In the background + wait, so a SIGTERM is handled at once rather than after sleep.
        sleep "$sleep_s" & wait $! || true
    fi
    loss=$(awk -v x="$x" -v y="$y" -v k="$step" \
        'BEGIN { printf "%.10g", (x - 0.3)^2 + (y + 0.2)^2 + 1 / k }')
    decision=$(report "step=$step" "loss=$loss")
    echo "step $step loss $loss -> $decision"
    case "$decision" in
        CONTINUE) ;;
        PAUSE | STOP) break ;;
        *)
            echo "trial.sh: unexpected decision '$decision' from hpodctl" >&2
            exit 1
            ;;
    esac
    if [[ "$terminated" == 1 ]]; then
        break
    fi
done
save_state "$step" "$loss"
