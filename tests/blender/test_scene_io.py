"""Scene I/O: trajectories (Blender <-> the engine's JSON, read by the engine itself), animated cameras,
depth by ray casting, a render of a camera, and results (point cloud, mesh, video) imported into the
scene all-or-nothing. Files the engine would write are written by the engine (a subprocess)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Matrix

from blender_addon import camera_convert, ply, scene_import, scene_io
from blender_addon.errors import AddonError

# the engine's loader, printing K (F,3,3) and c2w (F,4,4) as JSON
LOAD_TRAJECTORY = """
import json, sys
from ws_engine.trajectory_io import load_trajectory
t = load_trajectory(sys.argv[1])
print(json.dumps({"K": t.K.double().tolist(), "c2w": t.c2w.double().tolist(), "width": t.width, "height": t.height, "fps": t.fps}))
"""


def add_camera(scene, name="Cam", lens=35.0):
    obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(obj)
    obj.data.lens = lens
    return obj


def animated_camera(scene, frames=6):
    """A camera flying and turning over ``frames`` frames, zooming and shifting (keyframed)."""
    (scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage) = 320, 240, 50
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = 1.0, 1.25
    scene.frame_start, scene.frame_end = 1, frames
    obj = add_camera(scene, "Flyer")
    obj.data.sensor_fit = "VERTICAL"
    for f in range(1, frames + 1):
        obj.location = (0.3 * f, -5 + 0.2 * f, 1.0 + 0.1 * math.sin(f))
        obj.rotation_euler = (1.3 + 0.02 * f, 0.05 * f, 0.1 * f)
        obj.data.lens = 30 + 2 * f
        obj.data.shift_x = 0.01 * f
        obj.keyframe_insert("location", frame=f)
        obj.keyframe_insert("rotation_euler", frame=f)
        obj.data.keyframe_insert("lens", frame=f)
        obj.data.keyframe_insert("shift_x", frame=f)
    obj.scale = (2.0, 0.5, 1.5)  # removed by the conversion
    return obj


def assert_items_equal(a, b, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["width"], x["height"]) == (y["width"], y["height"])
        assert np.allclose(np.asarray(x["K"]), np.asarray(y["K"]), rtol=1e-6, atol=atol * np.asarray(x["K"])[0, 0])
        assert np.allclose(np.asarray(x["c2w"]), np.asarray(y["c2w"]), atol=atol)


# ----------------------------------------------------------------------------------------------
# trajectories
# ----------------------------------------------------------------------------------------------
def test_trajectory_from_animation_reads_every_frame_and_restores_the_current_one(clean_scene):
    scene = clean_scene
    obj = animated_camera(scene, 6)
    scene.frame_set(4)
    items = scene_io.trajectory_from_animation(scene, obj)
    assert scene.frame_current == 4
    assert [i["frame"] for i in items] == [1, 2, 3, 4, 5, 6]
    assert (items[0]["width"], items[0]["height"]) == (160, 120)
    assert len({round(i["K"][0, 0], 6) for i in items}) == 6  # the zoom is read per frame
    scene.frame_set(3)
    assert_items_equal([items[2]], [camera_convert.camera_to_opencv(obj, scene)], atol=1e-12)
    every_other = scene_io.trajectory_from_animation(scene, obj, step=2, frame_start=2, frame_end=6)
    assert [i["frame"] for i in every_other] == [2, 4, 6]
    with pytest.raises(AddonError, match="step"):
        scene_io.trajectory_from_animation(scene, obj, step=0)


def test_trajectory_from_cameras_orders_by_name(clean_scene):
    scene = clean_scene
    cams = [add_camera(scene, n, lens) for n, lens in (("B", 50), ("C", 70), ("A", 30))]
    light = bpy.data.objects.new("Light", bpy.data.lights.new("Light", "POINT"))
    items = scene_io.trajectory_from_cameras([*cams, light], scene)
    assert [round(i["K"][0, 0] / scene.render.resolution_x * 36) for i in items] == [30, 50, 70]
    with pytest.raises(AddonError, match="No camera"):
        scene_io.trajectory_from_cameras([light], scene)


def test_engine_loads_what_blender_writes(clean_scene, run_engine_json, tmp_path):
    scene = clean_scene
    items = scene_io.trajectory_from_animation(scene, animated_camera(scene, 5))
    data = scene_io.trajectory_to_json(items, 24.0)
    assert data["format"] == "worldstereo-trajectory" and "K" not in data and "K" in data["frames"][0]  # zoom: K per frame
    path = tmp_path / "trajectory.json"
    path.write_text(json.dumps(data))
    loaded = run_engine_json(LOAD_TRAJECTORY, path)
    assert (loaded["width"], loaded["height"], loaded["fps"]) == (160, 120, 24.0)
    assert np.allclose(loaded["K"], [i["K"] for i in items], rtol=1e-6)
    assert np.allclose(loaded["c2w"], [i["c2w"] for i in items], atol=1e-6)


def test_blender_reads_what_the_engine_writes(engine_files):
    """A trajectory the engine writes (shared K) comes back with the engine's numbers."""
    truth = json.loads((engine_files / "engine_trajectory_truth.json").read_text())
    items = scene_io.trajectory_from_json(json.loads((engine_files / "engine_trajectory.json").read_text()))
    assert len(items) == 7 and (items[0]["width"], items[0]["height"]) == (320, 240)
    assert np.allclose([i["K"] for i in items], truth["K"], atol=1e-6)
    assert np.allclose([i["c2w"] for i in items], truth["c2w"], atol=1e-6)


def test_trajectory_from_json_refuses_other_formats():
    with pytest.raises(AddonError, match="not a WorldStereo trajectory"):
        scene_io.trajectory_from_json({"frames": [{"transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(AddonError, match="version"):
        scene_io.trajectory_from_json({"format": "worldstereo-trajectory", "version": 9, "width": 4, "height": 4, "frames": []})
    half = {"format": "worldstereo-trajectory", "pixel_center": "half", "width": 4, "height": 2,
            "K": [[2, 0, 2], [0, 2, 1], [0, 0, 1]], "frames": [{"c2w": np.eye(4).tolist()}]}  # fmt: skip
    assert np.allclose(scene_io.trajectory_from_json(half)[0]["K"], [[2, 0, 1.5], [0, 2, 0.5], [0, 0, 1]])


def test_animated_camera_round_trip(clean_scene):
    """Blender animated camera -> JSON -> new animated camera -> JSON: equal."""
    scene = clean_scene
    src = animated_camera(scene, 6)
    items = scene_io.trajectory_from_animation(scene, src)
    data = scene_io.trajectory_to_json(items, 24)
    scene.frame_start, scene.frame_end = 1, 3  # extended by the import
    new = scene_io.create_animated_camera(
        bpy.context, scene_io.trajectory_from_json(json.loads(json.dumps(data))), name="Imported"
    )
    assert new.name == "Imported" and new.users_collection[0].name == "WorldStereo"
    assert scene.frame_end == 6 and scene.render.resolution_percentage == 100
    again = scene_io.trajectory_to_json(scene_io.trajectory_from_animation(scene, new), 24)
    assert again["width"] == data["width"] and again["height"] == data["height"]
    assert np.allclose([f["K"] for f in again["frames"]], [f["K"] for f in data["frames"]], rtol=1e-5)
    assert np.allclose([f["c2w"] for f in again["frames"]], [f["c2w"] for f in data["frames"]], atol=1e-5)


def test_failed_camera_import_leaves_the_scene_untouched(clean_scene):
    scene = clean_scene
    items = [{"K": np.diag([100.0, 100.0, 1.0]), "c2w": np.eye(4), "width": 64, "height": 48},
             {"K": np.diag([100.0, 100.0, 1.0]), "c2w": np.diag([1.0, 2.0, 1.0, 1.0]), "width": 64, "height": 48}]  # fmt: skip
    res = scene.render.resolution_x
    with pytest.raises(AddonError, match="rotation"):
        scene_io.create_animated_camera(bpy.context, items)
    assert not bpy.data.objects and not bpy.data.cameras and not bpy.data.collections and not bpy.data.actions
    assert scene.render.resolution_x == res


# ----------------------------------------------------------------------------------------------
# depth and render
# ----------------------------------------------------------------------------------------------
def look_down_y(scene, W, H, fx=60.0):
    """An OpenCV camera at the origin looking along +y (world), K for W x H."""
    c2w = np.eye(4)
    c2w[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]  # x right, y down = -z world, z forward = +y world
    K = np.array([[fx, 0, (W - 1) / 2], [0, fx, (H - 1) / 2], [0, 0, 1]])
    return {"K": K, "c2w": c2w, "width": W, "height": H}


def test_depth_of_a_plane_and_a_cube(clean_scene):
    scene = clean_scene
    W, H = 40, 30
    cam = look_down_y(scene, W, H, fx=30.0)
    # a wall at y = 5, larger than the view: depth 5 everywhere
    bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 5, 0), rotation=(math.pi / 2, 0, 0))
    depth = scene_io.depth_from_scene(bpy.context, cam, W, H)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert np.allclose(depth, 5.0, atol=1e-4)
    # a unit cube (2 m) centred at y = 3 in front of it: its face at y = 2 covers the image centre
    bpy.ops.mesh.primitive_cube_add(size=2, location=(0, 3, 0))
    depth = scene_io.depth_from_scene(bpy.context, cam, W, H)
    u = (np.arange(W) - cam["K"][0, 2]) / 30.0  # x / z of each column
    v = (np.arange(H) - cam["K"][1, 2]) / 30.0
    inside = (np.abs(v)[:, None] * 2 < 1) & (np.abs(u)[None, :] * 2 < 1)  # rays hitting the face at z=2
    edge = (np.abs(np.abs(v)[:, None] * 2 - 1) < 0.05) | (np.abs(np.abs(u)[None, :] * 2 - 1) < 0.05)
    expected = np.where(inside, 2.0, 5.0)
    assert np.allclose(depth[~edge], expected[~edge], atol=1e-4)
    # hidden from render: ignored; a scene with nothing hit: a clear error
    for obj in bpy.data.objects:
        obj.hide_render = True
    with pytest.raises(AddonError, match="nothing in front of the camera"):
        scene_io.depth_from_scene(bpy.context, cam, W, H)


def test_depth_of_a_blender_camera_matches_its_view(clean_scene):
    """Through camera_convert: a Blender camera 4 m in front of a wall at an angle (shift, fit VERTICAL)."""
    scene = clean_scene
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    bpy.ops.mesh.primitive_plane_add(size=200, location=(0, 0, 0))  # the ground z = 0
    obj = add_camera(scene, "C", 24)
    obj.data.sensor_fit, obj.data.shift_y = "VERTICAL", 0.1
    obj.matrix_world = Matrix.Translation((0, 0, 4)) @ Matrix.Rotation(0.3, 4, "X")  # 4 m up, looking down, tilted
    bpy.context.view_layer.update()
    info = camera_convert.camera_to_opencv(obj, scene)
    depth = scene_io.depth_from_scene(bpy.context, info, 64, 48)
    # analytic: the ray of pixel (u,v) hits z=0 at t = -4 / d_z; depth = t (rays have unit camera z)
    u, v = np.meshgrid(np.arange(64.0), np.arange(48.0))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(info["K"]).T @ info["c2w"][:3, :3].T
    assert np.allclose(depth, -4.0 / rays[..., 2], rtol=1e-5)


def test_depth_speed(clean_scene, capsys):
    scene = clean_scene
    bpy.ops.mesh.primitive_uv_sphere_add(segments=64, ring_count=32, radius=1, location=(0, 4, 0))
    bpy.ops.mesh.primitive_plane_add(size=50, location=(0, 8, 0), rotation=(math.pi / 2, 0, 0))
    times = {}
    for size in (128, 256):
        cam = look_down_y(scene, size, size, fx=size * 0.8)
        start = time.perf_counter()
        depth = scene_io.depth_from_scene(bpy.context, cam, size, size)
        times[size] = time.perf_counter() - start
        assert depth.min() > 2.9 and depth.max() <= 8.0 + 1e-4
    with capsys.disabled():
        print(f"\n  depth_from_scene: 128x128 {times[128]:.3f} s, 256x256 {times[256]:.3f} s")
    assert times[256] < 10.0


def test_render_condition_image(clean_scene, tmp_path):
    scene = clean_scene
    bpy.ops.mesh.primitive_cube_add(size=2, location=(0, 0, 0))
    red = bpy.data.materials.new("Red")
    red.diffuse_color = (1, 0, 0, 1)
    red.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (1, 0, 0, 1)
    bpy.context.object.data.materials.append(red)
    world = bpy.data.worlds.new("W")  # white surroundings: a white background, a red cube
    if world.node_tree is None:  # Blender < 5.0
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (1, 1, 1, 1)
    scene.world = world
    cam = add_camera(scene, "C", 35)
    cam.location, cam.rotation_euler = (0, -6, 0), (math.pi / 2, 0, 0)
    (scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage) = 1920, 1080, 50
    scene.render.engine = "BLENDER_WORKBENCH"
    before = (
        scene.camera,
        scene.render.resolution_x,
        scene.render.resolution_percentage,
        scene.render.engine,
        len(bpy.data.objects),
    )
    start = time.perf_counter()
    path = scene_io.render_condition_image(bpy.context, cam, str(tmp_path / "cond.png"), 96, 54)
    elapsed = time.perf_counter() - start
    image = bpy.data.images.load(path)
    assert tuple(image.size) == (96, 54)
    pixels = np.array(image.pixels[:]).reshape(54, 96, 4)
    bpy.data.images.remove(image)
    corner, centre = pixels[2, 2, :3], pixels[27, 48, :3]
    assert corner.min() > 0.7 and centre[0] > centre[1] + 0.3 and centre[0] > centre[2] + 0.3  # background, the cube
    after = (
        scene.camera,
        scene.render.resolution_x,
        scene.render.resolution_percentage,
        scene.render.engine,
        len(bpy.data.objects),
    )
    assert after == before
    assert elapsed < 30


# ----------------------------------------------------------------------------------------------
# imports
# ----------------------------------------------------------------------------------------------
WRITE_FILES = """
import json, sys
from pathlib import Path
import numpy as np
import torch
from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.io import save_mesh, save_ply, save_video
from ws_engine.trajectory_io import save_trajectory

out = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
# a point cloud: 5000 points, colours, normals
points = torch.rand(5000, 3, generator=g) * 4 - 2
save_ply(out / "scene.ply", points, torch.rand(5000, 3, generator=g), torch.nn.functional.normalize(torch.randn(5000, 3, generator=g), dim=1))
# a 6x5 grid mesh (30 vertices, 40 triangles) with 8-bit colours, as PLY and GLB
nx, ny = 6, 5
u, v = torch.meshgrid(torch.arange(nx, dtype=torch.float32), torch.arange(ny, dtype=torch.float32), indexing="ij")
verts = torch.stack([u.ravel() * 0.5 - 1, v.ravel() * 0.4 + 2, torch.sin(u.ravel()) * 0.3 + 1], 1)
faces = []
for i in range(nx - 1):
    for j in range(ny - 1):
        a, b, c, d = i * ny + j, (i + 1) * ny + j, (i + 1) * ny + j + 1, i * ny + j + 1
        faces += [[a, b, c], [a, c, d]]
colors = torch.randint(0, 256, (nx * ny, 3), generator=g).to(torch.uint8)
for name in ("mesh.ply", "mesh.glb"):
    save_mesh(out / name, verts, torch.tensor(faces), colors)
np.save(out / "mesh_truth.npy", np.concatenate([verts.numpy(), colors.numpy().astype(np.float32)], 1))
# a 9-frame video
save_video(out / "video.mp4", torch.rand(9, 3, 48, 64, generator=g), fps=16)
# a trajectory: 7 frames turning and moving along x, one shared K
K = torch.tensor([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
ang = torch.linspace(0, 0.6, 7)
c2w = torch.eye(4).repeat(7, 1, 1)
c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = ang.cos(), ang.sin(), -ang.sin(), ang.cos()
c2w[:, 0, 3] = ang
t = CameraTrajectory(CameraParameters(K.expand(7, 3, 3), c2w, 320, 240), fps=12)
save_trajectory(t, out / "engine_trajectory.json")
(out / "engine_trajectory_truth.json").write_text(json.dumps({"K": t.K.double().tolist(), "c2w": t.c2w.double().tolist()}))
"""


@pytest.fixture(scope="module")
def engine_files(run_engine, tmp_path_factory):
    """A folder of files the engine wrote (one subprocess): scene.ply, mesh.ply, mesh.glb
    (+ mesh_truth.npy: xyz and 0..255 colours per vertex), video.mp4 (9 frames), engine_trajectory.json."""
    out = tmp_path_factory.mktemp("engine_files")
    run_engine(WRITE_FILES, out)
    return out


def test_import_point_cloud_from_the_engine(clean_scene, engine_files):
    path = engine_files / "scene.ply"
    start = time.perf_counter()
    obj = scene_import.import_point_cloud(bpy.context, str(path), "Points")
    elapsed = time.perf_counter() - start
    truth = ply.read_ply(path)
    mesh = obj.data
    assert len(mesh.vertices) == 5000 and len(mesh.edges) == 0 and len(mesh.polygons) == 0
    co = np.empty(5000 * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    assert np.array_equal(co.reshape(-1, 3), truth["points"])
    col = mesh.attributes["Col"]
    assert (col.domain, col.data_type) == ("POINT", "FLOAT_COLOR")
    rgba = np.empty(5000 * 4, dtype=np.float32)
    col.data.foreach_get("color", rgba)
    assert np.array_equal(np.round(scene_import.linear_to_srgb(rgba.reshape(-1, 4)[:, :3]) * 255), np.round(truth["colors"] * 255))
    assert obj.users_collection[0].name == "WorldStereo"
    mod = obj.modifiers[0]
    kinds = {n.bl_idname for n in mod.node_group.nodes}
    assert {"GeometryNodeMeshToPoints", "GeometryNodeSetMaterial"} <= kinds
    radius = mod.node_group.interface.items_tree["Radius"].default_value
    assert 0 < radius < 0.2
    # the evaluated object is a point cloud carrying "Col" and the material reading it
    geometry = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).evaluated_geometry()
    cloud = geometry.pointcloud
    assert len(cloud.points) == 5000 and "Col" in cloud.attributes and cloud.materials[0].original == mesh.materials[0]
    mat = mesh.materials[0]
    assert any(n.bl_idname == "ShaderNodeAttribute" and n.attribute_name == "Col" for n in mat.node_tree.nodes)
    print(f"import_point_cloud 5000 points: {elapsed:.3f} s")


def test_import_point_cloud_ascii_and_float_colours(clean_scene, tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ply.write_ply(tmp_path / "a.ply", pts, cols, ascii=True)
    obj = scene_import.import_point_cloud(bpy.context, str(tmp_path / "a.ply"), "Ascii")
    rgba = np.empty(50 * 4, dtype=np.float32)
    obj.data.attributes["Col"].data.foreach_get("color", rgba)
    assert np.array_equal(np.round(scene_import.linear_to_srgb(rgba.reshape(-1, 4)[:, :3]) * 255), cols)
    # float colours (0..1) and no normals, binary big-endian
    table = np.empty(50, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("red", ">f4"), ("green", ">f4"), ("blue", ">f4")])
    for i, k in enumerate("xyz"):
        table[k] = pts[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        table[k] = cols[:, i] / 255.0
    header = (
        "ply\nformat binary_big_endian 1.0\nelement vertex 50\n"
        + "".join(f"property float {k}\n" for k in table.dtype.names)
        + "end_header\n"
    )
    (tmp_path / "f.ply").write_bytes(header.encode() + table.tobytes())
    cloud = ply.read_ply(tmp_path / "f.ply")
    assert np.array_equal(cloud["points"], pts) and np.allclose(cloud["colors"] * 255, cols, atol=1e-3)


def test_failed_point_cloud_import_leaves_nothing(clean_scene, tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
        + b"\0" * 12
    )
    with pytest.raises(AddonError, match="truncated"):
        scene_import.import_point_cloud(bpy.context, str(bad), "Bad")
    with pytest.raises(AddonError, match="does not exist"):
        scene_import.import_point_cloud(bpy.context, str(tmp_path / "missing.ply"), "Missing")
    assert not bpy.data.objects and not bpy.data.meshes and not bpy.data.collections and not bpy.data.materials
    # a failure after the mesh, material and collection exist: all of them go again
    good = tmp_path / "good.ply"
    ply.write_ply(good, np.zeros((3, 3)))
    with pytest.raises(ValueError):
        scene_import.import_point_cloud(bpy.context, str(good), "Half", radius="not a number")
    assert not bpy.data.objects and not bpy.data.meshes and not bpy.data.collections and not bpy.data.materials
    assert not bpy.data.node_groups and not bpy.context.scene.collection.children


def mesh_world_vertices_and_colors(obj) -> tuple[np.ndarray, np.ndarray]:
    """World positions (V,3) and sRGB 0..255 colours (V,3) per vertex of a mesh object."""
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    M = np.array(obj.matrix_world)
    world = co.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
    layer = mesh.color_attributes.active_color
    values = np.empty(len(layer.data) * 4, dtype=np.float32)
    layer.data.foreach_get("color_srgb", values)
    values = values.reshape(-1, 4)[:, :3] * 255
    if layer.domain == "CORNER":  # to vertices
        corner_vert = np.empty(len(mesh.loops), dtype=np.int32)
        mesh.loops.foreach_get("vertex_index", corner_vert)
        per_vertex = np.zeros((len(mesh.vertices), 3))
        per_vertex[corner_vert] = values
        values = per_vertex
    return world, values


@pytest.mark.parametrize("suffix", ["ply", "glb"])
def test_import_mesh_in_world_coordinates_with_colours(clean_scene, engine_files, suffix):
    path = engine_files / f"mesh.{suffix}"
    truth = np.load(engine_files / "mesh_truth.npy")
    obj = scene_import.import_mesh(bpy.context, str(path), "Mesh")
    assert obj.name == "Mesh" and obj.users_collection[0].name == "WorldStereo"
    assert len(obj.data.vertices) == 30 and len(obj.data.polygons) == 40
    world, colors = mesh_world_vertices_and_colors(obj)
    match = np.argmin(np.linalg.norm(world[:, None] - truth[None, :, :3], axis=2), axis=1)
    assert sorted(match) == list(range(30))  # every vertex found once
    assert np.abs(world - truth[match, :3]).max() < 1e-5
    if suffix == "ply":
        assert np.array_equal(np.round(colors), truth[match, 3:])
    else:  # the GLB holds linear 8-bit colours (glTF COLOR_0), read back as sRGB
        # glTF's COLOR_0 is linear in 8 bits: dark values come back within a few sRGB steps
        assert np.abs(colors - truth[match, 3:]).max() < 7, np.abs(colors - truth[match, 3:]).max()
    mat = obj.data.materials[0]
    assert any(n.bl_idname == "ShaderNodeVertexColor" for n in mat.node_tree.nodes)
    assert len(bpy.data.objects) == 1 and all(m.users for m in bpy.data.materials)


def test_failed_mesh_import_leaves_nothing(clean_scene, tmp_path):
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF not really")
    with pytest.raises(AddonError):
        scene_import.import_mesh(bpy.context, str(bad), "Bad")
    assert not bpy.data.objects and not bpy.data.meshes and not bpy.data.collections


def test_import_video_as_background_and_strip(clean_scene, engine_files, tmp_path):
    scene = clean_scene
    path = engine_files / "video.mp4"
    cam = add_camera(scene, "C")
    image = scene_import.import_video(bpy.context, str(path), cam, mode="BACKGROUND")
    assert image.source == "MOVIE" and image.frame_duration == 9
    bg = cam.data.background_images[0]
    assert bg.image == image and bg.image_user.frame_duration == 9 and cam.data.show_background_images
    strip = scene_import.import_video(bpy.context, str(path), cam, mode="SEQUENCE")
    assert strip.frame_final_duration == 9 and strip.frame_start == scene.frame_start
    with pytest.raises(AddonError, match="does not exist"):
        scene_import.import_video(bpy.context, str(tmp_path / "none.mp4"), cam)
    images = len(bpy.data.images)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    for mode in ("BACKGROUND", "SEQUENCE"):
        with pytest.raises(AddonError, match="cannot read the video"):
            scene_import.import_video(bpy.context, str(tmp_path / "junk.mp4"), cam, mode=mode)
    assert len(bpy.data.images) == images and len(cam.data.background_images) == 1
    assert len(scene.sequence_editor.strips) == 1
