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
import os
from pathlib import Path
from typing import Any, Mapping, Union

import torch

from ..cameras import CameraParameters, CameraTrajectory
from ..errors import ConfigError, TrajectoryFormatError, check_choice
from ..io import atomic_write_text
from ._common import _dumps, _Hints, _json_numbers, _text_rows
from .camera_json import _camera_json_from_dict, _camera_json_to_dict
from .colmap import COLMAP_FILES, _colmap_folder, _read_colmap, _write_colmap
from .re10k import RE10K_ROW, _re10k_from_text, _re10k_to_text
from .transforms_json import _transforms_from_dict, _transforms_to_dict
from .worldstereo import FORMAT_NAME, _worldstereo_from_dict, _worldstereo_to_dict

# the formats' constants, still importable from ws_engine.trajectory_io as before the split
from ._common import DEFAULT_FPS, HALF_PIXEL  # noqa: F401
from .colmap import COLMAP_MODELS  # noqa: F401
from .transforms_json import DISTORTION_KEYS, NERFSTUDIO_PINHOLE_MODELS, OPENGL_FROM_OPENCV  # noqa: F401
from .worldstereo import FORMAT_VERSION  # noqa: F401

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

Source = Union[str, os.PathLike, Mapping]


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


def _as_trajectory(traj) -> CameraTrajectory:
    if isinstance(traj, CameraParameters):
        return CameraTrajectory(traj)
    if not isinstance(traj, CameraTrajectory):
        raise ConfigError(f"Expected a CameraTrajectory (or CameraParameters), got {type(traj).__name__}.")
    return traj


# format -> reader(content, label, hints) -> (trajectory, meta); JSON format -> writer(trajectory, meta) -> dict
_READERS = {
    "worldstereo": _worldstereo_from_dict,
    "camera_json": _camera_json_from_dict,
    "transforms_json": _transforms_from_dict,
    "re10k": _re10k_from_text,
    "colmap": _read_colmap,
}
_DICT_WRITERS = {"worldstereo": _worldstereo_to_dict, "camera_json": _camera_json_to_dict, "transforms_json": _transforms_to_dict}
