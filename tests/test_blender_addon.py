"""The Blender add-on's tests (tests/blender) run in "Blender's Python": .venv-blender with bpy from
PyPI (scripts/setup_blender.sh), apart from this engine venv because bpy pins numpy<2. This test runs
that suite as a subprocess, with this interpreter as the engine the add-on starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLENDER_PYTHON = Path(os.environ.get("BLENDER_PYTHON", ROOT / ".venv-blender" / "bin" / "python"))


@pytest.mark.skipif(not BLENDER_PYTHON.is_file(), reason=f"no Blender test Python at {BLENDER_PYTHON}: run scripts/setup_blender.sh")
def test_blender_addon_suite():
    env = dict(os.environ, WORLDSTEREO_PYTHON=sys.executable)
    out = subprocess.run([str(BLENDER_PYTHON), "-m", "pytest", "tests/blender", "-q", "-rs", "-p", "no:cacheprovider", "--confcutdir", "tests/blender"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, check=False)  # fmt: skip
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-12000:] + out.stderr[-4000:]
    assert " passed" in out.stdout, out.stdout[-2000:]
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("COMFYUI_PATH" in line for line in skips), skips  # only the real-server tests may skip
