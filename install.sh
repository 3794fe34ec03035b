#!/usr/bin/env bash
# Set up recbole-compress in the current Python environment (a venv is recommended).
# A CPU build of torch is installed first where torch is missing: a plain `pip install torch` (or a package that
# asks for torch) would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install "torch==2.13.0" \
        || "$PY" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -e ".[test]"
