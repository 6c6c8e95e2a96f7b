#!/usr/bin/env bash
# README step 1: install everything into .venv, then run the main job on the bundled corpus.
#   --install-only   stop after installing (what CI does before running the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
[ "${1:-}" = "--install-only" ] && exit 0
bash tools/main_job.sh
