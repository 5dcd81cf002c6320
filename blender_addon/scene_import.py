"""Results brought into the scene: point clouds, meshes and videos, all-or-nothing, in the
"WorldStereo" collection, in scene coordinates (engine world = Blender world).

Every import deletes what it created when it fails, then raises.
"""

from __future__ import annotations

import math
import os

import bpy
import numpy as np

from . import ply
from .errors import AddonError

COLLECTION = "WorldStereo"
DEFAULT_POINT_RADIUS = 0.005
# glTF (y up) as Blender's importer brings it in -> the engine's world: the engine stores (x, -y, -z)
# of the world, the importer maps glTF (X, Y, Z) to Blender (X, -Z, Y).
GLTF_TO_WORLD = ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))

# ----------------------------------------------------------------------------------------------
# collections and cleanup
# ----------------------------------------------------------------------------------------------
class Created:
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


def worldstereo_collection(context, created: Created):
    """The scene's "WorldStereo" collection, created and linked under the scene collection if needed."""
    scene = context.scene
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = created.add(bpy.data.collections.new(COLLECTION))
    if coll.name not in scene.collection.children and coll not in scene.collection.children_recursive:
        scene.collection.children.link(coll)
        created.unlink.append((scene.collection, coll))
    return coll


def move_to(obj, coll) -> None:
    for c in list(obj.users_collection):
        c.objects.unlink(obj)
    coll.objects.link(obj)


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


def _point_material(name: str, created: Created):
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


def _points_node_group(name: str, material, radius: float, created: Created):
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
    3/4 of the median point spacing or 0.005, then Set Material). Returns the object."""
    cloud = ply.read_ply(ply_path)
    points = cloud["points"]
    n = len(points)
    if radius is None:
        spacing = point_spacing(points)
        radius = 0.75 * spacing if spacing > 0 else DEFAULT_POINT_RADIUS  # disks overlap a little: no gaps seen at an angle
    created = Created()
    try:
        coll = worldstereo_collection(context, created)
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


def _vertex_color_material(name: str, layer: str, created: Created):
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
    created = Created()
    try:
        coll = worldstereo_collection(context, created)
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
        move_to(obj, coll)
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
    created = Created()
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
