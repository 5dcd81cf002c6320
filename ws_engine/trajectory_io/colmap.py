"""The ``colmap`` format: a COLMAP text model folder (cameras.txt, images.txt, points3D.txt)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..cameras import CameraTrajectory
from ..errors import TrajectoryFormatError
from ..io import atomic_write_text
from ..rotations import matrix_to_quaternion, quaternion_to_matrix
from ._common import (
    _build,
    _c2w_from_w2c,
    _external_K,
    _fmt,
    _frame_names,
    _Hints,
    _natural,
    _pick,
    _pinhole_only,
    _read_tags,
    _size,
    _tag_line,
    _text_rows,
    _w2c,
    _warn_skew,
)

COLMAP_FILES = ("cameras.txt", "images.txt", "points3D.txt")
# COLMAP model -> number of params; the first ones are f|fx fy, cx, cy, the rest distortion
COLMAP_MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}


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
