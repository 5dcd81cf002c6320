"""The job behind Generate, run for real with the CLI backend: a Blender scene with geometry and an
animated camera -> inputs (render of the first camera, ray-cast depth, trajectory) -> the engine in
its own interpreter -> a point cloud with the right count and colours, a mesh and the video in the
scene; cancelling kills the engine and imports nothing; a failed import leaves nothing behind."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import generate, ply  # noqa: E402
from blender_addon.errors import AddonError  # noqa: E402


def _settings_class():
    """Register the add-on's scene settings (as the extension does) once for these tests."""
    from blender_addon import properties

    if not hasattr(bpy.types.Scene, "worldstereo"):
        properties.register()


def _scene(frames: int = 4, size: int = 64):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    _settings_class()
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, 0))
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(0.5, 1.0, 0.75))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6, location=(-1.2, 0.2, 0.6))
    for i, obj in enumerate(o for o in scene.objects if o.type == "MESH"):
        mat = bpy.data.materials.new(f"m{i}")
        mat.diffuse_color = ((0.8, 0.2, 0.2, 1), (0.2, 0.6, 0.9, 1), (0.9, 0.8, 0.2, 1))[i]
        obj.data.materials.append(mat)
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
    cam_data = bpy.data.cameras.new("Cam")
    cam = bpy.data.objects.new("Cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = 320, 240
    scene.frame_start, scene.frame_end = 1, frames
    for frame, x in ((1, 0.0), (frames, 0.6)):
        cam.location = (x, -6.0, 2.5)
        cam.rotation_euler = (math.radians(70), 0.0, 0.0)
        cam.keyframe_insert("location", frame=frame)
        cam.keyframe_insert("rotation_euler", frame=frame)
    s = scene.worldstereo
    s.size, s.steps, s.seed = size, 2, 0
    s.image_source, s.use_depth_prior, s.point_cloud, s.mesh, s.video = "RENDER", True, True, True, "BACKGROUND"
    return scene, cam


def _prefs(engine_python):
    return SimpleNamespace(backend="CLI", python_path=engine_python, device="cpu", comfyui_url="", timeout=5)


def _run(job, timeout=300):
    deadline = time.time() + timeout
    while job.state == "running" and time.time() < deadline:
        job.poll()
        time.sleep(0.05)
    return job


def test_generate_job_imports_point_cloud_mesh_and_video(engine_python, tmp_path):
    scene, cam = _scene()
    ctx = bpy.context
    generate.check_scene(ctx)
    generate.check_backend(ctx, _prefs(engine_python))
    inputs, first = generate.prepare_inputs(ctx, tmp_path)
    assert first == cam and inputs.size == (48, 64)
    depth = np.load(inputs.depth)
    assert depth.shape == (48, 64) and (depth > 0).mean() > 0.6  # the floor and the objects (the sky above has no depth)
    job = _run(generate.start_job(ctx, inputs, _prefs(engine_python)))
    assert job.state == "done", job.message
    objects_before = set(scene.objects)
    created = generate.import_results(ctx, job.result_files, first)
    points_obj, mesh_obj, video = created
    cloud = ply.read_ply(job.result_files["point_cloud"])
    assert len(points_obj.data.vertices) == len(cloud["points"]) > 1000
    co = np.empty(len(cloud["points"]) * 3, dtype=np.float32)
    points_obj.data.vertices.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), cloud["points"], atol=1e-5)  # scene coordinates = engine world
    col = np.empty(len(cloud["points"]) * 4, dtype=np.float32)
    points_obj.data.color_attributes["Col"].data.foreach_get("color", col)
    from blender_addon.scene_import import linear_to_srgb

    assert np.allclose(linear_to_srgb(col.reshape(-1, 4)[:, :3]), ply.unit_colors(cloud["colors"]), atol=2 / 255)
    assert len(mesh_obj.data.polygons) > 100 and mesh_obj.data.color_attributes
    assert video.frame_duration == 4 and cam.data.background_images[0].image == video
    assert set(scene.objects) - objects_before == {points_obj, mesh_obj}
    assert all(o.users_collection[0].name == "WorldStereo" for o in (points_obj, mesh_obj))
    # the point cloud lies on the modelled surfaces: its points are near the plane, cube or sphere
    pts = cloud["points"]
    on_floor = np.abs(pts[:, 2]) < 0.05
    assert on_floor.mean() > 0.3


def test_cancel_kills_the_engine_and_imports_nothing(engine_python, tmp_path):
    scene, _ = _scene(frames=200, size=128)
    ctx = bpy.context
    inputs, _ = generate.prepare_inputs(ctx, tmp_path)
    job = generate.start_job(ctx, inputs, _prefs(engine_python))
    deadline = time.time() + 120
    while job.progress <= 0 and job.state == "running" and time.time() < deadline:
        job.poll()
        time.sleep(0.05)
    before = {o.name for o in scene.objects}
    job.cancel()
    assert job.wait(15) and job.state == "cancelled"
    assert job.process.poll() is not None  # the engine is gone
    assert {o.name for o in scene.objects} == before and "WorldStereo" not in bpy.data.collections


def test_a_failed_import_leaves_nothing(engine_python, tmp_path):
    scene, cam = _scene()
    good = tmp_path / "scene.ply"
    ply.write_ply(good, np.random.rand(500, 3), np.random.rand(500, 3))
    bad = tmp_path / "mesh.glb"
    bad.write_bytes(b"not a glb")
    before = {k: len(getattr(bpy.data, k)) for k in generate.DATA_KINDS}
    with pytest.raises(Exception):
        generate.import_results(bpy.context, {"point_cloud": str(good), "mesh": str(bad)}, cam)
    assert {k: len(getattr(bpy.data, k)) for k in generate.DATA_KINDS} == before
    with pytest.raises(AddonError, match="missing"):
        generate.import_results(bpy.context, {"point_cloud": str(tmp_path / "gone.ply")}, cam)
