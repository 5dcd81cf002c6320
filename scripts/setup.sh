#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras, e.g. `scripts/setup.sh test`.
# torch==2.13.0 is installed first when torch is missing, so pip does not pull a multi-GB CUDA build.
# pip's output goes to .venv/install.log and is shown only when something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/install.log
: > "$log"
run() { "$@" >>"$log" 2>&1 || { cat "$log"; echo "setup failed: $*" >&2; exit 1; }; }
.venv/bin/python -c "import torch" 2>/dev/null || run .venv/bin/python -m pip install "torch==2.13.0"
extras=${1:-}
if [ -n "$extras" ]; then
  run .venv/bin/python -m pip install -e ".[${extras}]"
else
  run .venv/bin/python -m pip install -e .
fi
