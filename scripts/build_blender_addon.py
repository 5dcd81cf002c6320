"""Build the installable Blender extension zip with Blender's own extension tool, then validate it.

    python scripts/build_blender_addon.py [--out dist]

Run it with a Python that has ``bpy`` (``pip install bpy==5.0.1``), whose package carries Blender's
extension tool (``bl_pkg/cli/blender_ext.py``); or name the tool with ``--blender-ext``. The source
folder ``blender_addon/`` links two files from the rest of the repository (the ComfyUI workflow
converter and the example workflow the ComfyUI backend submits); they are copied as files into a
staging folder, so the zip is self-contained. Prints the zip's path.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "blender_addon"


def find_blender_ext() -> Path:
    """Blender's extension tool inside the installed ``bpy`` package (without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bpy is not installed in this Python: pip install bpy==5.0.1 (Python 3.11), or pass --blender-ext PATH")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise SystemExit("Blender's extension tool (bl_pkg/cli/blender_ext.py) was not found in the bpy package; pass --blender-ext PATH")


def build(out_dir: Path, tool: Path) -> Path:
    manifest = tomllib.loads((SOURCE / "blender_manifest.toml").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / manifest["id"]
        shutil.copytree(SOURCE, staging, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        partial = Path(tmp) / target.name
        run(tool, "build", "--source-dir", str(staging), "--output-filepath", str(partial))
        run(tool, "validate", str(partial))
        shutil.move(partial, target)  # only a validated zip replaces an earlier one
    return target


def run(tool: Path, *args: str) -> None:
    out = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"blender_ext {args[0]} failed:\n{out.stdout}{out.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)")
    parser.add_argument("--blender-ext", type=Path, help="Blender's blender_ext.py (default: the one in the installed bpy)")
    args = parser.parse_args()
    print(build(args.out, args.blender_ext or find_blender_ext()))


if __name__ == "__main__":
    main()
