"""Scene I/O: trajectories from and to Blender cameras, the scene's depth and a render of a camera,
and results (point cloud, mesh, video) brought into the scene.

Plain functions (no operators needed to call them). Trajectory items are dicts
``{"K": (3,3), "c2w": (4,4), "width": W, "height": H, "frame": int | None}`` in the engine's
convention (OpenCV camera-to-world, K in pixels, integer pixel centres); engine world = Blender world.
Every import is all-or-nothing: on an error it deletes what it created, then raises.
"""

from __future__ import annotations

import math
import os

import bpy
import numpy as np

from . import camera_convert, ply
from .errors import AddonError

COLLECTION = "WorldStereo"
FORMAT_NAME = "worldstereo-trajectory"  # ws_engine/trajectory_io/worldstereo.py
FORMAT_VERSION = 1
DEFAULT_POINT_RADIUS = 0.005
# glTF (y up) as Blender's importer brings it in -> the engine's world: the engine stores (x, -y, -z)
# of the world, the importer maps glTF (X, Y, Z) to Blender (X, -Z, Y).
GLTF_TO_WORLD = ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
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
# collections and cleanup
# ----------------------------------------------------------------------------------------------
class _Created:
    """What an import made, deleted again by ``undo()`` (all-or-nothing imports)."""

    def __init__(self):
        self.ids: list = []
        self.unlink: list = []  # (parent collection, child collection) links made

    def add(self, id_data):
        """Record one datablock; returns it."""
        if id_data is not None:
            self.ids.append(id_data)
        return id_data

    def undo(self):
        for parent, child in self.unlink:
            try:
                if child.name in parent.children:
                    parent.children.unlink(child)
            except ReferenceError:
                pass
        alive = []
        for i in self.ids:
            try:
                i.name  # noqa: B018 - raises ReferenceError when already removed
                alive.append(i)
            except ReferenceError:
                pass
        if alive:
            bpy.data.batch_remove(alive)


def _collection(context, created: _Created):
    """The scene's "WorldStereo" collection, created and linked under the scene collection if needed."""
    scene = context.scene
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = created.add(bpy.data.collections.new(COLLECTION))
    if coll.name not in scene.collection.children and coll not in scene.collection.children_recursive:
        scene.collection.children.link(coll)
        created.unlink.append((scene.collection, coll))
    return coll


def _move_to(obj, coll) -> None:
    for c in list(obj.users_collection):
        c.objects.unlink(obj)
    coll.objects.link(obj)


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
    created = _Created()
    try:
        coll = _collection(context, created)
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
    r, cycles = scene.render, getattr(scene, "cycles", None)
    settings = ["resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y", "engine",
                "filepath", "use_border", "film_transparent"]  # fmt: skip
    saved = {k: getattr(r, k) for k in settings}
    saved_image = {k: getattr(r.image_settings, k) for k in ("file_format", "color_mode", "color_depth")}
    saved_cycles = {k: getattr(cycles, k) for k in ("samples", "device", "use_denoising")} if cycles else {}
    saved_camera = scene.camera
    tmp_cam = cam_obj.data.copy()
    tmp = bpy.data.objects.new("WorldStereo render camera", tmp_cam)
    scene.collection.objects.link(tmp)
    try:
        camera_convert.apply_opencv_to_camera(tmp, scene, K, info["c2w"], width, height)
        scene.camera = tmp
        r.engine = "CYCLES"
        if cycles:
            cycles.samples, cycles.device, cycles.use_denoising = (int(samples), "CPU", True)
        r.use_border, r.film_transparent = False, False
        (r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth) = "PNG", "RGB", "8"
        r.filepath = os.path.abspath(path)
        result = bpy.ops.render.render(write_still=True, scene=scene.name)
        if "FINISHED" not in result or not os.path.isfile(path):
            raise AddonError(
                f"Rendering the condition image failed ({result}); render the camera yourself and pick the image file."
            )
        return path
    finally:
        scene.camera = saved_camera
        for k, v in saved.items():
            setattr(r, k, v)
        for k, v in saved_image.items():
            setattr(r.image_settings, k, v)
        for k, v in saved_cycles.items():
            setattr(cycles, k, v)
        bpy.data.batch_remove([tmp, tmp_cam])


# ----------------------------------------------------------------------------------------------
# imports
# ----------------------------------------------------------------------------------------------
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0,1] -> linear (the sRGB transfer function), same shape."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear values in [0,1] -> sRGB-encoded, same shape."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def point_spacing(points: np.ndarray, sample: int = 2000, max_tree: int = 200_000) -> float:
    """Median distance from a point to its nearest neighbour (over ``sample`` points); 0 if unknown.

    Clouds above ``max_tree`` points are subsampled and the spacing scaled by sqrt(m/n) (points on
    surfaces: spacing ~ density^-1/2), an estimate that is good enough for a display radius."""
    from mathutils.kdtree import KDTree

    n = len(points)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(0)
    subset = points if n <= max_tree else points[rng.choice(n, size=max_tree, replace=False)]
    m = len(subset)
    tree = KDTree(m)
    for i, p in enumerate(subset.tolist()):
        tree.insert(p, i)
    tree.balance()
    picks = subset[rng.choice(m, size=min(m, sample), replace=False)].tolist()
    dists = [d for d in (tree.find_n(p, 2)[-1][2] for p in picks) if d > 0]
    return float(np.median(dists)) * math.sqrt(m / n) if dists else 0.0


def _point_material(name: str, created: _Created):
    """An Emission material showing the point attribute "Col" (the colours carry the video's light)."""
    mat = created.add(bpy.data.materials.new(name))
    if mat.node_tree is None:  # Blender < 5.0: node materials are opt-in
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    attr = nt.nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", "Col"
    emit = nt.nodes.new("ShaderNodeEmission")
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    attr.location, emit.location, out.location = (-400, 0), (-150, 0), (100, 0)
    nt.links.new(attr.outputs["Color"], emit.inputs["Color"])
    nt.links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def _points_node_group(name: str, material, radius: float, created: _Created):
    """Geometry Nodes: Mesh to Points (input "Radius") -> Set Material."""
    ng = created.add(bpy.data.node_groups.new(name, "GeometryNodeTree"))
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    rad = ng.interface.new_socket("Radius", in_out="INPUT", socket_type="NodeSocketFloat")
    rad.default_value, rad.min_value = radius, 0.0
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    n_in, n_out = ng.nodes.new("NodeGroupInput"), ng.nodes.new("NodeGroupOutput")
    to_points = ng.nodes.new("GeometryNodeMeshToPoints")
    set_mat = ng.nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = material
    n_in.location, to_points.location, set_mat.location, n_out.location = ((-500, 0), (-250, 0), (0, 0), (250, 0))
    ng.links.new(n_in.outputs["Geometry"], to_points.inputs["Mesh"])
    ng.links.new(n_in.outputs["Radius"], to_points.inputs["Radius"])
    ng.links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    ng.links.new(set_mat.outputs["Geometry"], n_out.inputs["Geometry"])
    return ng


def import_point_cloud(context, ply_path: str, name: str = "WorldStereo Points", radius: float | None = None):
    """A PLY point cloud as a vertices-only mesh object with a point-domain FLOAT_COLOR attribute
    "Col" (linear), shown through a Geometry Nodes modifier (Mesh to Points with ``radius``, default
    half the median point spacing or 0.005, then Set Material). Returns the object."""
    cloud = ply.read_ply(ply_path)
    points = cloud["points"]
    n = len(points)
    if radius is None:
        spacing = point_spacing(points)
        radius = 0.5 * spacing if spacing > 0 else DEFAULT_POINT_RADIUS
    created = _Created()
    try:
        coll = _collection(context, created)
        mesh = created.add(bpy.data.meshes.new(name))
        mesh.vertices.add(n)
        mesh.vertices.foreach_set("co", points.astype(np.float32).ravel())
        rgba = np.ones((n, 4), dtype=np.float32)
        if cloud["colors"] is not None:
            rgba[:, :3] = srgb_to_linear(cloud["colors"])
        else:
            rgba[:, :3] = 0.8
        col = mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
        col.data.foreach_set("color", rgba.ravel())
        mesh.color_attributes.active_color = col
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
        if cloud["normals"] is not None:
            nrm = mesh.attributes.new("ws_normal", "FLOAT_VECTOR", "POINT")
            nrm.data.foreach_set("vector", cloud["normals"].astype(np.float32).ravel())
        mesh.update()
        obj = created.add(bpy.data.objects.new(name, mesh))
        coll.objects.link(obj)
        mat = _point_material(f"{name} Material", created)
        mesh.materials.append(mat)
        mod = obj.modifiers.new("WorldStereo Points", "NODES")
        mod.node_group = _points_node_group(f"{name} Display", mat, float(radius), created)
        return obj
    except Exception:
        created.undo()
        raise


def _vertex_color_material(name: str, layer: str, created: _Created):
    """A Principled material whose Base Color is the colour attribute ``layer``."""
    mat = created.add(bpy.data.materials.new(name))
    if mat.node_tree is None:  # Blender < 5.0: node materials are opt-in
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    vc = nt.nodes.new("ShaderNodeVertexColor")
    vc.layer_name, vc.location = layer, (-350, 200)
    nt.links.new(vc.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def import_mesh(context, path: str, name: str = "WorldStereo Mesh"):
    """A mesh file (PLY, or GLB/glTF with the axis fix to world coordinates) as one object with its
    vertex colours shown by its material. Returns the object, in the "WorldStereo" collection."""
    if not os.path.isfile(path):
        raise AddonError(f"The mesh file '{path}' does not exist.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".ply", ".glb", ".gltf"):
        raise AddonError(f"Cannot import '{path}' as a mesh: use a .ply, .glb or .gltf file.")
    before = {
        k: set(getattr(bpy.data, k)) for k in ("objects", "meshes", "materials", "images", "collections", "cameras", "lights")
    }
    created = _Created()
    try:
        coll = _collection(context, created)
        try:
            if suffix == ".ply":
                result = bpy.ops.wm.ply_import(filepath=os.path.abspath(path), import_colors="SRGB")
            else:
                result = bpy.ops.import_scene.gltf(filepath=os.path.abspath(path), import_scene_as_collection=False)
        except RuntimeError as exc:
            raise AddonError(f"Blender could not import '{path}': {str(exc).strip()}. Export the mesh again.") from exc
        finally:
            for key, old in before.items():  # whatever the importer made, even if it failed
                created.ids.extend(i for i in getattr(bpy.data, key) if i not in old)
        if "FINISHED" not in result:
            raise AddonError(f"Blender could not import '{path}' ({result}); export the mesh again.")
        new_objects = [o for o in bpy.data.objects if o not in before["objects"]]
        meshes = [o for o in new_objects if o.type == "MESH" and len(o.data.vertices)]
        if not meshes:
            raise AddonError(f"'{path}' holds no mesh vertices; nothing was imported.")
        if suffix != ".ply":
            from mathutils import Matrix

            fix = Matrix(GLTF_TO_WORLD)
            for o in new_objects:
                if o.parent is None or o.parent not in new_objects:
                    o.matrix_world = fix @ o.matrix_world
        context.view_layer.update()
        obj = _join(context, meshes) if len(meshes) > 1 else meshes[0]
        world = obj.matrix_world.copy()
        obj.parent = None
        obj.matrix_world = world
        for o in new_objects:  # empties and other helpers the importer made
            try:
                if o != obj:
                    bpy.data.objects.remove(o)
            except ReferenceError:  # joined into obj
                pass
        _move_to(obj, coll)
        obj.name = obj.data.name = name
        mesh = obj.data
        if mesh.color_attributes:
            layer = mesh.color_attributes.active_color or mesh.color_attributes[0]
            mat = _vertex_color_material(f"{name} Material", layer.name, created)
            mesh.materials.clear()
            mesh.materials.append(mat)
        for key in ("materials", "meshes", "images"):  # what the importer made that nothing uses now
            collection = getattr(bpy.data, key)
            for unused in [i for i in collection if i not in before[key] and i.users == 0]:
                collection.remove(unused)
        return obj
    except Exception:
        created.undo()
        raise


def _join(context, meshes: list):
    """Join mesh objects into the first (world transforms kept)."""
    with context.temp_override(active_object=meshes[0], selected_editable_objects=meshes, selected_objects=meshes):
        bpy.ops.object.join()
    return meshes[0]


def import_video(context, video_path: str, cam_obj, mode: str = "BACKGROUND"):
    """A video in the scene: ``BACKGROUND`` -> a MOVIE image as ``cam_obj``'s background image
    (returns the image); ``SEQUENCE`` -> a movie strip in the sequence editor (returns the strip).
    Both start at the scene's start frame."""
    if not os.path.isfile(video_path):
        raise AddonError(f"The video file '{video_path}' does not exist.")
    scene = context.scene
    if mode == "SEQUENCE":
        editor = scene.sequence_editor or scene.sequence_editor_create()
        strips = getattr(editor, "strips", None)
        strips = strips if strips is not None else editor.sequences
        used = {s.channel for s in getattr(editor, "strips_all", strips)}
        channel = next(c for c in range(1, 129) if c not in used)
        try:
            strip = strips.new_movie(name=os.path.basename(video_path), filepath=os.path.abspath(video_path),
                                     channel=channel, frame_start=scene.frame_start)  # fmt: skip
        except RuntimeError as exc:
            raise AddonError(f"Blender could not open the video '{video_path}': {exc}.") from exc
        if strip.frame_final_duration < 1 or not getattr(strip, "fps", 1.0):
            strips.remove(strip)
            raise AddonError(
                f"Blender cannot read the video '{video_path}' (not a video, or a codec it lacks); generate it again."
            )
        return strip
    if mode != "BACKGROUND":
        raise AddonError(f"Unknown video mode {mode!r}: use 'BACKGROUND' or 'SEQUENCE'.")
    if cam_obj is None or cam_obj.type != "CAMERA":
        raise AddonError("A video goes onto a camera's background: pick a camera.")
    created = _Created()
    try:
        try:
            image = created.add(bpy.data.images.load(os.path.abspath(video_path), check_existing=False))
        except RuntimeError as exc:
            raise AddonError(f"Blender could not open the video '{video_path}': {exc}.") from exc
        if image.source != "MOVIE":
            image.source = "MOVIE"
        if image.frame_duration < 1 or not image.size[0]:
            raise AddonError(
                f"Blender cannot read the video '{video_path}' (not a video, or a codec it lacks); generate it again."
            )
        cam = cam_obj.data
        bg = cam.background_images.new()
        try:
            bg.source, bg.image = "IMAGE", image
            bg.image_user.frame_start = scene.frame_start
            bg.image_user.frame_duration = image.frame_duration
            bg.image_user.use_auto_refresh = True
            bg.alpha, bg.display_depth = 1.0, "BACK"
            cam.show_background_images = True
        except Exception:
            cam.background_images.remove(bg)
            raise
        return image
    except Exception:
        created.undo()
        raise


def remove_video(cam_obj, image) -> None:
    """Undo ``import_video(..., "BACKGROUND")``: drop the camera's background entry and the image."""
    for bg in list(cam_obj.data.background_images):
        if bg.image == image:
            cam_obj.data.background_images.remove(bg)
    bpy.data.images.remove(image)
