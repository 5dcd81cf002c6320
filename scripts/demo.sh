#!/usr/bin/env bash
# The main job on the embedded default (CPU, no weights): install into .venv, then run `worldstereo demo`.
# Arguments go to the demo (e.g. --frames 24 --size 384 --out output/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/worldstereo demo "$@"
