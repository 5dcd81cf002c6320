"""Shared fixtures: the example scenes in ../shared (skipped cleanly where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WORLDSTEREO_SHARED", ROOT.parent / "shared"))
EXAMPLES = SHARED / "data" / "worldstereo-examples"


def example_scenes() -> list[Path]:
    """Folders of the official example scenes, or [] where ../shared is absent."""
    if not EXAMPLES.is_dir():
        return []
    return sorted(p for p in EXAMPLES.iterdir() if (p / "camera.json").is_file())


@pytest.fixture
def examples() -> list[Path]:
    scenes = example_scenes()
    if not scenes:
        pytest.skip(f"example scenes not found at {EXAMPLES} (set WORLDSTEREO_SHARED)")
    return scenes


@pytest.fixture(autouse=True)
def _seed():
    try:  # tests/blender run in Blender's Python, which has no torch
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
