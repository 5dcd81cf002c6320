"""The ``transforms_json`` format: nerfstudio transforms.json (OpenGL camera-to-world: x right, y up,
z back; pinhole or equirectangular cameras)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..cameras import CameraTrajectory, equirectangular_K
from ..errors import TrajectoryFormatError
from ._common import (
    _build,
    _external_K,
    _frame_dicts,
    _frame_key,
    _frame_names,
    _Hints,
    _json_numbers,
    _matrices,
    _pick,
    _size,
    _warn_skew,
)

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_gl = c2w_cv @ this; it is its own inverse
NERFSTUDIO_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


_TRANSFORMS_HINT = "transforms.json needs 'frames', each with a 4x4 'transform_matrix' (OpenGL camera-to-world)."


def _transforms_from_dict(d: dict, label: str, hints: _Hints):
    frames = _frame_dicts(d, label, _TRANSFORMS_HINT)
    c2w_gl = _matrices(_frame_key(frames, "transform_matrix", label, _TRANSFORMS_HINT), (4, 4), "'transform_matrix'", label)
    camera_model = str(d.get("camera_model", "OPENCV")).upper()
    if camera_model not in NERFSTUDIO_PINHOLE_MODELS + ("EQUIRECTANGULAR",):
        raise TrajectoryFormatError(
            f"{label}: camera_model {camera_model!r} is not supported; use OPENCV, PINHOLE or EQUIRECTANGULAR."
        )

    def value(f: dict, key: str):
        return f.get(key, d.get(key))

    sizes = [(value(f, "w"), value(f, "h")) for f in frames]
    (w, h), K = sizes[0], None
    if any(size != (w, h) for size in sizes):
        raise TrajectoryFormatError(f"{label}: frames have different sizes (w, h); all must share one, frame 0 has {(w, h)}.")
    if any(value(f, k) not in (None, 0, 0.0) for f in frames for k in DISTORTION_KEYS):
        warnings.warn(f"{label}: lens distortion (k1, k2, p1, ...) is ignored; cameras are treated as pinholes.", stacklevel=3)
    if camera_model != "EQUIRECTANGULAR":
        K = np.zeros((len(frames), 3, 3))
        K[:, 2, 2] = 1.0
        for i, f in enumerate(frames):
            fx, fy, cx, cy, angle_x = (value(f, key) for key in ("fl_x", "fl_y", "cx", "cy", "camera_angle_x"))
            if fx is None and angle_x is None:
                raise TrajectoryFormatError(f"{label}: frame {i} has no focal length; give 'fl_x' (and 'fl_y') in pixels.")
            try:
                fx = 0.5 * float(w) / math.tan(0.5 * float(angle_x)) if fx is None else float(fx)
                K[i, 0, 0], K[i, 1, 1] = fx, float(fx if fy is None else fy)
                K[i, 0, 2] = float(w) / 2 if cx is None else float(cx)
                K[i, 1, 2] = float(h) / 2 if cy is None else float(cy)
            except (TypeError, ValueError):
                raise TrajectoryFormatError(
                    f"{label}: frame {i} needs numeric 'fl_x', 'fl_y', 'cx', 'cy' (or 'w', 'h' for a centred camera)."
                ) from None
    width, height = _size(w, h, hints, label, K_ext=K)
    fps = _pick("fps", d.get("fps"), hints.fps, label)
    c2w = c2w_gl @ OPENGL_FROM_OPENCV
    if K is None:
        traj = _build(c2w, equirectangular_K(width, height, torch.float64).numpy(), width=width, height=height, fps=fps,
                      model="equirectangular", label=label, half_pixel=False)  # fmt: skip
    else:
        traj = _build(c2w, K, width=width, height=height, fps=fps, label=label)
    paths = [f.get("file_path") for f in frames]
    return traj, ({"frame_names": paths} if all(isinstance(p, str) for p in paths) else {})


def _transforms_to_dict(traj: CameraTrajectory, meta: dict) -> dict:
    K = _external_K(traj)
    _warn_skew(traj, "transforms_json")

    def intrinsics(k: np.ndarray) -> dict:
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}

    varying = traj.model == "pinhole" and not np.array_equal(K, np.broadcast_to(K[:1], K.shape))
    d = {"camera_model": "OPENCV" if traj.model == "pinhole" else "EQUIRECTANGULAR"}
    d.update(intrinsics(K[0]), w=traj.width, h=traj.height, fps=traj.fps)
    names = _frame_names(meta, len(traj), "images/frame_{:05d}.png")
    c2w_gl = traj.c2w.detach().cpu().double().numpy() @ OPENGL_FROM_OPENCV
    d["frames"] = [
        {"file_path": str(name), "transform_matrix": _json_numbers(m), **(intrinsics(k) if varying else {})}
        for name, m, k in zip(names, c2w_gl, K)
    ]
    return d
