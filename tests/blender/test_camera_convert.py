"""Blender camera <-> OpenCV (K, c2w): agreement with Blender's own projection
(``bpy_extras.object_utils.world_to_camera_view``) over many random cameras, and round trips."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Euler, Matrix, Vector

from blender_addon import camera_convert
from blender_addon.errors import AddonError

FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
PERCENT = (25, 50, 75, 100, 150, 200)  # with resolutions that are multiples of 4: integer render sizes


def random_camera(rng: np.random.Generator, scene, name: str = "Cam"):
    """A camera object with random lens, sensor, fit, shift, scale and pose; random scene resolution,
    percentage and pixel aspect."""
    cam = bpy.data.cameras.new(name)
    cam.lens = float(rng.uniform(10, 100))
    cam.sensor_width = float(rng.uniform(16, 50))
    cam.sensor_height = float(rng.uniform(16, 50))
    cam.sensor_fit = str(rng.choice(FITS))
    cam.shift_x, cam.shift_y = (float(v) for v in rng.uniform(-0.4, 0.4, 2))
    obj = bpy.data.objects.new(name, cam)
    scene.collection.objects.link(obj)
    obj.location = Vector(rng.uniform(-2, 2, 3))
    obj.rotation_euler = Euler(rng.uniform(-np.pi, np.pi, 3))
    obj.scale = Vector(rng.uniform(0.3, 3.0, 3))  # removed by the conversion
    r = scene.render
    r.resolution_percentage = int(rng.choice(PERCENT))
    # render sizes up to 1024 px: Blender projects in float32, about 1e-4 px of noise at this size
    r.resolution_x, r.resolution_y = (int(v) * 4 for v in rng.integers(16, 256 * 100 // r.resolution_percentage, 2))
    r.pixel_aspect_x, r.pixel_aspect_y = (1.0, 1.0) if rng.random() < 0.3 else (float(v) for v in rng.uniform(1, 3, 2))
    bpy.context.view_layer.update()
    return obj


def project(info: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N,2) and depths (N,) of world points (N,3) in an OpenCV camera."""
    w2c = np.linalg.inv(info["c2w"])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ np.asarray(info["K"]).T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def blender_pixels(scene, obj, points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Blender's projection of world points, in pixels with integer pixel centres, and its depths."""
    out = np.array([tuple(world_to_camera_view(scene, obj, Vector(p))) for p in points])
    return np.stack([out[:, 0] * width - 0.5, (1 - out[:, 1]) * height - 0.5], axis=1), out[:, 2]


def points_in_front(rng, info: dict, n: int = 20) -> np.ndarray:
    """World points (n,3) inside the camera's view at random depths."""
    W, H = info["width"], info["height"]
    uv = np.stack([rng.uniform(-0.5, W - 0.5, n), rng.uniform(-0.5, H - 0.5, n), np.ones(n)], axis=1)
    rays = uv @ np.linalg.inv(info["K"]).T * rng.uniform(2, 10, (n, 1))
    return rays @ info["c2w"][:3, :3].T + info["c2w"][:3, 3]


def test_agrees_with_blender_projection_over_random_cameras(clean_scene):
    rng = np.random.default_rng(0)
    scene = clean_scene
    fits_seen = set()
    for i in range(150):
        obj = random_camera(rng, scene, f"Cam{i}")
        info = camera_convert.camera_to_opencv(obj, scene)
        W, H = info["width"], info["height"]
        r = scene.render
        assert (W, H) == (r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100)
        R = info["c2w"][:3, :3]
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        pts = points_in_front(rng, info)
        ours, depth = project(info, pts)
        theirs, their_depth = blender_pixels(scene, obj, pts, W, H)
        assert np.abs(ours - theirs).max() < 1e-3, (i, obj.data.sensor_fit, np.abs(ours - theirs).max())
        assert np.allclose(depth, their_depth, rtol=1e-5)  # world_to_camera_view's z is the distance along the view axis
        fits_seen.add((obj.data.sensor_fit, r.pixel_aspect_x != r.pixel_aspect_y))
    assert len(fits_seen) == 6  # every fit with square and non-square pixels


def test_integer_pixel_centres():
    """A centred camera puts the image centre at ((W-1)/2, (H-1)/2) and fx = lens/sensor * W."""
    cam = bpy.data.cameras.new("centred")
    cam.lens, cam.sensor_width, cam.sensor_fit = 50.0, 36.0, "AUTO"
    K = camera_convert.intrinsics(cam, 640, 480)
    assert np.allclose(K, [[50 / 36 * 640, 0, 319.5], [0, 50 / 36 * 640, 239.5], [0, 0, 1]])
    bpy.data.cameras.remove(cam)


def test_round_trip_blender_opencv_blender(clean_scene):
    rng = np.random.default_rng(1)
    scene = clean_scene
    for i in range(60):
        obj = random_camera(rng, scene, f"Src{i}")
        info = camera_convert.camera_to_opencv(obj, scene)
        new = bpy.data.objects.new(f"Dst{i}", bpy.data.cameras.new(f"Dst{i}"))
        scene.collection.objects.link(new)
        camera_convert.apply_opencv_to_camera(new, scene, info["K"], info["c2w"], info["width"], info["height"])
        bpy.context.view_layer.update()
        back = camera_convert.camera_to_opencv(new, scene)
        assert (back["width"], back["height"]) == (info["width"], info["height"])
        assert scene.render.resolution_percentage == 100
        assert np.allclose(back["K"], info["K"], atol=1e-6 * info["K"][0, 0]), (back["K"], info["K"])
        assert np.allclose(back["c2w"], info["c2w"], atol=1e-6)  # matrix_world is stored in float32
        assert np.allclose(new.scale, (1, 1, 1), atol=1e-6)
        # Blender's own projection of the new camera agrees with its conversion
        pts = points_in_front(rng, info, 10)
        theirs, _ = blender_pixels(scene, new, pts, info["width"], info["height"])
        assert np.abs(project(back, pts)[0] - theirs).max() < 1e-3


def test_opencv_to_blender_to_opencv():
    """Arbitrary K (fx != fy, off-centre principal point, portrait and landscape) survive a Blender camera."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = bpy.data.objects.new("C", bpy.data.cameras.new("C"))
    scene.collection.objects.link(obj)
    rng = np.random.default_rng(2)
    for W, H in ((640, 480), (480, 640), (512, 512), (1001, 333)):
        for _ in range(5):
            fx = rng.uniform(0.3, 3) * W
            K = np.array([[fx, 0, rng.uniform(0, W - 1)], [0, fx * rng.uniform(0.5, 2), rng.uniform(0, H - 1)], [0, 0, 1]])
            R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            R *= np.sign(np.linalg.det(R))
            c2w = np.eye(4)
            c2w[:3, :3], c2w[:3, 3] = R, rng.uniform(-3, 3, 3)
            camera_convert.apply_opencv_to_camera(obj, scene, K, c2w, W, H)
            bpy.context.view_layer.update()
            back = camera_convert.camera_to_opencv(obj, scene)
            assert np.allclose(back["K"], K, rtol=1e-6, atol=1e-6 * W), (W, H, back["K"], K)
            assert np.allclose(back["c2w"], c2w, atol=1e-6)


def test_refuses_non_perspective_cameras(clean_scene):
    obj = bpy.data.objects.new("Ortho", bpy.data.cameras.new("Ortho"))
    clean_scene.collection.objects.link(obj)
    for kind, word in (("ORTHO", "orthographic"), ("PANO", "panoramic")):
        obj.data.type = kind
        with pytest.raises(AddonError, match=f"Ortho' is {word}; WorldStereo needs a perspective camera"):
            camera_convert.camera_to_opencv(obj, clean_scene)
    with pytest.raises(AddonError, match="no camera"):
        camera_convert.camera_to_opencv(None, clean_scene)
    obj.data.type = "PERSP"
    obj.scale = (1, -1, 1)
    bpy.context.view_layer.update()
    with pytest.raises(AddonError, match="negative"):
        camera_convert.camera_to_opencv(obj, clean_scene)


def test_refuses_what_blender_cannot_represent(clean_scene):
    obj = bpy.data.objects.new("C", bpy.data.cameras.new("C"))
    clean_scene.collection.objects.link(obj)
    skew = np.array([[500, 3, 320], [0, 500, 240], [0, 0, 1.0]])
    with pytest.raises(AddonError, match="skew"):
        camera_convert.apply_opencv_to_camera(obj, clean_scene, skew, np.eye(4), 640, 480)
    with pytest.raises(AddonError, match="rotation"):
        camera_convert.apply_opencv_to_camera(obj, clean_scene, np.diag([500, 500, 1.0]), np.diag([2, 1, 1, 1.0]), 640, 480)
    _ = Matrix  # mathutils is importable next to bpy
