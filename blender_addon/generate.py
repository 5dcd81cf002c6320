"""The Generate job as plain functions: gather the inputs from the scene, start the engine, import the results.

The modal operator only calls these (and tests call them directly: in background mode timers and
modal events never fire). Nothing here changes the scene until :func:`import_results`, which adds
everything or nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

from . import camera_convert, jobs, scene_import, scene_io
from .errors import AddonError

COLLECTION = "WorldStereo"


# ----------------------------------------------------------------------------------------------
# cameras
# ----------------------------------------------------------------------------------------------
def _check_camera(obj) -> None:
    if obj is None:
        raise AddonError("The scene has no active camera: add a camera and make it the active camera (Ctrl Numpad 0).")
    if obj.type != "CAMERA":
        raise AddonError(f"'{obj.name}' is not a camera.")
    if obj.data.type != "PERSP":
        kind = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(obj.data.type, obj.data.type.lower())
        raise AddonError(f"Camera '{obj.name}' is {kind}; WorldStereo needs a perspective camera (Camera properties > Lens > Type).")


def selected_cameras(context) -> list:
    cams = sorted((o for o in context.selected_objects if o.type == "CAMERA"), key=lambda o: o.name)
    if not cams:
        raise AddonError("No camera is selected: select the cameras of the path (they are used in name order).")
    for cam in cams:
        _check_camera(cam)
    return cams


def frame_count(context) -> int:
    """How many frames the trajectory will have (the panel's preview; no frame is evaluated)."""
    scene, settings = context.scene, context.scene.worldstereo
    if settings.trajectory_source == "SELECTED":
        return sum(1 for o in context.selected_objects if o.type == "CAMERA")
    return len(range(scene.frame_start, scene.frame_end + 1, settings.frame_step))


def check_scene(context) -> None:
    """The cameras the trajectory will come from exist and are perspective (cheap; no frame is evaluated)."""
    if context.scene.worldstereo.trajectory_source == "SELECTED":
        selected_cameras(context)
    else:
        _check_camera(context.scene.camera)


def sample_cameras(context) -> tuple[list[dict], object]:
    """The trajectory items ({K, c2w, width, height, frame}) and the object of the first camera."""
    scene, settings = context.scene, context.scene.worldstereo
    if settings.trajectory_source == "SELECTED":
        cams = selected_cameras(context)
        return scene_io.trajectory_from_cameras(cams), cams[0]
    _check_camera(scene.camera)
    return scene_io.trajectory_from_animation(scene, scene.camera, step=settings.frame_step), scene.camera


def output_size(width: int, height: int, long_side: int, multiple: int = 16) -> tuple[int, int]:
    """(H, W) with the camera's aspect ratio, the long side ``long_side``, both multiples of ``multiple``."""
    scale = long_side / max(width, height)
    return max(multiple, round(height * scale / multiple) * multiple), max(multiple, round(width * scale / multiple) * multiple)


def rescale_K(K, size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """K (3,3) for another image size (W, H), pixel centres at integer coordinates (as the engine rescales)."""
    K = np.array(K, dtype=np.float64)
    sx, sy = size_to[0] / size_from[0], size_to[1] / size_from[1]
    K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
    K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return K


# ----------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------
def output_folder(context) -> Path:
    """The settings' output folder (blend-relative paths resolved; the temp folder for an unsaved file)."""
    raw = context.scene.worldstereo.output_dir or "//worldstereo/"
    if raw.startswith("//") and not bpy.data.filepath:
        return Path(tempfile.gettempdir()) / "worldstereo"
    return Path(bpy.path.abspath(raw))


def prepare_inputs(context, out_dir: Path | None = None) -> tuple[jobs.JobInputs, object]:
    """Everything the engine needs, written to a job folder (trajectory JSON, condition image, depth
    prior), and the first camera's object (where an imported video goes)."""
    scene, settings = context.scene, context.scene.worldstereo
    items, first = sample_cameras(context)
    if len(items) < 2:
        raise AddonError(f"The trajectory has {len(items)} camera(s); WorldStereo needs at least 2 (a longer frame range or more cameras).")
    cam0 = items[0]
    H, W = output_size(cam0["width"], cam0["height"], settings.size)
    out_dir = Path(out_dir) if out_dir is not None else output_folder(context)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="job_", dir=out_dir))
    fps = scene.render.fps / (scene.render.fps_base or 1.0)
    trajectory = work / "trajectory.json"
    trajectory.write_text(json.dumps(scene_io.trajectory_to_json(items, fps), indent=1))
    panorama = settings.image_source == "PANORAMA"
    if settings.image_source == "FILE":
        image = Path(bpy.path.abspath(settings.image_path)) if settings.image_path else None
        if image is None or not image.is_file():
            raise AddonError(f"The condition image '{settings.image_path}' does not exist; pick an image file or choose Render First Camera.")
    elif panorama:
        image = work / "panorama.png"
        current = scene.frame_current
        try:
            if "frame" in cam0 and cam0["frame"] is not None:
                scene.frame_set(int(cam0["frame"]))
            scene_io.render_panorama_image(context, first, str(image), settings.panorama_height)
        finally:
            scene.frame_set(current)
    else:
        image = work / "condition.png"
        current = scene.frame_current
        try:
            if "frame" in cam0 and cam0["frame"] is not None:
                scene.frame_set(int(cam0["frame"]))
            scene_io.render_condition_image(context, first, str(image), W, H)
        finally:
            scene.frame_set(current)
    depth = None
    if settings.use_depth_prior and panorama:
        depth_map = scene_io.panorama_depth_from_scene(context, cam0["c2w"], 2 * settings.panorama_height, settings.panorama_height)
        depth = work / "depth.npy"
        np.save(depth, depth_map.astype(np.float32))
    elif settings.use_depth_prior:
        info = dict(cam0, K=rescale_K(cam0["K"], (cam0["width"], cam0["height"]), (W, H)), width=W, height=H)
        depth_map = scene_io.depth_from_scene(context, info, W, H)
        depth = work / "depth.npy"
        np.save(depth, depth_map.astype(np.float32))
    methods = [m for m, on in (("point_cloud", settings.point_cloud), ("mesh", settings.mesh)) if on]
    inputs = jobs.JobInputs(
        image=str(image), trajectory=str(trajectory), depth=None if depth is None else str(depth), size=(H, W),
        steps=settings.steps, seed=settings.seed, reconstruct=methods, out_dir=str(work / "result"),
        camera_model="equirectangular" if panorama else "perspective",
    )  # fmt: skip
    return inputs, first


def _prefs(context, prefs):
    if prefs is None:
        from . import preferences

        prefs = preferences.get(context)
    return prefs


def check_backend(context, prefs=None) -> None:
    """Fail fast, before any rendering, when the chosen backend cannot run (no interpreter, no engine)."""
    prefs = _prefs(context, prefs)
    if prefs.backend == "COMFYUI":
        if context.scene.worldstereo.image_source == "PANORAMA":
            raise AddonError("Render Panorama runs with the Local Engine backend; the ComfyUI backend's workflow takes a perspective image.")
        return  # the server is checked (with a timeout) when the job starts
    python = bpy.path.abspath(prefs.python_path) if prefs.python_path else ""
    if not python:
        raise AddonError("Set the engine's Python interpreter in the add-on preferences (a virtual environment where WorldStereo is installed).")
    jobs.check_interpreter(python)


def start_job(context, inputs: jobs.JobInputs, prefs=None):
    """Start the engine with the chosen backend; returns a job with poll() / cancel() / state."""
    prefs = _prefs(context, prefs)
    if prefs.backend == "COMFYUI":
        from .comfyui_backend import ComfyJob

        job = ComfyJob(prefs.comfyui_url, inputs, timeout=prefs.timeout)
    else:
        job = jobs.CliJob(bpy.path.abspath(prefs.python_path), inputs, device=getattr(prefs, "device", "auto"))
    job.start()
    return job


DATA_KINDS = ("objects", "meshes", "pointclouds", "materials", "node_groups", "images", "collections", "cameras")


def _ids() -> set:
    return {(kind, id_.as_pointer()) for kind in DATA_KINDS for id_ in getattr(bpy.data, kind, ())}


def import_results(context, files: dict, first_camera=None) -> list:
    """Bring the job's files into the scene: all of them, or nothing if any import fails."""
    settings = context.scene.worldstereo
    wanted = []
    if files.get("point_cloud") and settings.point_cloud:
        wanted.append(("point_cloud", files["point_cloud"]))
    if files.get("mesh") and settings.mesh:
        wanted.append(("mesh", files["mesh"]))
    if files.get("video") and settings.video != "NONE" and (first_camera is not None or settings.video == "SEQUENCE"):
        wanted.append(("video", files["video"]))
    for _, path in wanted:
        if not os.path.isfile(path):
            raise AddonError(f"The result file {path} is missing; nothing was imported. Run Generate again.")
    before, created = _ids(), []
    try:
        for kind, path in wanted:
            if kind == "point_cloud":
                created.append(scene_import.import_point_cloud(context, path, "WorldStereo Points"))
            elif kind == "mesh":
                created.append(scene_import.import_mesh(context, path, "WorldStereo Mesh"))
            else:
                created.append(scene_import.import_video(context, path, first_camera, mode=settings.video))
    except Exception:
        undo_imports(context, before, created, first_camera)
        raise
    return created


def undo_imports(context, before: set, created: list, camera=None) -> None:
    """Remove everything added since ``before`` (an _ids() snapshot): datablocks, a camera background, a strip."""
    for thing in created:
        if isinstance(thing, bpy.types.Image) and camera is not None:
            scene_import.remove_video(camera, thing)
        elif thing is not None and not isinstance(thing, bpy.types.ID):  # a sequencer strip
            editor = context.scene.sequence_editor
            strips = getattr(editor, "strips", None)
            (strips if strips is not None else editor.sequences).remove(thing)
    new = [id_ for kind in DATA_KINDS for id_ in getattr(bpy.data, kind, ()) if (kind, id_.as_pointer()) not in before]
    if new:
        bpy.data.batch_remove(new)


def cam_info(obj, scene) -> dict:
    """The OpenCV camera of an object (K, c2w, width, height)."""
    return camera_convert.camera_to_opencv(obj, scene)
