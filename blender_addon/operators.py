"""The add-on's operators: thin glue over generate.py, scene_io.py and jobs.py.

Every error a user can cause is an AddonError, reported in Blender's UI (never a traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import traceback

import bpy
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import generate, jobs, preferences, scene_io
from .errors import AddonError

_running = {"job": None}  # the one Generate job at a time, for Cancel
TIMER_SECONDS = 0.1
TRAJECTORY_FORMATS = [
    ("worldstereo", "WorldStereo JSON", "The project's trajectory format"),
    ("camera_json", "Official camera.json", "WorldStereo's official format (needs the engine's Python)"),
    ("transforms_json", "transforms.json", "nerfstudio / instant-ngp (needs the engine's Python)"),
]


def _state(context):
    return context.window_manager.worldstereo


def _set_status(context, text: str | None, progress: float | None = None) -> None:
    state = _state(context)
    state.status = text or ""
    if progress is not None:
        state.progress = progress
    workspace = getattr(context, "workspace", None)
    if workspace is not None:
        workspace.status_text_set(f"WorldStereo: {text}" if text else None)
    for area in getattr(context.screen, "areas", []) if getattr(context, "screen", None) else []:
        area.tag_redraw()


def _message(error: Exception) -> str:
    """What the UI shows: an AddonError's own message; anything else in one line (its traceback goes to the console)."""
    if isinstance(error, AddonError):
        return str(error)
    traceback.print_exc()
    return f"WorldStereo failed unexpectedly ({type(error).__name__}: {error}); the details are in the system console."


def _run(op, action, done) -> set:
    """Run ``action()``; report ``done(result)`` or the failure in the UI; the operator's return value."""
    try:
        result = action()
    except Exception as e:  # noqa: BLE001 - every failure becomes a message in the UI
        op.report({"ERROR"}, _message(e))
        return {"CANCELLED"}
    op.report({"INFO"}, done(result))
    return {"FINISHED"}


def _engine_python(context) -> str:
    python = bpy.path.abspath(preferences.get(context).python_path)
    if not python:
        raise AddonError("Set the engine's Python interpreter in the add-on preferences.")
    jobs.check_interpreter(python)
    return python


def _convert_trajectory(python: str, source: str, target: str, fmt: str) -> None:
    """Convert between trajectory formats with the engine (``worldstereo trajectory``)."""
    out = subprocess.run([python, "-m", "ws_engine.cli", "trajectory", source, "--to", fmt, "--out", target, "--progress", "none"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if out.returncode != 0:
        raise AddonError(f"The engine could not convert the trajectory: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")


class WORLDSTEREO_OT_generate(bpy.types.Operator):
    """Generate a video along the cameras with WorldStereo and bring the point cloud and mesh into the scene"""

    bl_idname = "worldstereo.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    _timer = None

    @classmethod
    def poll(cls, context):
        return _running["job"] is None

    def execute(self, context):
        try:
            generate.check_scene(context)
            generate.check_backend(context)
            inputs, first_camera = generate.prepare_inputs(context)
            job = generate.start_job(context, inputs)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message in the UI
            self.report({"ERROR"}, _message(e))
            return {"CANCELLED"}
        _running["job"] = job
        self._camera = first_camera
        _state(context).running = True
        _set_status(context, "starting", 0.0)
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_SECONDS, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = _running["job"]
        if event.type == "ESC" and job is not None:
            job.cancel()
        if event.type != "TIMER" and event.type != "ESC":
            return {"PASS_THROUGH"}
        if job is None:
            return self._finish(context, "Cancelled", {"WARNING"})
        job.poll()
        _set_status(context, job.message or job.state, job.progress)
        if job.state == "running":
            return {"PASS_THROUGH"}
        if job.state == "done":
            try:
                generate.import_results(context, job.result_files, self._camera)
            except Exception as e:  # noqa: BLE001 - import_results has already undone its part
                return self._finish(context, _message(e), {"ERROR"})
            return self._finish(context, "Done: results imported into the 'WorldStereo' collection", {"INFO"})
        if job.state == "cancelled":
            return self._finish(context, "Cancelled; the scene is unchanged", {"WARNING"})
        return self._finish(context, job.message or "The engine failed", {"ERROR"})

    def _finish(self, context, message: str, level: set):
        context.window_manager.event_timer_remove(self._timer)
        _running["job"] = None
        _state(context).running = False
        _set_status(context, None)
        _state(context).status = message
        self.report(level, message)
        return {"FINISHED"} if level == {"INFO"} else {"CANCELLED"}


class WORLDSTEREO_OT_cancel(bpy.types.Operator):
    """Stop the running generation; nothing is imported"""

    bl_idname = "worldstereo.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return _running["job"] is not None

    def execute(self, context):
        _running["job"].cancel()
        return {"FINISHED"}


class WORLDSTEREO_OT_check_engine(bpy.types.Operator):
    """Check that the interpreter exists and has the WorldStereo engine"""

    bl_idname = "worldstereo.check_engine"
    bl_label = "Check Engine"

    def execute(self, context):
        return _run(self, lambda: _engine_python(context), lambda python: f"{python} has the WorldStereo engine")


class WORLDSTEREO_OT_export_trajectory(bpy.types.Operator, ExportHelper):
    """Write the cameras (the active camera's animation or the selected cameras) as a trajectory file"""

    bl_idname = "worldstereo.export_trajectory"
    bl_label = "Export Trajectory"
    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json", options={"HIDDEN"})
    format: bpy.props.EnumProperty(name="Format", items=TRAJECTORY_FORMATS, default="worldstereo")

    def execute(self, context):
        return _run(self, lambda: export_trajectory(context, self.filepath, self.format), lambda path: f"Wrote {path}")


class WORLDSTEREO_OT_import_trajectory(bpy.types.Operator, ImportHelper):
    """Create an animated camera from a trajectory file"""

    bl_idname = "worldstereo.import_trajectory"
    bl_label = "Import Trajectory"
    filter_glob: bpy.props.StringProperty(default="*.json;*.txt", options={"HIDDEN"})

    def execute(self, context):
        return _run(self, lambda: import_trajectory(context, self.filepath), lambda obj: f"Created camera '{obj.name}'")


class WORLDSTEREO_OT_import_result(bpy.types.Operator, ImportHelper):
    """Import a WorldStereo result folder (video.mp4, scene.ply, mesh.glb) into the scene"""

    bl_idname = "worldstereo.import_result"
    bl_label = "Import Result"
    filter_glob: bpy.props.StringProperty(default="*.ply;*.glb;*.mp4;*.json", options={"HIDDEN"})

    def execute(self, context):
        return _run(self, lambda: import_result(context, self.filepath), lambda created: f"Imported {len(created)} item(s)")


# ----------------------------------------------------------------------------------------------
# plain functions behind the file operators
# ----------------------------------------------------------------------------------------------
def export_trajectory(context, filepath: str, fmt: str = "worldstereo") -> str:
    items, _ = generate.sample_cameras(context)
    scene = context.scene
    data = scene_io.trajectory_to_json(items, scene.render.fps / (scene.render.fps_base or 1.0))
    if fmt == "worldstereo":
        _write_json(filepath, data)
        return filepath
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "trajectory.json")
        _write_json(source, data)
        _convert_trajectory(_engine_python(context), source, filepath, fmt)
    return filepath


def import_trajectory(context, filepath: str):
    if not os.path.isfile(filepath):
        raise AddonError(f"The trajectory file {filepath} does not exist.")
    try:
        with open(filepath, encoding="utf-8") as f:
            data = json.load(f)
        items = scene_io.trajectory_from_json(data)
    except (ValueError, KeyError, TypeError, AddonError):
        with tempfile.TemporaryDirectory() as tmp:  # another format: the engine converts it
            target = os.path.join(tmp, "trajectory.json")
            _convert_trajectory(_engine_python(context), filepath, target, "worldstereo")
            with open(target, encoding="utf-8") as f:
                items = scene_io.trajectory_from_json(json.load(f))
    return scene_io.create_animated_camera(context, items, name=os.path.splitext(os.path.basename(filepath))[0])


def import_result(context, path: str) -> list:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    files = {k: os.path.join(folder, name) for k, name in (("point_cloud", "scene.ply"), ("mesh", "mesh.glb"), ("video", "video.mp4"))}
    files = {k: v for k, v in files.items() if os.path.isfile(v)}
    if not files:
        raise AddonError(f"{folder} holds no WorldStereo result (scene.ply, mesh.glb or video.mp4).")
    camera = context.scene.camera if context.scene.camera is not None and context.scene.camera.type == "CAMERA" else None
    return generate.import_results(context, files, camera)


def _write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


CLASSES = (
    WORLDSTEREO_OT_generate, WORLDSTEREO_OT_cancel, WORLDSTEREO_OT_check_engine, WORLDSTEREO_OT_export_trajectory,
    WORLDSTEREO_OT_import_trajectory, WORLDSTEREO_OT_import_result,
)  # fmt: skip


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    job = _running["job"]
    if job is not None:
        job.cancel()
        _running["job"] = None
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
