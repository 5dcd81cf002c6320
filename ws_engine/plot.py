"""A picture of a camera trajectory: top and side views with camera frustums, drawn with OpenCV.

World axes are the engine's OpenCV ones (x right, y down, z forward). The left panel looks down on
the x-z plane (x to the right, z up the panel, so forward motion goes up); the right panel looks at
the z-y plane from the side (z to the right, -y up, so up is up). Both keep an equal aspect.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .cameras import CameraParameters, CameraTrajectory
from .errors import ConfigError, ShapeMismatchError

__all__ = ["plot_trajectory", "save_trajectory_plot", "START_COLOR"]

START_COLOR = (0, 170, 0)  # RGB of the first camera
_FIRST, _LAST = np.array([40.0, 80.0, 230.0]), np.array([220.0, 30.0, 30.0])  # RGB gradient along the path
_PATH_COLOR = (90, 90, 90)
_TEXT_COLOR = (40, 40, 40)
_MAX_POINTS = 20_000
# panel axes: (world axis, sign) for the horizontal and the upward direction of each view
_VIEWS = (
    ("top view: x right, z forward", ((0, 1.0), (2, 1.0)), ("x", "z")),
    ("side view: z forward, -y up", ((2, 1.0), (1, -1.0)), ("z", "-y")),
)


def plot_trajectory(trajectory, *, size: tuple[int, int] = (512, 1024), frustum_scale: float | None = None, points=None, colors=None) -> torch.Tensor:
    """Draw ``trajectory`` (CameraTrajectory or batched CameraParameters) as an image (3,H,W) float32 in [0,1].

    Cameras are frustums (image-corner rays to depth ``frustum_scale``, default 0.15 of the path's
    extent, 1 for a path that does not move) coloured blue to red along the path; the first one is
    green and labelled "start". Panoramic cameras are a dot and a forward tick. ``points`` (N,3) and
    ``colors`` (N,3) in [0,1] (e.g. the scene's point cloud; up to 20k drawn) appear faintly beneath.
    """
    import cv2

    cameras = _cameras(trajectory)
    height, width = _check_size(size)
    c2w = cameras.c2wb.detach().cpu().double()
    positions = c2w[:, :3, 3]
    if frustum_scale is None:
        extent = float((positions.max(0).values - positions.min(0).values).norm())
        frustum_scale = 0.15 * extent if extent > 1e-9 else 1.0
    if not (isinstance(frustum_scale, (int, float)) and np.isfinite(frustum_scale) and frustum_scale > 0):
        raise ConfigError(f"frustum_scale must be a positive number, got {frustum_scale!r}.")
    outlines = _camera_outlines(cameras, c2w, float(frustum_scale)).numpy()  # (T,5,3): centre + 4 corners (or centre + tip)
    cloud = _cloud(points, colors)

    canvas = np.full((height, width, 3), 255, np.uint8)
    panel_w = width // 2
    for index, (title, axes, labels) in enumerate(_VIEWS):
        panel = np.full((height, panel_w, 3), 255, np.uint8)
        to_pixels = _panel_mapping(outlines.reshape(-1, 3), axes, panel_w, height)
        if cloud is not None:
            _draw_points(panel, to_pixels(cloud[0]), cloud[1])
        pixels = to_pixels(outlines.reshape(-1, 3)).reshape(*outlines.shape[:2], 2)  # (T,5,2)
        _draw_path(panel, pixels[:, 0])
        _draw_cameras(panel, pixels, cameras.model == "equirectangular")
        _draw_labels(panel, title, labels)
        canvas[:, index * panel_w : (index + 1) * panel_w] = panel
    cv2.line(canvas, (panel_w, 0), (panel_w, height - 1), (200, 200, 200), 1)
    return torch.from_numpy(canvas).permute(2, 0, 1).float().div(255.0)


def save_trajectory_plot(trajectory, path: str | os.PathLike, **kwargs) -> Path:
    """Draw ``trajectory`` with :func:`plot_trajectory` (same keyword arguments) and write it as a PNG."""
    from .io import save_image
    from .io_image import _output_path

    path = _output_path(path, (".png",), "a trajectory plot")
    return save_image(path, plot_trajectory(trajectory, **kwargs))


def _cameras(trajectory) -> CameraParameters:
    if isinstance(trajectory, CameraTrajectory):
        return trajectory.cameras
    if isinstance(trajectory, CameraParameters):
        return trajectory.as_batch()
    raise ConfigError(f"plot_trajectory needs a CameraTrajectory or CameraParameters, got {type(trajectory).__name__}.")


def _check_size(size) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size) and size[0] >= 64 and size[1] >= 128):
        raise ConfigError(f"size must be (height, width) with height >= 64 and width >= 128 pixels, got {size!r}.")
    return size[0], size[1]


def _camera_outlines(cameras: CameraParameters, c2w: torch.Tensor, depth: float) -> torch.Tensor:
    """(T,5,3) world points per camera: the centre, then the 4 image corners at ``depth`` (pinhole)
    or the tip of a forward tick and the centre repeated (equirectangular)."""
    centre = c2w[:, :3, 3]
    if cameras.model == "equirectangular":
        tip = centre + depth * c2w[:, :3, 2]
        return torch.stack([centre, tip, centre, centre, centre], dim=1)
    w, h = cameras.width - 1, cameras.height - 1
    corners = torch.tensor([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [w, h, 1.0], [0.0, h, 1.0]], dtype=torch.float64)
    rays = torch.linalg.solve(cameras.Kb.detach().cpu().double()[:, None], corners[None, :, :, None])[..., 0]  # (T,4,3), z = 1
    world = centre[:, None] + depth * torch.einsum("tij,tkj->tki", c2w[:, :3, :3], rays)
    return torch.cat([centre[:, None], world], dim=1)


def _cloud(points, colors) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to 20k points (M,3) and colours (M,3) uint8 (grey without ``colors``), a fixed random subset."""
    if points is None:
        return None
    points = torch.as_tensor(points).detach().cpu().double()
    if points.dim() != 2 or points.shape[1] != 3:
        raise ShapeMismatchError(f"points must have shape (N,3), got {tuple(points.shape)}.")
    if colors is None:
        colors = torch.full_like(points, 0.5)
    colors = torch.as_tensor(colors).detach().cpu().double()
    if colors.shape != points.shape:
        raise ShapeMismatchError(f"colors must have the shape of points {tuple(points.shape)}, got {tuple(colors.shape)}.")
    keep = torch.isfinite(points).all(1)
    points, colors = points[keep], colors[keep]
    if len(points) > _MAX_POINTS:
        pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:_MAX_POINTS]
        points, colors = points[pick], colors[pick]
    faint = 255 - 0.35 * (255 - colors.nan_to_num(0.5).clamp(0, 1) * 255)  # 35% colour over white
    return points.numpy(), faint.round().numpy().astype(np.uint8)


def _panel_mapping(bound_points: np.ndarray, axes, width: int, height: int):
    """A function world (N,3) -> pixel (N,2) float for one view, fitting ``bound_points`` with equal aspect."""
    (ax_h, sign_h), (ax_v, sign_v) = axes
    plane = lambda p: np.stack([sign_h * p[:, ax_h], sign_v * p[:, ax_v]], axis=1)  # noqa: E731
    flat = plane(bound_points)
    low, high = flat.min(0), flat.max(0)
    top, margin = int(0.09 * height), int(0.07 * min(width, height))  # room for the title, then a border
    avail = np.array([width - 2 * margin, height - top - 2 * margin], dtype=np.float64)
    scale = 1.0 / max(float(((high - low) / avail).max()), 1e-12)
    mid, centre = (low + high) / 2, np.array([width / 2, top + margin + avail[1] / 2])

    def to_pixels(points: np.ndarray) -> np.ndarray:
        xy = (plane(np.asarray(points, dtype=np.float64)) - mid) * scale
        return np.stack([centre[0] + xy[:, 0], centre[1] - xy[:, 1]], axis=1)

    return to_pixels


def _draw_points(panel: np.ndarray, pixels: np.ndarray, colors: np.ndarray) -> None:
    ij = np.round(pixels).astype(np.int64)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < panel.shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < panel.shape[0])
    panel[ij[inside, 1], ij[inside, 0]] = colors[inside]


def _draw_path(panel: np.ndarray, centres: np.ndarray) -> None:
    import cv2

    if len(centres) > 1:
        cv2.polylines(panel, [_fixed(centres)], False, _PATH_COLOR, 1, cv2.LINE_AA, shift=4)


MAX_FRUSTUMS = 24


def _draw_cameras(panel: np.ndarray, outlines: np.ndarray, panoramic: bool) -> None:
    """Frustums (T,5,2) (centre + 4 corners in pixels) from last to first, so earlier cameras lie on
    top; a long path shows at most ``MAX_FRUSTUMS`` evenly spaced frustums (first and last included)
    and a dot for every camera."""
    import cv2

    count = len(outlines)
    framed = set(np.linspace(0, count - 1, min(count, MAX_FRUSTUMS)).round().astype(int).tolist())
    fixed = _fixed(outlines)
    for index in reversed(range(count)):
        t = index / max(count - 1, 1)
        color = START_COLOR if index == 0 else tuple(int(c) for c in np.round((1 - t) * _FIRST + t * _LAST))
        thickness = 2 if index == 0 else 1
        pts = fixed[index]
        centre = tuple(pts[0].tolist())
        if index in framed and panoramic:
            cv2.line(panel, centre, tuple(pts[1].tolist()), color, thickness, cv2.LINE_AA, shift=4)
        elif index in framed:
            cv2.polylines(panel, [pts[1:]], True, color, thickness, cv2.LINE_AA, shift=4)
            for corner in pts[1:].tolist():
                cv2.line(panel, centre, tuple(corner), color, thickness, cv2.LINE_AA, shift=4)
        cv2.circle(panel, centre, (4 if index == 0 else 2) * 16, color, -1, cv2.LINE_AA, shift=4)
    centre = np.round(outlines[0][0]).astype(int)
    cv2.putText(panel, "start", (int(centre[0]) + 6, int(centre[1]) + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, START_COLOR, 1, cv2.LINE_AA)


def _draw_labels(panel: np.ndarray, title: str, labels: tuple[str, str]) -> None:
    """The view's title and two axis arrows (horizontal, up) in the lower left corner."""
    import cv2

    height, width = panel.shape[:2]
    font_scale = max(0.35, min(0.6, height / 900))
    cv2.putText(panel, title, (8, int(0.06 * height)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, _TEXT_COLOR, 1, cv2.LINE_AA)
    origin, length = (12, height - 12), max(16, int(0.06 * min(width, height)))
    cv2.arrowedLine(panel, origin, (origin[0] + length, origin[1]), _TEXT_COLOR, 1, cv2.LINE_AA, tipLength=0.25)
    cv2.arrowedLine(panel, origin, (origin[0], origin[1] - length), _TEXT_COLOR, 1, cv2.LINE_AA, tipLength=0.25)
    small = 0.8 * font_scale
    cv2.putText(panel, labels[0], (origin[0] + length + 4, origin[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, small, _TEXT_COLOR, 1, cv2.LINE_AA)
    cv2.putText(panel, labels[1], (origin[0] - 4, origin[1] - length - 6), cv2.FONT_HERSHEY_SIMPLEX, small, _TEXT_COLOR, 1, cv2.LINE_AA)


def _fixed(pixels: np.ndarray) -> np.ndarray:
    """Pixel coordinates (...,2) as int32 with 4 fractional bits (cv2 ``shift=4``), clipped to a safe range."""
    return np.clip(np.round(pixels * 16), -(2**24), 2**24).astype(np.int32)
