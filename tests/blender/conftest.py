"""Fixtures for the Blender add-on's tests. They run in "Blender's Python" (bpy, numpy<2, no torch);
anything that needs the engine runs as a subprocess of the engine's interpreter (env WORLDSTEREO_PYTHON).
In the engine's venv (no bpy) nothing here is collected; tests/test_blender_addon.py runs this suite
in Blender's Python instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Never write into the user's Blender config: set before bpy is imported.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="ws-blender-user-"))

try:
    import bpy
except ImportError:  # the engine's venv: nothing here can run (a module-level importorskip in a
    bpy = None  # conftest aborts `pytest tests/blender` instead of skipping), so collect nothing
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # import the add-on as the package `blender_addon`
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def clean_scene():
    """An empty factory scene; yields bpy.context.scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene


@pytest.fixture(scope="session")
def engine_python() -> str:
    """The engine's interpreter (env WORLDSTEREO_PYTHON); skip where unset or without ws_engine."""
    python = os.environ.get("WORLDSTEREO_PYTHON", "")
    if not python:
        pytest.skip("WORLDSTEREO_PYTHON is not set (the engine's interpreter, e.g. .venv/bin/python)")
    check = subprocess.run([python, "-c", "import ws_engine"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        pytest.skip(f"{python} cannot import ws_engine: {check.stderr.strip()[-300:]}")
    return python


@pytest.fixture(scope="session")
def run_engine(engine_python):
    """run_engine(code, *args) -> stdout: run `code` in the engine's interpreter (check=True)."""

    def run(code: str, *args) -> str:
        out = subprocess.run([engine_python, "-c", code, *map(str, args)], capture_output=True, text=True,
                             cwd=ROOT, timeout=600, check=False)  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(f"engine subprocess failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return out.stdout

    return run


@pytest.fixture(scope="session")
def run_engine_json(run_engine):
    """run_engine_json(code, *args) -> the JSON the code prints as its last stdout line."""

    def run(code: str, *args):
        return json.loads(run_engine(code, *args).strip().splitlines()[-1])

    return run
