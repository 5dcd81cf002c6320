"""The ``camera_json`` format: the official WorldStereo camera.json (``extrinsic`` F×4×4
world-to-camera, ``intrinsic`` F×3×3 or one shared 3×3, optional ``motion_list``)."""

from __future__ import annotations

from ..cameras import CameraTrajectory
from ..errors import ConfigError, TrajectoryFormatError
from ._common import (
    _build,
    _c2w_from_w2c,
    _external_K,
    _Hints,
    _json_numbers,
    _matrices,
    _pick,
    _pinhole_only,
    _require,
    _size,
    _w2c,
)

_CAMERA_JSON_HINT = "camera.json needs 'extrinsic' (frames x 4x4 world-to-camera) and 'intrinsic' (frames x 3x3)."


def _camera_json_from_dict(d: dict, label: str, hints: _Hints):
    w2c = _matrices(_require(d, "extrinsic", label, _CAMERA_JSON_HINT), (4, 4), "'extrinsic'", label)
    K = _matrices(_require(d, "intrinsic", label, _CAMERA_JSON_HINT), (3, 3), "'intrinsic'", label, allow_single=True)
    if len(K) not in (1, len(w2c)):
        raise TrajectoryFormatError(
            f"{label}: {len(w2c)} extrinsics but {len(K)} intrinsics; give one intrinsic per frame (or a single shared one)."
        )
    meta = {}
    if "motion_list" in d:
        motion = d["motion_list"]
        if not isinstance(motion, list) or not all(isinstance(m, str) for m in motion):
            raise TrajectoryFormatError(f"{label}: 'motion_list' must be a list of strings, got {motion!r:.80}.")
        meta["motion_list"] = motion
    width, height = _size(d.get("width"), d.get("height"), hints, label, K_ext=K)
    fps = _pick("fps", d.get("fps"), hints.fps, label)
    return _build(_c2w_from_w2c(w2c, label), K, width=width, height=height, fps=fps, label=label), meta


def _camera_json_to_dict(traj: CameraTrajectory, meta: dict) -> dict:
    _pinhole_only(traj, "camera_json")
    motion = meta.get("motion_list")
    if motion is not None and not (isinstance(motion, list) and all(isinstance(m, str) for m in motion)):
        raise ConfigError(f"meta['motion_list'] must be a list of strings, got {motion!r:.80}.")
    d = {"motion_list": list(motion)} if motion is not None else {}
    d.update(extrinsic=_json_numbers(_w2c(traj)), intrinsic=_json_numbers(_external_K(traj)))
    d.update(width=traj.width, height=traj.height, fps=traj.fps)
    return d
