"""Helpers the trajectory formats share: the caller's hints, matrix parsing and checks, the half-pixel
shift, building the trajectory, number and JSON formatting, tag lines, text rows and frame names."""

from __future__ import annotations

import json
import math
import re
import warnings
from typing import Mapping, NamedTuple

import numpy as np
import torch

from ..cameras import CameraParameters, CameraTrajectory, rigid_inverse
from ..errors import ConfigError, InvalidCameraError, TrajectoryFormatError

DEFAULT_FPS = 16.0
HALF_PIXEL = 0.5  # external pixel centre minus engine pixel centre


class _Hints(NamedTuple):
    """The caller's width/height/fps, used where the file does not store them."""

    width: int | None
    height: int | None
    fps: float | None


# --------------------------------------------------------------------------------------------
# conventions and matrices
# --------------------------------------------------------------------------------------------


def _shift_centres(K: np.ndarray, delta: float) -> np.ndarray:
    """K (...,3,3) with the principal point moved by ``delta`` pixels on both axes."""
    K = np.array(K, dtype=np.float64)
    K[..., 0, 2] += delta
    K[..., 1, 2] += delta
    return K


def _external_K(traj: CameraTrajectory) -> np.ndarray:
    """K (T,3,3) float64 with pixel centres at +0.5, as every external format stores it."""
    return _shift_centres(traj.K.detach().cpu().double().numpy(), HALF_PIXEL)


def _w2c(traj: CameraTrajectory) -> np.ndarray:
    """World-to-camera (T,4,4) float64."""
    return rigid_inverse(traj.c2w.detach().cpu().double()).numpy()


def _c2w_from_w2c(w2c: np.ndarray, label: str) -> np.ndarray:
    """Camera-to-world (F,4,4) from world-to-camera (F,4,4), checking the last rows first."""
    bad = np.abs(w2c[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(axis=1) > 1e-5
    if bad.any():
        raise InvalidCameraError(f"{label}: world-to-camera matrix {int(np.argmax(bad))} must end with the row [0, 0, 0, 1].")
    return rigid_inverse(torch.from_numpy(w2c)).numpy()


def _matrices(value, shape: tuple[int, int], what: str, label: str, allow_single: bool = False) -> np.ndarray:
    """``value`` as float64 (F, *shape) with F >= 1 (a single matrix gives F = 1 when ``allow_single``)."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is not None and allow_single and a.shape == shape:
        a = a[None]
    if a is not None and a.size == 0:
        raise TrajectoryFormatError(f"{label}: {what} holds no frames; a trajectory needs at least one camera.")
    if a is None or a.ndim != 3 or a.shape[1:] != shape:
        raise TrajectoryFormatError(
            f"{label}: {what} must be a list of {shape[0]}x{shape[1]} matrices of numbers, shape (frames, {shape[0]}, "
            f"{shape[1]}); {_first_misfit(value, shape)}."
        )
    return a


def _first_misfit(value, shape: tuple[int, int]) -> str:
    """Which item of ``value`` is not a ``shape`` matrix of numbers, for an error message."""
    if not isinstance(value, (list, tuple)):
        return f"got {type(value).__name__}"
    for i, item in enumerate(value):
        try:
            item_shape = np.asarray(item, dtype=np.float64).shape
        except (TypeError, ValueError):
            return f"item {i} is ragged or not numbers"
        if item_shape != shape:
            return f"item {i} has shape {item_shape}"
    return f"got shape {np.shape(value)}"


# --------------------------------------------------------------------------------------------
# reading: keys, stored values against the caller's, building the trajectory
# --------------------------------------------------------------------------------------------


def _require(d: Mapping, key: str, label: str, hint: str):
    if key not in d:
        raise TrajectoryFormatError(f"{label}: missing key {key!r}; {hint}")
    return d[key]


def _frame_dicts(d: Mapping, label: str, hint: str) -> list[dict]:
    frames = _require(d, "frames", label, hint)
    if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
        raise TrajectoryFormatError(f"{label}: 'frames' must be a list of objects {{...}}, one per camera.")
    if not frames:
        raise TrajectoryFormatError(f"{label}: 'frames' is empty; a trajectory needs at least one camera.")
    return frames


def _frame_key(frames: list[dict], key: str, label: str, hint: str) -> list:
    """The value of ``key`` in every frame, or an error naming the first frame without it."""
    for i, f in enumerate(frames):
        if key not in f:
            raise TrajectoryFormatError(f"{label}: frame {i} has no {key!r}; {hint}")
    return [f[key] for f in frames]


def _pick(name: str, stored, given, label: str):
    """The stored value if any (warning when the caller gave another), else the caller's."""
    if given is not None and not _is_real(given):
        raise ConfigError(f"{name} must be a number, got {given!r}.")
    if stored is None:
        return given
    if not _is_real(stored):
        raise TrajectoryFormatError(f"{label}: {name!r} must be a number, got {stored!r}.")
    if given is not None and not math.isclose(float(given), float(stored), rel_tol=1e-6):
        fix = " Use trajectory.rescale(width, height) to adapt it to another image size." if name != "fps" else ""
        warnings.warn(f"{label} stores {name}={stored}; ignoring {name}={given}.{fix}", stacklevel=4)
    return stored


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _size(stored_w, stored_h, hints: _Hints, label: str, K_ext: np.ndarray | None = None) -> tuple[int, int]:
    """Image size: stored, else the caller's, else inferred as 2*(cx, cy) of frame 0 when ``K_ext`` is given."""
    w, h = _pick("width", stored_w, hints.width, label), _pick("height", stored_h, hints.height, label)
    if (w is None or h is None) and K_ext is not None:
        w = w if w is not None else round(2 * float(K_ext[0, 0, 2]))
        h = h if h is not None else round(2 * float(K_ext[0, 1, 2]))
    if w is None or h is None:
        raise TrajectoryFormatError(f"{label} does not store the image size; pass width= and height=.")
    return w, h


def _build(c2w, K, *, width, height, fps, model: str = "pinhole", label: str, half_pixel: bool = True) -> CameraTrajectory:
    """CameraTrajectory (float32) from OpenCV c2w (F,4,4) and K (F,3,3) or (3,3); K's pixel centres
    are at +0.5 when ``half_pixel`` and move to the engine's integer centres. Errors name ``label``."""
    if half_pixel:
        K = _shift_centres(K, -HALF_PIXEL)
    try:
        cams = CameraParameters(
            torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(c2w, dtype=torch.float32), width, height, model
        )
        return CameraTrajectory(cams, DEFAULT_FPS if fps is None else fps)
    except (InvalidCameraError, ConfigError) as exc:
        raise type(exc)(f"{label}: {exc}") from None


# --------------------------------------------------------------------------------------------
# writing: numbers, JSON, what a format cannot hold
# --------------------------------------------------------------------------------------------


def _json_numbers(a) -> list:
    """Nested lists of floats; float32 values keep their shortest float32 digits (0.8, not 0.800000011920929)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.dtype == np.float32:
        a = np.array([float(str(v)) for v in a.ravel()]).reshape(a.shape)
    return (a.astype(np.float64) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0


def _fmt(x) -> str:
    """A number for a text format, exact when read back."""
    return repr(float(x) + 0.0)


def _dumps(obj, level: int = 0) -> str:
    """JSON with one line per matrix (or list of numbers or strings), objects spread over lines."""
    pad, end = "  " * (level + 1), "\n" + "  " * level
    if isinstance(obj, dict) and obj:
        items = (f"{pad}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + end + "}"
    if isinstance(obj, list) and any(isinstance(x, dict) or (isinstance(x, list) and any(isinstance(y, list) for y in x)) for x in obj):
        return "[\n" + ",\n".join(pad + _dumps(x, level + 1) for x in obj) + end + "]"
    return json.dumps(obj, allow_nan=False)


def _pinhole_only(traj: CameraTrajectory, format: str) -> None:
    if traj.model != "pinhole":
        raise ConfigError(
            f"The {format} format stores pinhole cameras only, this trajectory is {traj.model}; "
            "save it as 'worldstereo' or 'transforms_json'."
        )


def _warn_skew(traj: CameraTrajectory, format: str) -> None:
    if bool((traj.K[:, 0, 1].abs() > 1e-9).any()):
        warnings.warn(f"The {format} format has no skew; K[0,1] is dropped.", stacklevel=4)


def _frame_names(meta: dict, n: int, pattern: str, sortable: bool = False) -> list[str]:
    """``meta['frame_names']`` if it names all ``n`` frames (distinct and in sorted order when
    ``sortable``: COLMAP orders frames by name), else ``pattern.format(index)``."""
    names = meta.get("frame_names")
    ok = isinstance(names, list) and len(names) == n and all(isinstance(x, str) and x.strip() for x in names)
    if ok and sortable:
        ok = len(set(names)) == n and sorted(names, key=_natural) == names
    return list(names) if ok else [pattern.format(i) for i in range(n)]


def _natural(name: str) -> list:
    """Sort key that orders frame_2 before frame_10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------------
# text formats: data rows and ``# worldstereo`` tag lines
# --------------------------------------------------------------------------------------------


def _text_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the data lines: not blank, not ``#``, and not a first line of non-numbers."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if lineno == 1 and not _is_number(tokens[0]):
            continue  # the URL line
        rows.append((lineno, tokens))
    return rows


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


_TAG = "# worldstereo"
_TAG_VALUE = re.compile(r"\b(width|height|fps)=([-+0-9.eE]+)")


def _tag_line(**values) -> str:
    """A comment line other readers skip that stores what the format lacks, e.g. ``# worldstereo fps=16.0``."""
    return " ".join([_TAG] + [f"{k}={v}" for k, v in values.items()])


def _read_tags(lines, label: str) -> dict:
    """The width/height/fps values of the ``# worldstereo`` lines among ``lines``."""
    out = {}
    for line in lines:
        if line.strip().startswith(_TAG):
            for key, value in _TAG_VALUE.findall(line):
                try:
                    out[key] = float(value) if key == "fps" else int(value)
                except ValueError:
                    raise TrajectoryFormatError(f"{label}: cannot read {key}={value!r} in {line.strip()!r}.") from None
    return out
