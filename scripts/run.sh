#!/usr/bin/env bash
# The main job: set up a virtual environment (first run only) and run the Process
# Dispatcher on the embedded defaults (SQLite + broker-less transport under
# $PD_STATE_DIR, default ~/.local/state/process-dispatcher). Extra arguments go to
# pd-dispatcher, e.g. `bash scripts/run.sh --config etc/dispatcher.yml`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/pd-dispatcher ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e .
fi

exec .venv/bin/pd-dispatcher "$@"
