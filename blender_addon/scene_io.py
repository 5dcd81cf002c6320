"""Scene I/O: trajectories from and to Blender cameras, the scene's depth and a render of a camera
(results come into the scene through scene_import.py).

Plain functions (no operators needed to call them). Trajectory items are dicts
``{"K": (3,3), "c2w": (4,4), "width": W, "height": H, "frame": int | None}`` in the engine's
convention (OpenCV camera-to-world, K in pixels, integer pixel centres); engine world = Blender world.
"""

from __future__ import annotations

import os

import bpy
import mathutils
import numpy as np

from . import camera_convert
from .errors import AddonError
from .scene_import import Created, worldstereo_collection

FORMAT_NAME = "worldstereo-trajectory"  # ws_engine/trajectory_io/worldstereo.py
FORMAT_VERSION = 1
_GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL"}


# ----------------------------------------------------------------------------------------------
# trajectories
# ----------------------------------------------------------------------------------------------
def trajectory_from_animation(
    scene, cam_obj, step: int = 1, frame_start: int | None = None, frame_end: int | None = None
) -> list[dict]:
    """One item per ``step``-th frame of ``[frame_start, frame_end]`` (default: the scene's range) of an
    animated camera, read with ``scene.frame_set`` + ``matrix_world``; the current frame is restored."""
    camera_convert.check_perspective(cam_obj)
    start = scene.frame_start if frame_start is None else int(frame_start)
    end = scene.frame_end if frame_end is None else int(frame_end)
    if int(step) < 1:
        raise AddonError(f"The frame step must be 1 or more, got {step}.")
    if end < start:
        raise AddonError(f"The frame range {start}..{end} is empty; set an end frame after the start frame.")
    current, subframe = scene.frame_current, scene.frame_subframe
    items = []
    try:
        for frame in range(start, end + 1, int(step)):
            scene.frame_set(frame)
            items.append(dict(camera_convert.camera_to_opencv(cam_obj, scene), frame=frame))
    finally:
        scene.frame_set(current, subframe=subframe)
    return items


def trajectory_from_cameras(objects, scene=None) -> list[dict]:
    """One item per camera object in ``objects`` (others ignored), ordered by name, at the current
    frame. All share the scene's render size."""
    scene = scene if scene is not None else bpy.context.scene
    if scene == bpy.context.scene:
        bpy.context.view_layer.update()  # matrix_world of objects moved since the last evaluation
    cams = sorted((o for o in objects if o is not None and o.type == "CAMERA"), key=lambda o: o.name)
    if not cams:
        raise AddonError("No camera is selected: select the cameras of the path (they are used in name order).")
    return [dict(camera_convert.camera_to_opencv(cam, scene), frame=scene.frame_current) for cam in cams]


def _size_of(items: list[dict]) -> tuple[int, int]:
    if not items:
        raise AddonError("The trajectory has no cameras.")
    sizes = {(int(i["width"]), int(i["height"])) for i in items}
    if len(sizes) != 1:
        raise AddonError(f"The cameras have different image sizes {sorted(sizes)}; one trajectory needs one size.")
    return sizes.pop()


def _numbers(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def trajectory_to_json(items: list[dict], fps: float) -> dict:
    """The project's ``worldstereo`` trajectory format (a JSON-ready dict) of trajectory items.

    One shared ``K`` when all frames have the same intrinsics, else a ``K`` per frame; the Blender
    frame numbers go to ``meta.blender_frames``.
    """
    width, height = _size_of(items)
    Ks = [np.asarray(i["K"], dtype=np.float64) for i in items]
    shared = all(np.array_equal(K, Ks[0]) for K in Ks)
    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "convention": "opencv_c2w",
        "pixel_center": "integer",
        "camera_model": "pinhole",
        "width": width,
        "height": height,
        "fps": float(fps),
    }
    if shared:
        data["K"] = _numbers(Ks[0])
    data["frames"] = [{"c2w": _numbers(i["c2w"]), **({} if shared else {"K": _numbers(K)})} for i, K in zip(items, Ks)]
    frames = [i.get("frame") for i in items]
    meta = {"generator": "WorldStereo Blender add-on"}
    if all(f is not None for f in frames):
        meta["blender_frames"] = [int(f) for f in frames]
    data["meta"] = meta
    return data


def _matrix(value, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.empty(0)
    if a.shape != shape or not np.isfinite(a).all():
        raise AddonError(f"The trajectory's {what} is not a finite {shape[0]}x{shape[1]} matrix.")
    return a


def trajectory_from_json(data: dict) -> list[dict]:
    """Trajectory items from the ``worldstereo`` format (what ``trajectory_to_json`` and the engine write).

    Raises AddonError for other formats (convert them with the engine) and malformed files.
    """
    if isinstance(data, str):
        import json

        try:
            data = json.loads(data)
        except ValueError as exc:
            raise AddonError(f"The trajectory is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise AddonError(
            f"This is not a WorldStereo trajectory (its 'format' is not '{FORMAT_NAME}'); convert it with the engine first."
        )
    version = str(data.get("version", FORMAT_VERSION)).split(".")[0]
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise AddonError(
            f"The trajectory has format version {data.get('version')!r}; this add-on reads version {FORMAT_VERSION}. Update the add-on."
        )
    if data.get("convention", "opencv_c2w") != "opencv_c2w":
        raise AddonError(f"The trajectory's convention {data.get('convention')!r} is not supported (only 'opencv_c2w').")
    if data.get("camera_model", "pinhole") != "pinhole":
        raise AddonError(
            f"The trajectory's camera model is {data.get('camera_model')!r}; Blender cameras here are pinhole (perspective)."
        )
    centre = data.get("pixel_center", "integer")
    if centre not in ("integer", "half"):
        raise AddonError(f"The trajectory's 'pixel_center' must be 'integer' or 'half', got {centre!r}.")
    try:
        width, height = int(data["width"]), int(data["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AddonError("The trajectory has no integer 'width' and 'height'.") from exc
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise AddonError("The trajectory has no 'frames' (a list of {'c2w': 4x4, ...}).")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    numbers = meta.get("blender_frames")
    numbers = numbers if isinstance(numbers, list) and len(numbers) == len(frames) else [None] * len(frames)
    items = []
    for i, (f, number) in enumerate(zip(frames, numbers)):
        if "K" not in f and "K" not in data:
            raise AddonError(f"Frame {i} of the trajectory has no 'K' and there is no shared 'K'.")
        K = _matrix(f.get("K", data.get("K")), (3, 3), f"K of frame {i}").copy()
        if centre == "half":
            K[0, 2] -= 0.5
            K[1, 2] -= 0.5
        if "c2w" not in f:
            raise AddonError(f"Frame {i} of the trajectory has no 'c2w'.")
        c2w = _matrix(f["c2w"], (4, 4), f"c2w of frame {i}")
        items.append({"K": K, "c2w": c2w, "width": width, "height": height, "frame": number})
    return items


# ----------------------------------------------------------------------------------------------
# animated camera
# ----------------------------------------------------------------------------------------------
def _fcurves(id_data):
    """The F-curves of an ID's action (Blender 4.4+ slotted actions and older ones)."""
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return []
    try:
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
        return list(bag.fcurves) if bag is not None else []
    except (ImportError, AttributeError):
        return list(ad.action.fcurves)


def _linear(id_data) -> None:
    for fc in _fcurves(id_data):
        for key in fc.keyframe_points:
            key.interpolation = "LINEAR"


def create_animated_camera(context, items: list[dict], name: str = "WorldStereo Camera"):
    """A new camera object with one keyframe per item (frame ``scene.frame_start + index``): pose
    always, lens and shift where they change. Sets the scene's resolution and pixel aspect to the
    trajectory's (scene-wide in Blender), makes it the scene camera if there is none, and extends the
    frame range to cover it. Returns the object, in the "WorldStereo" collection."""
    from mathutils import Matrix

    scene = context.scene
    width, height = _size_of(items)
    ratios = [float(np.asarray(i["K"])[1, 1] / np.asarray(i["K"])[0, 0]) for i in items]
    if max(ratios) - min(ratios) > 1e-6 * max(ratios):
        raise AddonError("The trajectory's fy/fx ratio changes between frames; Blender's pixel aspect is one per scene.")
    pa = camera_convert.pixel_aspect_for(items[0]["K"])
    lens = [camera_convert.lens_settings(i["K"], width, height, pa) for i in items]
    sensor = min(s["sensor"] for s in lens)
    if sensor != camera_convert.DEFAULT_SENSOR:
        lens = [camera_convert.lens_settings(i["K"], width, height, pa, sensor) for i in items]
    poses = [camera_convert.matrix_world_from_c2w(i["c2w"]) for i in items]
    r = scene.render
    saved = (r.resolution_x, r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y,
             scene.frame_end, scene.camera)  # fmt: skip
    created = Created()
    try:
        coll = worldstereo_collection(context, created)
        cam = created.add(bpy.data.cameras.new(name))
        obj = created.add(bpy.data.objects.new(name, cam))
        coll.objects.link(obj)
        r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
        r.pixel_aspect_x, r.pixel_aspect_y = pa
        obj.rotation_mode = "XYZ"
        animated = [key for key in ("lens", "shift_x", "shift_y") if len({round(s[key], 9) for s in lens}) > 1]
        previous = None
        for index, (settings, M) in enumerate(zip(lens, poses)):
            frame = scene.frame_start + index
            camera_convert.apply_lens(cam, settings)
            location, rotation, _ = Matrix(M).decompose()
            euler = rotation.to_euler("XYZ") if previous is None else rotation.to_euler("XYZ", previous)
            obj.location, obj.rotation_euler, previous = location, euler, euler
            obj.keyframe_insert("location", frame=frame)
            obj.keyframe_insert("rotation_euler", frame=frame)
            for key in animated:
                cam.keyframe_insert(key, frame=frame)
        for id_data in (obj, cam):
            if id_data.animation_data is not None:
                created.add(id_data.animation_data.action)
                _linear(id_data)
        scene.frame_end = max(scene.frame_end, scene.frame_start + len(items) - 1)
        if scene.camera is None:
            scene.camera = obj
        scene.frame_set(scene.frame_current)
        return obj
    except Exception:
        created.undo()
        (r.resolution_x, r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y,
         scene.frame_end) = saved[:6]  # fmt: skip
        if scene.camera is None and saved[6] is not None:
            scene.camera = saved[6]
        raise


# ----------------------------------------------------------------------------------------------
# depth and render of a camera
# ----------------------------------------------------------------------------------------------
def _world_triangles(depsgraph) -> tuple[np.ndarray, np.ndarray]:
    """All renderable triangles of the evaluated scene in world space: vertices (V,3), triangles (T,3)."""
    verts, tris, offset = [], [], 0
    for inst in depsgraph.object_instances:
        obj = inst.object
        if obj.type not in _GEOMETRY_TYPES or obj.original.hide_render:
            continue
        try:
            mesh = obj.to_mesh()
        except RuntimeError:
            continue
        try:
            if mesh is None or not len(mesh.polygons):
                continue
            mesh.calc_loop_triangles()
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
            mesh.vertices.foreach_get("co", co)
            tri = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
            mesh.loop_triangles.foreach_get("vertices", tri)
            M = np.array(inst.matrix_world, dtype=np.float64)
            verts.append(co.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3])
            tris.append(tri.reshape(-1, 3) + offset)
            offset += len(co) // 3
        finally:
            obj.to_mesh_clear()
    if not verts:
        return np.empty((0, 3)), np.empty((0, 3), dtype=np.int64)
    return np.concatenate(verts), np.concatenate(tris)


def depth_from_scene(context, cam_info: dict, width: int, height: int) -> np.ndarray:
    """Depth (H,W) float32 of an OpenCV camera (``cam_info`` K for this size, c2w) in the evaluated
    scene: z along the camera's axis, 0 where no renderable geometry is hit.

    One world-space BVH tree of all renderable triangles, one ``ray_cast`` per pixel centre.
    """
    from mathutils.bvhtree import BVHTree

    width, height = int(width), int(height)
    K = np.asarray(cam_info["K"], dtype=np.float64)
    c2w = np.asarray(cam_info["c2w"], dtype=np.float64)
    verts, tris = _world_triangles(context.evaluated_depsgraph_get())
    if len(tris) == 0:
        raise AddonError(
            "There is nothing in front of the camera to take depth from (no visible geometry); turn off the depth prior or add geometry."
        )
    tree = BVHTree.FromPolygons(verts.tolist(), tris.tolist(), all_triangles=True)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    rays = pix @ np.linalg.inv(K).T @ c2w[:3, :3].T  # z-component along the camera axis = 1
    lengths = np.linalg.norm(rays, axis=1)
    dirs = (rays / lengths[:, None]).tolist()
    origin = c2w[:3, 3].tolist()
    cast = tree.ray_cast
    dist = np.array([hit[3] if hit[3] is not None else 0.0 for hit in (cast(origin, d) for d in dirs)], dtype=np.float64)
    depth = (dist / lengths).reshape(height, width).astype(np.float32)  # distance along the ray / |ray| = z
    if not (depth > 0).any():
        raise AddonError(
            "There is nothing in front of the camera to take depth from (no geometry is hit); turn off the depth prior or aim the camera at the scene."
        )
    return depth


def equirect_directions(width: int, height: int) -> np.ndarray:
    """Unit ray directions (H,W,3) of an equirectangular image in the camera frame, the engine's mapping
    (OpenCV axes): pixel centre (u + 0.5, v + 0.5); longitude atan2(x, z) across the width (the centre
    column looks along +z), latitude asin(y) down the height (+y is down: the top row looks up)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    lon = ((u + 0.5) / width - 0.5) * 2 * np.pi
    lat = ((v + 0.5) / height - 0.5) * np.pi
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)


def panorama_depth_from_scene(context, c2w, width: int, height: int) -> np.ndarray:
    """Ray distances (H,W) float32 of an equirectangular panorama taken with OpenCV pose ``c2w`` (4,4):
    0 where no renderable geometry is hit."""
    from mathutils.bvhtree import BVHTree

    c2w = np.asarray(c2w, dtype=np.float64)
    verts, tris = _world_triangles(context.evaluated_depsgraph_get())
    if len(tris) == 0:
        raise AddonError("There is no visible geometry around the camera to take depth from; turn off the depth prior or add geometry.")
    tree = BVHTree.FromPolygons(verts.tolist(), tris.tolist(), all_triangles=True)
    dirs = (equirect_directions(int(width), int(height)).reshape(-1, 3) @ c2w[:3, :3].T).tolist()
    origin = c2w[:3, 3].tolist()
    cast = tree.ray_cast
    dist = np.array([hit[3] if hit[3] is not None else 0.0 for hit in (cast(origin, d) for d in dirs)], dtype=np.float32)
    return dist.reshape(int(height), int(width))


def render_panorama_image(context, cam_obj, path: str, height: int, samples: int = 32) -> str:
    """Render a 2:1 equirectangular panorama (Cycles, CPU) at ``cam_obj``'s position and rotation (its
    scale removed) to a PNG at ``path``: the engine's equirectangular camera with the first camera's c2w
    (the centre column looks where the camera looks, the top row straight up). Scene settings are restored."""
    scene = context.scene
    context.view_layer.update()
    loc, rot, _ = cam_obj.matrix_world.decompose()
    data = bpy.data.cameras.new("WorldStereo panorama camera")
    data.type, data.panorama_type = "PANO", "EQUIRECTANGULAR"
    tmp = bpy.data.objects.new("WorldStereo panorama camera", data)
    scene.collection.objects.link(tmp)

    def setup():
        tmp.matrix_world = mathutils.Matrix.LocRotScale(loc, rot, None)
        r = scene.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = 2 * int(height), int(height), 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0

    return _render_still(scene, tmp, setup, path, samples, "the panorama")


def render_condition_image(context, cam_obj, path: str, width: int, height: int, samples: int = 32) -> str:
    """Render camera ``cam_obj`` at ``width`` x ``height`` to a PNG at ``path`` with Cycles on the CPU
    (``samples`` per pixel, denoised; about 2 s for 512x288 on two cores). EEVEE and Workbench need
    an OpenGL context: in background mode EEVEE falls back to software GL (~50 s), hence Cycles.

    The render matches the camera's K rescaled per axis to this size (as the engine rescales a
    trajectory): a temporary copy of the camera carries that K. Scene settings are restored.
    """
    camera_convert.check_perspective(cam_obj)
    scene = context.scene
    context.view_layer.update()  # matrix_world of objects moved since the last evaluation
    info = camera_convert.camera_to_opencv(cam_obj, scene)
    sx, sy = width / info["width"], height / info["height"]
    K = info["K"].copy()
    K[0, 0], K[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    tmp = bpy.data.objects.new("WorldStereo render camera", cam_obj.data.copy())
    scene.collection.objects.link(tmp)
    return _render_still(scene, tmp, lambda: camera_convert.apply_opencv_to_camera(tmp, scene, K, info["c2w"], width, height), path, samples,
                         "the condition image")  # fmt: skip


def _render_still(scene, tmp, setup, path: str, samples: int, what: str) -> str:
    """Render ``scene`` through the temporary camera object ``tmp`` (after ``setup()`` places it and sets
    the resolution) with Cycles on the CPU to an 8-bit PNG at ``path``. Render settings and the scene
    camera are restored, and ``tmp`` and its camera data are removed, whatever happens."""
    r, cycles = scene.render, getattr(scene, "cycles", None)
    settings = ["resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y", "engine",
                "filepath", "use_border", "film_transparent"]  # fmt: skip
    saved = {k: getattr(r, k) for k in settings}
    saved_image = {k: getattr(r.image_settings, k) for k in ("file_format", "color_mode", "color_depth")}
    saved_cycles = {k: getattr(cycles, k) for k in ("samples", "device", "use_denoising")} if cycles else {}
    saved_camera = scene.camera
    try:
        setup()
        scene.camera = tmp
        r.engine = "CYCLES"
        if cycles:
            cycles.samples, cycles.device, cycles.use_denoising = (int(samples), "CPU", True)
        r.use_border, r.film_transparent = False, False
        (r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth) = "PNG", "RGB", "8"
        r.filepath = os.path.abspath(path)
        result = bpy.ops.render.render(write_still=True, scene=scene.name)
        if "FINISHED" not in result or not os.path.isfile(path):
            raise AddonError(f"Rendering {what} failed ({result}); render it yourself and pick the image file.")
        return path
    finally:
        scene.camera = saved_camera
        for k, v in saved.items():
            setattr(r, k, v)
        for k, v in saved_image.items():
            setattr(r.image_settings, k, v)
        for k, v in saved_cycles.items():
            setattr(cycles, k, v)
        bpy.data.batch_remove([tmp, tmp.data])
