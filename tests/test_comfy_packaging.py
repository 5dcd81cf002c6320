"""Packaging of the node pack: Comfy Registry metadata, requirements.txt in step with pyproject.toml,
and comfy-cli's `comfy node validate` (run for real where comfy-cli is installed: the dev extra)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


import pytest

from tests.comfy_pack import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_requirements_txt_is_pyproject_without_torch():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = [line for line in lines if line and not line.startswith("#")]
    expected = [r for r in PYPROJECT["project"]["dependencies"] if _name(r) != "torch"]
    assert listed == expected


def test_comfy_registry_metadata():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "WorldStereo"
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert PYPROJECT["project"]["version"] and PYPROJECT["project"]["name"] == "comfyui-worldstereo"
    assert any(_name(r) == "comfy-cli" for r in PYPROJECT["project"]["optional-dependencies"]["dev"])


def _comfy_cli() -> str | None:
    """comfy-cli's command: $COMFY_CLI, beside this Python (an unactivated venv), or on PATH."""
    beside = Path(sys.executable).parent / "comfy"
    return os.environ.get("COMFY_CLI") or (str(beside) if beside.is_file() else None) or shutil.which("comfy")


@pytest.mark.skipif(_comfy_cli() is None, reason="comfy-cli is not installed (pip install -e '.[dev]') or named by COMFY_CLI")
def test_comfy_node_validate_passes(tmp_path):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # the working tree as it would be published
        if (ROOT / name).is_file():
            (tmp_path / "pack" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, tmp_path / "pack" / name)
    out = subprocess.run([_comfy_cli(), "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=tmp_path / "pack",
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All validation checks passed" in out.stdout + out.stderr, out.stdout + out.stderr
