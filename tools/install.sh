#!/usr/bin/env bash
# Create a virtual environment (default .venv) and install bigtrain with its test extra.
# torch is pinned to 2.13.0: on PyPI that is the CUDA build for Linux; on CPU-only boxes a CPU wheel
# of the same version installs the same way. Set VENV=... to install elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" -e ".[dev]"
"$VENV/bin/bigtrain" --version
