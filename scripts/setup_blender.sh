#!/usr/bin/env bash
# Create .venv-blender: "Blender's Python" for the add-on's tests (bpy from PyPI, pytest), apart from
# the engine's .venv because bpy 5.0.1 pins numpy<2 and the engine needs numpy 2. bpy 4.2-5.0 needs
# Python 3.11. The requirements are pyproject.toml's `blender-test` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BLENDER_TEST_PYTHON:-python3.11}
command -v "$PY" >/dev/null || { echo "setup_blender: $PY not found; the Blender add-on tests need Python 3.11 (bpy 5.0.1)" >&2; exit 1; }
[ -x .venv-blender/bin/python ] || "$PY" -m venv .venv-blender
log=.venv-blender/install.log
: > "$log"
reqs=$("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["blender-test"]))')
.venv-blender/bin/python -c "import bpy, pytest" 2>/dev/null || {
  printf '%s\n' "$reqs" > .venv-blender/requirements.txt
  .venv-blender/bin/python -m pip install -r .venv-blender/requirements.txt >>"$log" 2>&1 || { cat "$log"; echo "setup_blender failed" >&2; exit 1; }
}
