"""The ``worldstereo`` format: this project's JSON, in the engine convention (OpenCV camera-to-world,
K in pixels with integer pixel centres unless ``pixel_center`` is ``half``)."""

from __future__ import annotations

import torch

from ..cameras import CAMERA_MODELS, CameraTrajectory, equirectangular_K
from ..errors import TrajectoryFormatError
from ._common import _build, _frame_dicts, _frame_key, _Hints, _json_numbers, _matrices, _pick, _size

FORMAT_NAME = "worldstereo-trajectory"
FORMAT_VERSION = 1


_OWN_HINT = f"a worldstereo trajectory has 'format': '{FORMAT_NAME}', 'version', 'width', 'height' and 'frames'."


def _worldstereo_from_dict(d: dict, label: str, hints: _Hints):
    major = str(d.get("version", FORMAT_VERSION)).split(".")[0]
    if not major.isdigit():
        raise TrajectoryFormatError(f"{label}: 'version' must be a number like {FORMAT_VERSION}, got {d.get('version')!r}.")
    if int(major) > FORMAT_VERSION:
        raise TrajectoryFormatError(
            f"{label} is worldstereo trajectory format version {d['version']}, written by a newer ws_engine; "
            f"this one reads version {FORMAT_VERSION}. Update ws_engine (or re-export with the older version)."
        )
    convention = d.get("convention", "opencv_c2w")
    if convention != "opencv_c2w":
        raise TrajectoryFormatError(f"{label}: unsupported 'convention' {convention!r}; this version reads 'opencv_c2w'.")
    centre = d.get("pixel_center", "integer")
    if centre not in ("integer", "half"):
        raise TrajectoryFormatError(f"{label}: 'pixel_center' must be 'integer' or 'half', got {centre!r}.")
    model = d.get("camera_model", "pinhole")
    if model not in CAMERA_MODELS:
        raise TrajectoryFormatError(f"{label}: 'camera_model' must be one of {', '.join(CAMERA_MODELS)}, got {model!r}.")
    frames = _frame_dicts(d, label, _OWN_HINT)
    c2w = _matrices(_frame_key(frames, "c2w", label, "give each frame a 4x4 'c2w'."), (4, 4), "'c2w'", label)
    width, height = _size(d.get("width"), d.get("height"), hints, label)
    shared_K, missing = d.get("K"), [i for i, f in enumerate(frames) if "K" not in f]
    if not missing or shared_K is not None:
        K = _matrices([f.get("K", shared_K) for f in frames], (3, 3), "'K'", label)
    elif model == "equirectangular":
        K, centre = equirectangular_K(width, height, torch.float64).numpy(), "integer"
    else:
        raise TrajectoryFormatError(f"{label}: frame {missing[0]} has no 'K' and there is no shared 3x3 'K'; give one.")
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        raise TrajectoryFormatError(f"{label}: 'meta' must be an object {{...}}, got {type(meta).__name__}.")
    fps = _pick("fps", d.get("fps"), hints.fps, label)
    traj = _build(c2w, K, width=width, height=height, fps=fps, model=model, label=label, half_pixel=centre == "half")
    return traj, dict(meta)


def _worldstereo_to_dict(traj: CameraTrajectory, meta: dict) -> dict:
    K = traj.K
    shared_K = bool((K == K[:1]).all())
    d = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "convention": "opencv_c2w",
        "pixel_center": "integer",
        "camera_model": traj.model,
        "width": traj.width,
        "height": traj.height,
        "fps": traj.fps,
    }
    if shared_K:
        d["K"] = _json_numbers(K[0])
    d["frames"] = [{"c2w": _json_numbers(c2w), **({} if shared_K else {"K": _json_numbers(k)})} for c2w, k in zip(traj.c2w, K)]
    if meta:
        d["meta"] = meta
    return d
