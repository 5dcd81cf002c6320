"""Render Panorama: a Cycles equirectangular render and a ray-cast depth from the first camera's
position agree with the engine's equirectangular mapping, and the job runs for real with the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import camera_convert, generate, scene_io  # noqa: E402
from blender_addon.errors import AddonError  # noqa: E402
from test_generate_job import _prefs, _run, _scene  # noqa: E402


def _emissive_cube(name, location, color, size=0.5):
    bpy.ops.mesh.primitive_cube_add(size=size, location=location)
    obj = bpy.context.active_object
    obj.name = name
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5: materials start without nodes (5.0 deprecates use_nodes)
        mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    emit, out = nodes.new("ShaderNodeEmission"), nodes.new("ShaderNodeOutputMaterial")
    emit.inputs[0].default_value, emit.inputs[1].default_value = (*color, 1.0), 1.0
    mat.node_tree.links.new(emit.outputs[0], out.inputs[0])
    obj.data.materials.append(mat)
    return obj


def test_equirect_directions_are_the_engines_camera_rays(run_engine_json):
    """The ray cast's directions are the engine's equirectangular rays (camera frame, OpenCV axes), pixel for pixel."""
    W, H = 24, 12
    ours = scene_io.equirect_directions(W, H)
    rays = run_engine_json(
        "import json, sys, torch\n"
        "from ws_engine.cameras import CameraParameters\n"
        "from ws_engine.geometry import camera_rays\n"
        "W, H = int(sys.argv[1]), int(sys.argv[2])\n"
        "cam = CameraParameters.equirectangular(W, H)\n"
        "print(json.dumps(camera_rays(cam, dtype=torch.float64)[0].tolist()))",
        W, H,
    )
    assert np.abs(ours - np.asarray(rays)).max() < 1e-9
    assert ours[H // 2, W // 2, 2] > 0.95 and ours[H // 2, W // 2 + 6, 0] > 0.9  # centre looks along +z, a quarter turn right +x
    assert ours[0, 0, 1] < -0.9 and ours[-1, 0, 1] > 0.9  # top row looks up (-y), bottom row down


def test_panorama_render_and_depth_follow_the_engine_mapping(clean_scene, tmp_path, run_engine_json):
    scene = clean_scene
    scene.view_settings.view_transform = "Standard"  # plain colours: a pure red cube renders pure red
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location = (0.3, -0.2, 1.1)
    cam.rotation_euler = (math.radians(80), math.radians(5), math.radians(30))  # tilted and turned: the convention must hold
    cam.scale = (2.0, 2.0, 2.0)  # scale is removed from the pose
    bpy.context.view_layer.update()
    c2w = np.asarray(camera_convert.camera_to_opencv(cam, scene)["c2w"], dtype=np.float64)
    targets = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
    cam_dirs = {"red": (0.0, 0.0, 1.0), "green": (0.8, 0.1, 0.6), "blue": (-0.5, -0.6, -0.62)}  # OpenCV camera frame
    centres = {}
    for name, d in cam_dirs.items():
        d = np.asarray(d) / np.linalg.norm(d)
        centres[name] = c2w[:3, 3] + 4.0 * (c2w[:3, :3] @ d)
        _emissive_cube(name, centres[name].tolist(), targets[name])
    path = scene_io.render_panorama_image(bpy.context, cam, str(tmp_path / "pano.png"), 96, samples=4)
    img = bpy.data.images.load(path)
    px = np.array(img.pixels[:], dtype=np.float32).reshape(96, 192, 4)[::-1, :, :3]
    depth = scene_io.panorama_depth_from_scene(bpy.context, c2w, 192, 96)
    # the engine's own projection of the cube centres into an equirectangular camera with this c2w
    uv = run_engine_json(
        "import json, sys, torch\n"
        "from ws_engine.cameras import CameraParameters\n"
        "from ws_engine.geometry import project\n"
        "c2w, pts = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "cam = CameraParameters.equirectangular(192, 96, c2w=torch.tensor(c2w, dtype=torch.float64))\n"
        "uv, dist = project(torch.tensor(pts, dtype=torch.float64), cam)\n"
        "print(json.dumps({'uv': uv.tolist(), 'dist': dist.tolist()}))",
        __import__("json").dumps(c2w.tolist()), __import__("json").dumps([centres[n].tolist() for n in targets]),
    )
    for i, (name, color) in enumerate(targets.items()):
        u, v = (round(x) for x in uv["uv"][i])
        c = int(np.argmax(color))
        assert px[v, u, c] > 0.5 and np.delete(px[v, u], c).max() < 0.3, (name, u, v, px[v, u])
        assert abs(float(depth[v, u]) - (uv["dist"][i] - 0.25)) < 0.1, (name, depth[v, u], uv["dist"][i])  # the near face, 0.25 closer


def test_generate_job_from_a_rendered_panorama(engine_python, tmp_path):
    scene, _cam = _scene(frames=3)
    s = scene.worldstereo
    s.image_source, s.panorama_height, s.mesh, s.video = "PANORAMA", 256, False, "NONE"
    ctx = bpy.context
    generate.check_backend(ctx, _prefs(engine_python))
    inputs, first = generate.prepare_inputs(ctx, tmp_path)
    assert inputs.camera_model == "equirectangular" and "--camera-model" in inputs.cli_args()
    depth = np.load(inputs.depth)
    assert depth.shape == (256, 512) and (depth > 0).mean() > 0.1  # the floor and the objects below the horizon; the sky has none
    job = _run(generate.start_job(ctx, inputs, _prefs(engine_python)))
    assert job.state == "done", job.message
    created = generate.import_results(ctx, job.result_files, first)
    points = created[0]
    co = np.empty(len(points.data.vertices) * 3, dtype=np.float32)
    points.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    # distance to the modelled surfaces: the floor plane z = 0, the cube (centre (0.5, 1, 0.75), half size 0.75), the sphere
    q = np.abs(co - np.array([0.5, 1.0, 0.75])) - 0.75
    box = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)
    sphere = np.abs(np.linalg.norm(co - np.array([-1.2, 0.2, 0.6]), axis=1) - 0.6)
    near = np.minimum(np.minimum(np.abs(co[:, 2]), np.abs(box)), sphere) < 0.05
    assert len(co) > 1000 and near.mean() > 0.6, near.mean()
    prefs = _prefs(engine_python)
    prefs.backend = "COMFYUI"
    with pytest.raises(AddonError, match="Render Panorama runs with the Local Engine backend"):
        generate.check_backend(ctx, prefs)
