"""Read and write camera trajectories: the one place where camera conventions are converted.

Formats (``TRAJECTORY_FORMATS``):

- ``worldstereo``: this project's JSON, in the engine convention (OpenCV camera-to-world, K in
  pixels with pixel centres at integer coordinates). The Blender add-on writes it.
- ``camera_json``: the official WorldStereo camera.json (``extrinsic`` F×4×4 world-to-camera,
  ``intrinsic`` F×3×3, optional ``motion_list``).
- ``transforms_json``: nerfstudio transforms.json (OpenGL camera-to-world: x right, y up, z back).
- ``re10k``: RealEstate10K text (a first line, then per frame: timestamp in microseconds,
  fx/W fy/H cx/W cy/H, two zeros, the 3×4 world-to-camera matrix row by row).
- ``colmap``: a COLMAP text model folder (cameras.txt, images.txt, points3D.txt).

Every external format puts pixel centres at +0.5 (a centred camera has cx = W/2); the engine puts
them at integer coordinates (cx = (W-1)/2), so cx and cy shift by 0.5 on the way in and out.
Loaded trajectories are float32. Values a file stores win over the ``width``/``height``/``fps``
arguments, which fill in what the file lacks (a differing argument gives a warning).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Union

import numpy as np
import torch

from .cameras import CAMERA_MODELS, CameraParameters, CameraTrajectory, equirectangular_K, rigid_inverse
from .errors import ConfigError, InvalidCameraError, TrajectoryFormatError, check_choice
from .io import atomic_write_text
from .rotations import matrix_to_quaternion, quaternion_to_matrix

__all__ = [
    "TRAJECTORY_FORMATS",
    "JSON_FORMATS",
    "detect_format",
    "load_trajectory",
    "save_trajectory",
    "trajectory_from_dict",
    "trajectory_to_dict",
]

TRAJECTORY_FORMATS = ("worldstereo", "camera_json", "transforms_json", "re10k", "colmap")
JSON_FORMATS = ("worldstereo", "camera_json", "transforms_json")
FORMAT_NAME = "worldstereo-trajectory"
FORMAT_VERSION = 1
DEFAULT_FPS = 16.0
HALF_PIXEL = 0.5  # external pixel centre minus engine pixel centre
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_gl = c2w_cv @ this; it is its own inverse
COLMAP_FILES = ("cameras.txt", "images.txt", "points3D.txt")
# COLMAP model -> number of params; the first ones are f|fx fy, cx, cy, the rest distortion
COLMAP_MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}
NERFSTUDIO_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
RE10K_ROW = 19

Source = Union[str, os.PathLike, Mapping]


class _Hints(NamedTuple):
    """The caller's width/height/fps, used where the file does not store them."""

    width: int | None
    height: int | None
    fps: float | None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def load_trajectory(
    source: Source,
    *,
    format: str | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    return_meta: bool = False,
    relative_to_first: bool | None = None,
):
    """Read a trajectory from a file, a COLMAP folder, a dict or pasted JSON/RealEstate10K text.

    Args:
        source: path (file or COLMAP folder), a parsed JSON dict, or the text itself.
        format: one of ``TRAJECTORY_FORMATS``; detected from the content when None.
        width, height, fps: used where the file does not store them (camera.json without a size,
            RealEstate10K without a header, COLMAP fps); stored values win.
        return_meta: also return a dict of what round-trips besides the cameras:
            ``motion_list`` (camera.json), ``frame_names`` (transforms.json, COLMAP), and for the
            ``worldstereo`` format its whole ``meta`` object.
        relative_to_first: express the poses in the first camera's frame (frame 0 = identity).
            None means True for ``camera_json``, whose frame 0 is the condition image's camera and
            whose world origin is only the generator's orbit pivot, and False for the rest (so
            every format round-trips exactly with False). The first camera's pose in the file's
            world is then reported as ``meta["world_from_first"]`` (``traj.transform`` of it
            restores the file's world).

    Returns:
        CameraTrajectory (float32), or ``(trajectory, meta)`` with ``return_meta=True``.
    """
    if format is not None:
        check_choice("trajectory format", format, TRAJECTORY_FORMATS)
    label, data = _open(source, format)
    fmt = format or _detect(label, data)
    traj, meta = _READERS[fmt](_expect(label, data, fmt), label, _Hints(width, height, fps))
    if relative_to_first if relative_to_first is not None else fmt == "camera_json":
        first = traj.c2w[0].double()
        if not torch.allclose(first, torch.eye(4, dtype=torch.float64), atol=0, rtol=0):
            meta["world_from_first"] = _json_numbers(first.numpy())
            traj = traj.relative_to_first()
    return (traj, meta) if return_meta else traj


def detect_format(source: Source) -> str:
    """The name in ``TRAJECTORY_FORMATS`` that ``source`` (path, dict or text) is written in."""
    return _detect(*_open(source, None))


def trajectory_from_dict(
    d: Mapping | str,
    *,
    format: str | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    return_meta: bool = False,
    relative_to_first: bool | None = None,
):
    """A trajectory from a JSON-format dict (or its JSON text); see :func:`load_trajectory`."""
    if format is not None:
        check_choice("JSON trajectory format", format, JSON_FORMATS)
    if not isinstance(d, (Mapping, str)):
        raise TrajectoryFormatError(f"trajectory_from_dict takes a dict or JSON text, got {type(d).__name__}.")
    if isinstance(d, str):
        d = _parse_json(d, "pasted JSON text")
    return load_trajectory(
        d, format=format, width=width, height=height, fps=fps, return_meta=return_meta, relative_to_first=relative_to_first
    )


def trajectory_to_dict(traj: CameraTrajectory, format: str = "worldstereo", *, meta: Mapping | None = None) -> dict:
    """The JSON-ready dict of ``traj`` in one of ``JSON_FORMATS``; ``meta`` as in :func:`save_trajectory`."""
    check_choice("JSON trajectory format", format, JSON_FORMATS)
    return _DICT_WRITERS[format](_as_trajectory(traj), dict(meta or {}))


def save_trajectory(
    traj: CameraTrajectory, path: str | os.PathLike, format: str = "worldstereo", *, meta: Mapping | None = None
) -> Path:
    """Write ``traj`` atomically in ``format`` and return the path written (a folder for ``colmap``).

    ``meta`` (e.g. the one ``load_trajectory(..., return_meta=True)`` gave) carries what the format
    can hold besides the cameras: ``motion_list`` (camera_json), ``frame_names`` (transforms_json,
    colmap; default ``frame_00000.png``...), everything for ``worldstereo`` (must be JSON-serialisable).
    """
    check_choice("trajectory format", format, TRAJECTORY_FORMATS)
    traj, meta, path = _as_trajectory(traj), dict(meta or {}), Path(path).expanduser()
    if format in JSON_FORMATS:
        try:
            text = _dumps(_DICT_WRITERS[format](traj, meta))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"meta must hold only JSON values (str, numbers, lists, dicts): {exc}") from None
        return atomic_write_text(path, text + "\n")
    if format == "re10k":
        return atomic_write_text(path, _re10k_to_text(traj))
    return _write_colmap(traj, meta, path)


# --------------------------------------------------------------------------------------------
# opening and detection
# --------------------------------------------------------------------------------------------


def _open(source: Source, format: str | None) -> tuple[str, Any]:
    """(label for messages, content): a dict, raw text, or a COLMAP folder Path."""
    if isinstance(source, Mapping):
        return "trajectory dict", dict(source)
    if isinstance(source, str) and not source.strip():
        raise TrajectoryFormatError("The trajectory source is empty; give a file path or paste the trajectory JSON.")
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return "pasted JSON text", _parse_json(source, "pasted JSON text")
    if isinstance(source, str) and "\n" in source.strip():
        return "pasted text", source
    if not isinstance(source, (str, os.PathLike)):
        raise TrajectoryFormatError(
            f"A trajectory source must be a path, a dict or JSON text, got {type(source).__name__}."
        )
    path = Path(source).expanduser()
    label = f"'{path}'"
    if not path.exists():
        raise TrajectoryFormatError(f"Trajectory file {label} does not exist; check the path (and the working folder).")
    if path.is_dir() or path.name in COLMAP_FILES or path.suffix == ".bin":
        if format not in (None, "colmap"):
            raise TrajectoryFormatError(f"{label} is a COLMAP model or a folder, not a {format} file.")
        return label, _colmap_folder(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TrajectoryFormatError(f"{label} is not a text file; give a JSON or text trajectory file.") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        return label, _parse_json(text, label)
    return label, text


def _parse_json(text: str, label: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrajectoryFormatError(
            f"{label} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (character {exc.pos}). "
            "The file may be truncated or not a trajectory; export it again."
        ) from None
    if not isinstance(data, dict):
        raise TrajectoryFormatError(f"{label} holds a JSON {type(data).__name__}; a trajectory is a JSON object {{...}}.")
    return data


def _detect(label: str, data) -> str:
    if isinstance(data, Path):
        return "colmap"
    if isinstance(data, dict):
        frames = data.get("frames")
        if data.get("format") == FORMAT_NAME:
            return "worldstereo"
        if "extrinsic" in data:
            return "camera_json"
        if isinstance(frames, list) and frames and isinstance(frames[0], dict) and "transform_matrix" in frames[0]:
            return "transforms_json"
        raise TrajectoryFormatError(
            f"Cannot tell the format of {label} (keys: {', '.join(map(str, list(data)[:8])) or 'none'}). "
            f"Expected 'format': '{FORMAT_NAME}' (worldstereo), 'extrinsic' + 'intrinsic' (camera.json) or "
            "'frames' with 'transform_matrix' (transforms.json); or pass format=..."
        )
    rows = _text_rows(data)
    if rows and len(rows[0][1]) == RE10K_ROW:
        return "re10k"
    raise TrajectoryFormatError(
        f"Cannot tell the format of {label}: it is not JSON, and its lines are not RealEstate10K rows of "
        f"{RE10K_ROW} numbers. Pass format=... (one of {', '.join(TRAJECTORY_FORMATS)})."
    )


def _expect(label: str, data, fmt: str):
    """``data`` if it is the kind of content ``fmt`` reads (dict, text or folder), else an error."""
    kinds = {dict: "a JSON object", str: "a text file", Path: "a COLMAP folder"}
    needed = {"re10k": str, "colmap": Path}.get(fmt, dict)
    if not isinstance(data, needed):
        got = next(name for kind, name in kinds.items() if isinstance(data, kind))
        raise TrajectoryFormatError(f"format={fmt!r} needs {kinds[needed]}, but {label} is {got}.")
    return data


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _as_trajectory(traj) -> CameraTrajectory:
    if isinstance(traj, CameraParameters):
        return CameraTrajectory(traj)
    if not isinstance(traj, CameraTrajectory):
        raise ConfigError(f"Expected a CameraTrajectory (or CameraParameters), got {type(traj).__name__}.")
    return traj


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


# --------------------------------------------------------------------------------------------
# worldstereo (own JSON)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# camera_json (official WorldStereo)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# transforms_json (nerfstudio)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# re10k (RealEstate10K text)
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


def _re10k_from_text(text: str, label: str, hints: _Hints):
    rows = _text_rows(text)
    if not rows:
        raise TrajectoryFormatError(f"{label} has no camera rows; a trajectory needs at least one.")
    for lineno, tokens in rows:
        if len(tokens) != RE10K_ROW or not all(map(_is_number, tokens)):
            raise TrajectoryFormatError(
                f"{label} line {lineno}: expected {RE10K_ROW} numbers (timestamp, fx/W fy/H cx/W cy/H, 0 0, "
                f"3x4 world-to-camera row by row), got {len(tokens)} values: {' '.join(tokens)[:80]!r}."
            )
    a = np.array([[float(t) for t in tokens] for _, tokens in rows])
    tags = _read_tags(text.splitlines()[:1], label)
    width, height = _size(tags.get("width"), tags.get("height"), hints, label)
    K = np.zeros((len(a), 3, 3))
    K[:, 0, 0], K[:, 1, 1] = a[:, 1] * width, a[:, 2] * height
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = a[:, 3] * width, a[:, 4] * height, 1.0
    w2c = np.concatenate([a[:, 7:].reshape(-1, 3, 4), np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(a), 1, 1))], axis=1)
    stamps = a[:, 0]
    from_stamps = None
    if len(a) > 1 and bool((np.diff(stamps) > 0).all()):
        from_stamps = 1e6 * (len(a) - 1) / (stamps[-1] - stamps[0])
    fps = _pick("fps", tags.get("fps", from_stamps), hints.fps, label)
    return _build(_c2w_from_w2c(w2c, label), K, width=width, height=height, fps=fps, label=label), {}


def _re10k_to_text(traj: CameraTrajectory) -> str:
    _pinhole_only(traj, "re10k")
    _warn_skew(traj, "re10k")
    K, w2c, W, H = _external_K(traj), _w2c(traj), traj.width, traj.height
    lines = [_tag_line(width=W, height=H, fps=traj.fps)]
    for i, (k, m) in enumerate(zip(K, w2c)):
        stamp = round(i * 1e6 / traj.fps)
        values = [k[0, 0] / W, k[1, 1] / H, k[0, 2] / W, k[1, 2] / H, 0.0, 0.0, *m[:3].ravel()]
        lines.append(" ".join([str(stamp)] + [_fmt(v) for v in values]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# colmap (text model)
# --------------------------------------------------------------------------------------------


def _colmap_folder(path: Path) -> Path:
    """The folder holding cameras.txt and images.txt, given it, a file in it, or a project with sparse/0."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder / "sparse" / "0", folder / "sparse"):
        if (candidate / "cameras.txt").is_file() and (candidate / "images.txt").is_file():
            return candidate
    if (folder / "cameras.bin").exists() or path.suffix == ".bin":
        raise TrajectoryFormatError(
            f"'{folder}' holds a binary COLMAP model; convert it to text with "
            "`colmap model_converter --input_path ... --output_path ... --output_type TXT`."
        )
    raise TrajectoryFormatError(f"'{folder}' is a folder without cameras.txt and images.txt, so not a COLMAP text model.")


def _read_colmap(folder: Path, label: str, hints: _Hints):
    cameras_label, images_label = f"'{folder / 'cameras.txt'}'", f"'{folder / 'images.txt'}'"
    cameras = _colmap_cameras((folder / "cameras.txt").read_text(encoding="utf-8"), cameras_label)
    images_text = (folder / "images.txt").read_text(encoding="utf-8")
    images = sorted(_colmap_images(images_text, images_label, cameras), key=lambda im: _natural(im[0]))
    if not images:
        raise TrajectoryFormatError(f"{images_label} lists no images; a trajectory needs at least one camera.")
    sizes = {cameras[cam][:2] for _, _, _, cam in images}
    if len(sizes) > 1:
        raise TrajectoryFormatError(f"{cameras_label}: the images use cameras of different sizes {sorted(sizes)}; all must share one.")
    [(width, height)] = sizes
    width, height = _size(width, height, hints, label)
    q = torch.tensor(np.array([im[1] for im in images]))
    w2c = np.tile(np.eye(4), (len(images), 1, 1))
    w2c[:, :3, :3] = quaternion_to_matrix(q).numpy()
    w2c[:, :3, 3] = [im[2] for im in images]
    K = np.stack([cameras[cam][2] for _, _, _, cam in images])
    fps = _pick("fps", _read_tags(images_text.splitlines(), images_label).get("fps"), hints.fps, label)
    traj = _build(_c2w_from_w2c(w2c, images_label), K, width=width, height=height, fps=fps, label=images_label)
    return traj, {"frame_names": [im[0] for im in images]}


def _colmap_cameras(text: str, label: str) -> dict[int, tuple[int, int, np.ndarray]]:
    """cameras.txt -> {camera id: (width, height, K (3,3) with +0.5 pixel centres)}."""
    cameras, distorted = {}, set()
    for lineno, tokens in _text_rows(text):
        model = tokens[1] if len(tokens) > 1 else ""
        if model not in COLMAP_MODELS:
            raise TrajectoryFormatError(
                f"{label} line {lineno}: camera model {model!r} is not supported; use one of {', '.join(COLMAP_MODELS)}."
            )
        try:
            cam_id, width, height = int(tokens[0]), int(tokens[2]), int(tokens[3])
            params = [float(t) for t in tokens[4:]]
        except (ValueError, IndexError):
            raise TrajectoryFormatError(f"{label} line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") from None
        if len(params) != COLMAP_MODELS[model]:
            raise TrajectoryFormatError(f"{label} line {lineno}: {model} takes {COLMAP_MODELS[model]} parameters, got {len(params)}.")
        single_f = model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
        fx, fy, cx, cy = (params[0], params[0], *params[1:3]) if single_f else params[:4]
        if any(params[3 if single_f else 4 :]):
            distorted.add(model)
        cameras[cam_id] = (width, height, np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
    if distorted:
        warnings.warn(f"{label}: lens distortion of {', '.join(sorted(distorted))} cameras is ignored.", stacklevel=4)
    return cameras


def _colmap_images(text: str, label: str, cameras: dict) -> list[tuple[str, list[float], list[float], int]]:
    """images.txt -> [(name, quaternion wxyz, translation, camera id)] of world-to-camera poses."""
    lines, images, i = text.splitlines(), [], 0
    while i < len(lines):
        lineno, tokens = i + 1, lines[i].split()
        i += 1
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            values, cam_id, name = [float(t) for t in tokens[1:8]], int(tokens[8]), " ".join(tokens[9:])
        except (ValueError, IndexError):
            raise TrajectoryFormatError(
                f"{label} line {lineno}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {lines[i - 1].strip()[:80]!r}."
            ) from None
        if not name:
            raise TrajectoryFormatError(f"{label} line {lineno}: the image has no NAME.")
        if cam_id not in cameras:
            raise TrajectoryFormatError(
                f"{label} line {lineno}: image {name!r} uses camera {cam_id}, which cameras.txt does not define "
                f"(it defines {sorted(cameras) or 'none'})."
            )
        images.append((name, values[:4], values[4:], cam_id))
        if i < len(lines) and len(lines[i].split()) % 3 == 0:
            i += 1  # the image's 2D points line (X Y POINT3D_ID)*, possibly empty
    return images


def _write_colmap(traj: CameraTrajectory, meta: dict, path: Path) -> Path:
    _pinhole_only(traj, "colmap")
    _warn_skew(traj, "colmap")
    folder = path.parent if path.suffix == ".txt" else path
    K, w2c = _external_K(traj), _w2c(traj)
    camera_ids: dict[tuple, int] = {}
    camera_lines = []
    for k in K:
        params = (k[0, 0], k[1, 1], k[0, 2], k[1, 2])
        if params not in camera_ids:
            camera_ids[params] = len(camera_ids) + 1
            camera_lines.append(f"{camera_ids[params]} PINHOLE {traj.width} {traj.height} {' '.join(map(_fmt, params))}")
    q = matrix_to_quaternion(torch.from_numpy(w2c[:, :3, :3])).numpy()
    image_lines = []
    for i, (name, qi, m, k) in enumerate(zip(_frame_names(meta, len(traj), "frame_{:05d}.png", sortable=True), q, w2c, K), 1):
        cam = camera_ids[(k[0, 0], k[1, 1], k[0, 2], k[1, 2])]
        image_lines += [f"{i} {' '.join(map(_fmt, [*qi, *m[:3, 3]]))} {cam} {name}", ""]
    cameras_txt = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(camera_lines)}",
    ]
    images_txt = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(traj)}, mean observations per image: 0",
        _tag_line(fps=traj.fps),
    ]
    points_txt = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        "# Number of points: 0, mean track length: 0",
    ]
    for name, lines in zip(COLMAP_FILES, (cameras_txt + camera_lines, images_txt + image_lines, points_txt)):
        atomic_write_text(folder / name, "\n".join(lines) + "\n")
    return folder


_READERS = {
    "worldstereo": _worldstereo_from_dict,
    "camera_json": _camera_json_from_dict,
    "transforms_json": _transforms_from_dict,
    "re10k": _re10k_from_text,
    "colmap": _read_colmap,
}
_DICT_WRITERS = {"worldstereo": _worldstereo_to_dict, "camera_json": _camera_json_to_dict, "transforms_json": _transforms_to_dict}
