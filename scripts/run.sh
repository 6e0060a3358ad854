#!/usr/bin/env bash
# The main job (README):
#
#   bash scripts/run.sh [--no-example] [pd-dispatcher options...]
#
# 1. Creates .venv and installs the project on first use.
# 2. Starts pd-dispatcher on the embedded defaults: SQLite and a broker-less
#    transport under $PD_STATE_DIR (default ~/.local/state/process-dispatcher), the
#    `local` provisioner starting pd-eeagent processes (with supervisord) on this
#    machine when processes need slots.
# 3. Unless --no-example: defines `example` (a shell loop that prints the time every
#    5 s, run without a shell of ours: /bin/sh is the program), schedules the
#    process `example-1`, waits until it is 500-RUNNING and prints its output.
# 4. Keeps the dispatcher in the foreground; Ctrl-C (or SIGTERM) stops it. The
#    local agents keep running and are adopted by the next start; `pd-cli process
#    terminate example-1` lets the pool shrink back to nothing.
#
# Extra arguments go to pd-dispatcher, e.g. `bash scripts/run.sh --config etc/dispatcher.yml`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

example=1
args=()
for arg in "$@"; do
    if [ "$arg" = "--no-example" ]; then
        example=0
    else
        args+=("$arg")
    fi
done

log() { printf '[run.sh] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/pd-dispatcher ] || [ ! -x .venv/bin/pd-cli ]; then
    log "creating .venv and installing process-dispatcher"
    python3 -m venv .venv
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install --quiet -e .
fi

.venv/bin/pd-dispatcher "${args[@]}" &
dispatcher=$!
stop() {
    local status=0
    kill -TERM "$dispatcher" 2>/dev/null || true
    wait "$dispatcher" 2>/dev/null || status=$?
    exit "$status"
}
trap stop INT TERM

if [ "$example" = 1 ]; then
    cli=(.venv/bin/pd-cli)
    for arg in "${args[@]}"; do
        case "$arg" in --config|--config=*) cli+=("${args[@]}"); break ;; esac
    done
    ok=0
    for _ in $(seq 1 100); do
        kill -0 "$dispatcher" 2>/dev/null || { log "pd-dispatcher exited"; wait "$dispatcher"; exit 1; }
        if "${cli[@]}" --timeout 2 definition list >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    if [ "$ok" = 1 ]; then
        "${cli[@]}" definition describe example >/dev/null 2>&1 \
            || "${cli[@]}" definition create example --exec /bin/sh \
                --arg -c --arg 'while true; do echo "example-1 alive at $(date -u +%T)"; sleep 5; done' \
                >/dev/null
        "${cli[@]}" process schedule example-1 --definition example >/dev/null
        log "scheduled example-1; waiting for a local agent to run it"
        # (no spinner: the dispatcher's log shares this terminal)
        if "${cli[@]}" process wait example-1 --state RUNNING --timeout 120 --no-spinner; then
            sleep 1
            "${cli[@]}" process describe example-1
            log "its output (pd-cli process logs example-1 --follow):"
            "${cli[@]}" process logs example-1 || true
            log "try: .venv/bin/pd-cli dump; .venv/bin/pd-cli process terminate example-1"
        else
            log "example-1 did not reach 500-RUNNING; see .venv/bin/pd-cli dump"
        fi
    else
        log "the dispatcher did not answer; see its log above"
    fi
fi
log "pd-dispatcher running (pid $dispatcher); Ctrl-C stops it"
status=0
wait "$dispatcher" || status=$?
exit "$status"
