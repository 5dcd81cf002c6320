#!/usr/bin/env bash
# Install everything the tests need into .venv, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,dev
bash scripts/setup_blender.sh   # .venv-blender: bpy for the add-on's tests (run by tests/test_blender_addon.py)
exec .venv/bin/python -m pytest "$@"
