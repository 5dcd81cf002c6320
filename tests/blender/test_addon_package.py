"""The extension zip: built and validated with Blender's own tool, installed with
``bpy.ops.extensions.package_install_files``, enabled, its operators, panel and settings registered,
and its operators reporting users' mistakes as errors in Blender's UI."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[2]
MODULE = "bl_ext.user_default.worldstereo"
OPERATORS = ("generate", "cancel", "export_trajectory", "import_trajectory", "import_result")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_blender_addon.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


@pytest.fixture(scope="module")
def installed(addon_zip):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=str(addon_zip), repo="user_default", enable_on_install=True)
    assert MODULE in bpy.context.preferences.addons, "the extension did not install and enable"
    yield bpy.context.preferences.addons[MODULE]
    bpy.ops.preferences.addon_disable(module=MODULE)


def test_zip_holds_the_addon_with_real_files(addon_zip):
    with zipfile.ZipFile(addon_zip) as z:
        names = set(z.namelist())
        assert {"blender_manifest.toml", "__init__.py", "operators.py", "panel.py", "generate.py", "jobs.py", "scene_io.py",
                "camera_convert.py", "scene_import.py", "workflow_format.py", "comfyui_backend.py", "depth_points.py", "websocket.py"} <= names  # fmt: skip
        workflow = [n for n in names if n.startswith("workflows/") and n.endswith(".json")]
        assert workflow and json.loads(z.read(workflow[0]))["nodes"]  # copied as a file, not a link
        assert not any(n.endswith((".pyc", ".so", ".pyd", ".whl")) for n in names)  # pure Python


def test_installs_enables_and_registers(installed):
    for name in OPERATORS:
        assert getattr(bpy.ops.worldstereo, name).idname() == f"WORLDSTEREO_OT_{name}"
    assert hasattr(bpy.types, "VIEW3D_PT_worldstereo")
    assert bpy.types.VIEW3D_PT_worldstereo.bl_category == "WorldStereo"
    prefs = installed.preferences
    assert prefs.backend == "CLI" and prefs.comfyui_url == "http://127.0.0.1:8188"
    scene = bpy.context.scene
    assert scene.worldstereo.size == 512 and scene.worldstereo.trajectory_source == "ANIMATION"


def _empty_scene():
    """Remove every object (read_factory_settings would also unload the installed extension)."""
    bpy.data.batch_remove(list(bpy.data.objects) + list(bpy.data.cameras) + list(bpy.data.meshes))
    return bpy.context.scene


def _camera(name="Cam", kind="PERSP"):
    data = bpy.data.cameras.new(name)
    data.type = kind
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def test_operators_report_mistakes_in_the_ui(installed, tmp_path):
    scene = _empty_scene()
    scene.camera = None
    with pytest.raises(RuntimeError, match="no active camera"):
        bpy.ops.worldstereo.generate()
    scene.camera = _camera("Ortho", "ORTHO")
    with pytest.raises(RuntimeError, match="orthographic.*perspective camera"):
        bpy.ops.worldstereo.generate()
    scene.camera = _camera()
    scene.frame_end = 10
    installed.preferences.python_path = str(tmp_path / "no" / "python")
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.worldstereo.generate()
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.worldstereo.import_trajectory(filepath=str(tmp_path / "missing.json"))
    with pytest.raises(RuntimeError, match="no WorldStereo result"):
        bpy.ops.worldstereo.import_result(filepath=str(tmp_path))
    assert [o.name for o in scene.objects] == ["Ortho", "Cam"]  # nothing was added by the failed runs


def test_export_and_import_trajectory_operators(installed, tmp_path):
    scene = _empty_scene()
    cam = _camera()
    scene.camera = cam
    scene.frame_start, scene.frame_end = 1, 5
    for frame, x in ((1, 0.0), (5, 2.0)):
        cam.location = (x, -5.0, 1.0)
        cam.keyframe_insert("location", frame=frame)
    path = tmp_path / "path.json"
    assert bpy.ops.worldstereo.export_trajectory(filepath=str(path), format="worldstereo") == {"FINISHED"}
    data = json.loads(path.read_text())
    assert len(data["frames"]) == 5
    assert bpy.ops.worldstereo.import_trajectory(filepath=str(path)) == {"FINISHED"}
    made = [o for o in scene.objects if o.type == "CAMERA" and o is not cam]
    assert len(made) == 1
    scene.frame_set(5)
    assert tuple(round(v, 4) for v in made[0].matrix_world.translation) == (2.0, -5.0, 1.0)
