"""Blender cameras <-> OpenCV cameras (K in pixels with integer pixel centres, camera-to-world c2w).

Exact for lens, sensor size and fit, shift, resolution percentage and pixel aspect (Blender's own
view plane: ``BKE_camera_params_compute_viewplane``). Engine world = Blender world; the OpenCV camera
looks down +z with y down, a Blender camera down -z with y up: ``c2w = matrix_world (scale removed)
@ diag(1,-1,-1,1)``. Needs only numpy and mathutils.
"""

from __future__ import annotations

import numpy as np

from .errors import AddonError

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # Blender camera axes <-> OpenCV camera axes (its own inverse)
DEFAULT_SENSOR = 36.0  # mm, the sensor size apply_opencv_to_camera writes


def render_size(scene) -> tuple[int, int]:
    """(W, H) in pixels of the scene's render: resolution times percentage, truncated as Blender does."""
    r = scene.render
    return (r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100)


def intrinsics(cam, width: int, height: int, pixel_aspect: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """K (3,3) float64 of camera data ``cam`` (bpy.types.Camera) for an image ``width`` x ``height``."""
    pa_x, pa_y = pixel_aspect
    fit = cam.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if width * pa_x >= height * pa_y else "VERTICAL"
    sensor = cam.sensor_height if cam.sensor_fit == "VERTICAL" else cam.sensor_width
    view = width if fit == "HORIZONTAL" else height * pa_y / pa_x
    fx = cam.lens / sensor * view
    fy = fx * pa_x / pa_y
    cx = (width - 1) / 2 - cam.shift_x * view
    cy = (height - 1) / 2 + cam.shift_y * view * pa_x / pa_y
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def c2w_from_matrix_world(matrix_world, name: str = "camera") -> np.ndarray:
    """OpenCV camera-to-world (4,4) float64 from a Blender ``matrix_world``: scale (and shear) removed
    by the polar decomposition of its 3x3 part, then the axis flip."""
    M = np.array(matrix_world, dtype=np.float64)
    A = M[:3, :3]
    if np.linalg.det(A) <= 0:
        raise AddonError(f"Camera '{name}' has a negative (mirroring) or zero scale; make its scale positive.")
    U, _, Vt = np.linalg.svd(A)
    c2w = np.eye(4)
    c2w[:3, :3] = U @ Vt
    c2w[:3, 3] = M[:3, 3]
    return c2w @ FLIP


def check_perspective(cam_obj) -> None:
    """AddonError unless ``cam_obj`` is a camera object with a perspective lens."""
    if cam_obj is None:
        raise AddonError("There is no camera: add one or set the scene's active camera.")
    if cam_obj.type != "CAMERA":
        raise AddonError(f"'{cam_obj.name}' is not a camera (it is a {cam_obj.type.lower()}); pick a camera object.")
    kind = cam_obj.data.type
    if kind != "PERSP":
        what = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(kind, kind.lower())
        raise AddonError(f"Camera '{cam_obj.name}' is {what}; WorldStereo needs a perspective camera (Lens > Type: Perspective).")


def camera_to_opencv(cam_obj, scene) -> dict:
    """The OpenCV camera of a Blender camera object at the scene's current frame.

    Returns ``{"K": (3,3), "c2w": (4,4), "width": W, "height": H}`` (float64 ndarrays; W, H the
    render size with the resolution percentage applied).
    """
    check_perspective(cam_obj)
    width, height = render_size(scene)
    r = scene.render
    K = intrinsics(cam_obj.data, width, height, (r.pixel_aspect_x, r.pixel_aspect_y))
    return {"K": K, "c2w": c2w_from_matrix_world(cam_obj.matrix_world, cam_obj.name), "width": width, "height": height}


def _check_K(K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise AddonError(f"K must be a finite 3x3 matrix, got shape {K.shape}.")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise AddonError(f"K has focal lengths fx={K[0, 0]:g}, fy={K[1, 1]:g}; both must be positive.")
    if abs(K[0, 1]) > 1e-6 * K[0, 0] or np.abs(K[2] - [0, 0, 1]).max() > 1e-9:
        raise AddonError("K has skew or a last row other than (0, 0, 1); Blender cameras cannot represent it.")
    return K


def pixel_aspect_for(K) -> tuple[float, float]:
    """(pixel_aspect_x, pixel_aspect_y) >= 1 with ``pa_x / pa_y = fy / fx``."""
    K = _check_K(K)
    ratio = K[1, 1] / K[0, 0]
    return (ratio, 1.0) if ratio >= 1 else (1.0, 1.0 / ratio)


def lens_settings(K, width: int, height: int, pixel_aspect: tuple[float, float], sensor: float = DEFAULT_SENSOR) -> dict:
    """Camera data values reproducing K: ``sensor_fit``, ``sensor`` (mm, for that fit), ``lens``,
    ``shift_x``, ``shift_y``. The fit is the one AUTO would pick, so switching to AUTO changes nothing."""
    K = _check_K(K)
    pa_x, pa_y = pixel_aspect
    fit = "HORIZONTAL" if width * pa_x >= height * pa_y else "VERTICAL"
    view = width if fit == "HORIZONTAL" else height * pa_y / pa_x
    fx, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    if fx * sensor / view < 1.0:  # Blender's lens is >= 1 mm: a smaller sensor for very wide views
        sensor = view / fx
        if sensor > 100.0:
            raise AddonError(f"The field of view (fx={fx:g} px for {view:g} px) is too wide for a Blender camera.")
    shift_x = ((width - 1) / 2 - cx) / view
    shift_y = (cy - (height - 1) / 2) / (view * pa_x / pa_y)
    return {"sensor_fit": fit, "sensor": sensor, "lens": fx * sensor / view, "shift_x": shift_x, "shift_y": shift_y}


def matrix_world_from_c2w(c2w):
    """Blender ``matrix_world`` (mathutils.Matrix, scale 1) from an OpenCV camera-to-world (4,4)."""
    from mathutils import Matrix

    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise AddonError(f"c2w must be a finite 4x4 matrix, got shape {c2w.shape}.")
    R = c2w[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise AddonError("c2w's rotation is not a rotation matrix (orthonormal, determinant +1).")
    return Matrix((c2w @ FLIP).tolist())


def apply_lens(cam, settings: dict) -> None:
    """Write ``lens_settings`` output onto camera data ``cam``."""
    cam.type = "PERSP"
    cam.sensor_fit = settings["sensor_fit"]
    if settings["sensor_fit"] == "VERTICAL":
        cam.sensor_height = settings["sensor"]
    cam.sensor_width = settings["sensor"]  # also what AUTO would use
    cam.lens_unit = "MILLIMETERS"
    cam.lens = settings["lens"]
    cam.shift_x = settings["shift_x"]
    cam.shift_y = settings["shift_y"]


def apply_opencv_to_camera(cam_obj, scene, K, c2w, width: int, height: int) -> None:
    """Make ``cam_obj`` (a camera object) and the scene's render settings reproduce an OpenCV camera.

    Sets lens, sensor (fit HORIZONTAL or VERTICAL), shift, the scene's resolution (``width`` x
    ``height`` at 100 %) and pixel aspect (fx != fy), and ``matrix_world`` (scale 1).
    """
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise AddonError(f"The image size must be positive, got {width}x{height}.")
    pa = pixel_aspect_for(K)
    apply_lens(cam_obj.data, lens_settings(K, width, height, pa))
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x, r.pixel_aspect_y = pa
    cam_obj.matrix_world = matrix_world_from_c2w(c2w)
