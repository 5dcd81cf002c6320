#!/usr/bin/env bash
# The main job on the embedded default (CPU, no weights): install into .venv, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
