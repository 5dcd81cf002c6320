"""Checked inputs of a reconstruction: frames, depths, confidences, cameras and method options.

Everything a user passes is validated here, before any work starts, and turned into one
:class:`Observations` record that every method reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from ..cameras import CameraParameters, CameraTrajectory
from ..errors import ConfigError, InvalidCameraError, InvalidDepthError, ShapeMismatchError

__all__ = ["Observations", "Option", "prepare_observations", "check_options", "scene_bounds", "ProgressCallback"]

ProgressCallback = Callable[[int, int, str], None]


class Observations(NamedTuple):
    """T posed RGB-D frames on one device.

    frames (T,3,H,W) in [0,1]; depths (T,H,W), 0 where unknown; confidences (T,H,W) in [0,1],
    0 where the depth is unknown; cameras: T pinhole cameras (batched ``CameraParameters``).
    """

    frames: torch.Tensor
    depths: torch.Tensor
    confidences: torch.Tensor
    cameras: CameraParameters

    @property
    def valid(self) -> torch.Tensor:
        """(T,H,W) bool: pixels with a known depth and a confidence above zero."""
        return self.depths > 0

    @property
    def num_frames(self) -> int:
        return int(self.depths.shape[0])

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres (T,3) in the world."""
        return self.cameras.c2wb[:, :3, 3].to(self.depths.dtype)

    def rays(self, frame: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World origins (R,3) and directions (R,3) through pixel coordinates u, v (R,) of frames
        (R,); directions have camera z = 1, so ``origin + depth * direction`` is the point.

        Works frame by frame on the rays of each frame (no per-ray copy of the camera matrices).
        """
        dtype = u.dtype
        K, c2w = self.cameras.Kb.to(dtype), self.cameras.c2wb.to(dtype)
        is_sorted = len(frame) < 2 or bool((frame[1:] >= frame[:-1]).all())
        order = None if is_sorted else torch.argsort(frame, stable=True)
        counts = torch.bincount(frame, minlength=len(K)).tolist()
        origins = torch.empty(len(u), 3, dtype=dtype, device=u.device)
        dirs = torch.empty_like(origins)
        start = 0
        for t, n in enumerate(counts):
            if n == 0:
                continue
            rows = slice(start, start + n) if order is None else order[start : start + n]
            start += n
            y = (v[rows] - K[t, 1, 2]) / K[t, 1, 1]
            x = (u[rows] - K[t, 0, 2] - K[t, 0, 1] * y) / K[t, 0, 0]
            d_cam = torch.stack([x, y, torch.ones_like(x)], 1)
            dirs[rows] = d_cam @ c2w[t, :3, :3].T
            origins[rows] = c2w[t, :3, 3]
        return origins, dirs

    def depth_points(self, max_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points (N,3), colours (N,3) and confidences (N,) of every valid depth pixel.

        ``max_points`` keeps an evenly strided subset (deterministic) when there are more.
        """
        T, H, W = self.depths.shape
        idx = self.valid.reshape(-1).nonzero().squeeze(1)
        if max_points is not None and len(idx) > max_points:
            idx = idx[:: math.ceil(len(idx) / max_points)]
        frame, pix = idx // (H * W), idx % (H * W)
        origins, dirs = self.rays(frame, (pix % W).to(self.depths.dtype), (pix // W).to(self.depths.dtype))
        points = origins + dirs * self.depths.reshape(-1)[idx, None]
        colors = self.frames.reshape(T, 3, H * W)[frame, :, pix]
        return points, colors, self.confidences.reshape(-1)[idx]

    def pixel_footprint(self) -> float:
        """Median size of one pixel on the surface (depth / focal length), in scene units."""
        f = self.cameras.Kb[:, 0, 0].to(self.depths.dtype)[:, None, None].expand_as(self.depths)
        valid = self.valid
        ratio = self.depths[valid] / f[valid]
        if len(ratio) > 1_000_000:
            ratio = ratio[:: math.ceil(len(ratio) / 1_000_000)]
        return float(ratio.median())


def scene_bounds(obs: Observations, percentile: float = 0.5, max_points: int = 500_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust axis-aligned bounds (lo (3,), hi (3,)) of the depth points.

    Per axis the ``percentile`` and ``100 - percentile`` percentiles, so a few stray depth values do
    not blow up the volume; callers pad them.
    """
    pts = obs.depth_points(max_points)[0]
    q = torch.tensor([percentile / 100, 1 - percentile / 100], dtype=pts.dtype, device=pts.device)
    lim = torch.quantile(pts, q, dim=0)
    return lim[0], lim[1]


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def _tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(f"{name} must be a tensor or numeric array, got {type(x).__name__}: {exc}") from None


def _check_frames(frames) -> torch.Tensor:
    frames = _tensor(frames, "frames")
    if frames.dim() == 3 and frames.shape[0] == 3:
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[1] != 3:
        hint = " It looks channels-last: use frames.permute(0, 3, 1, 2)." if frames.dim() == 4 and frames.shape[-1] == 3 else ""
        raise ShapeMismatchError(f"frames must have shape (T,3,H,W) (RGB video), got {tuple(frames.shape)}.{hint}")
    if frames.shape[0] == 0 or frames.shape[2] == 0 or frames.shape[3] == 0:
        raise ShapeMismatchError(f"frames must hold at least one non-empty frame, got shape {tuple(frames.shape)}.")
    if frames.dtype == torch.uint8:
        return frames.float() / 255
    if not frames.is_floating_point():
        raise ShapeMismatchError(f"frames must be float in [0,1] or uint8, got dtype {frames.dtype}.")
    frames = frames.float()
    if not bool(torch.isfinite(frames).all()):
        raise ConfigError("frames contain NaN or infinite values; give colours in [0,1].")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ConfigError(f"frames must be in [0,1], got values in [{lo:.3g}, {hi:.3g}]; divide 8-bit images by 255.")
    return frames.clamp(0, 1)


def _check_maps(x, name: str, T: int, H: int, W: int) -> torch.Tensor:
    x = _tensor(x, name)
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2 and T == 1:
        x = x[None]
    if tuple(x.shape) != (T, H, W):
        raise InvalidDepthError(
            f"{name} must have shape (T,H,W) = ({T},{H},{W}) to match the frames, got {tuple(x.shape)}; "
            "give one map per frame at the frames' resolution."
        )
    return x.float()


def _check_cameras(cameras, T: int, H: int, W: int) -> CameraParameters:
    if isinstance(cameras, CameraTrajectory):
        cameras = cameras.cameras
    if not isinstance(cameras, CameraParameters):
        raise ShapeMismatchError(f"cameras must be a CameraTrajectory or CameraParameters, got {type(cameras).__name__}.")
    cameras = cameras.as_batch()
    if cameras.model != "pinhole":
        raise InvalidCameraError(
            f"reconstruct needs pinhole cameras, got {cameras.model!r}; cut perspective views out of a panorama first."
        )
    if len(cameras) != T:
        raise ShapeMismatchError(f"{T} frames but {len(cameras)} cameras; give one camera per frame.")
    if (cameras.width, cameras.height) != (W, H):
        raise ShapeMismatchError(
            f"The frames are {W}x{H} but the cameras are {cameras.width}x{cameras.height}; "
            "rescale the cameras (CameraTrajectory.rescale) or resize the frames."
        )
    return cameras


def prepare_observations(frames, depths, cameras, confidences=None) -> Observations:
    """Validate and normalise the inputs of ``reconstruct`` (see there) into :class:`Observations`.

    Non-finite or negative depths count as unknown. Raises ShapeMismatchError, InvalidDepthError,
    InvalidCameraError or ConfigError with a message saying how to fix the input.
    """
    frames = _check_frames(frames)
    T, _, H, W = frames.shape
    depths = _check_maps(depths, "depths", T, H, W)
    cams = _check_cameras(cameras, T, H, W)
    device = frames.device
    depths = torch.where(torch.isfinite(depths) & (depths > 0), depths, 0.0).to(device)
    if confidences is None:
        conf = torch.ones_like(depths)
    else:
        conf = _check_maps(confidences, "confidences", T, H, W).to(device)
        if not bool(torch.isfinite(conf).all()) or float(conf.min()) < 0 or float(conf.max()) > 1:
            raise ConfigError("confidences must be finite and in [0,1] (1 = seen by the memory, lower = inpainted).")
    conf = torch.where(depths > 0, conf, 0.0)
    depths = torch.where(conf > 0, depths, 0.0)
    if not bool((depths > 0).any()):
        raise InvalidDepthError(
            "No frame has a single valid depth pixel (all depths are <= 0, NaN or have confidence 0); "
            "give metric depth maps, 0 only where the depth is unknown."
        )
    return Observations(frames, depths, conf, cams.to(device))


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One keyword option of a method: its default and allowed values.

    kind: ``int``, ``float``, ``bool`` or ``str``; low/high: inclusive bounds of numbers (low_open:
    strictly above low); choices: allowed strings; optional: None is allowed.
    """

    default: Any
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False

    def check(self, method: str, name: str, value):
        if value is None and self.optional:
            return None
        where = f"Option {name!r} of method {method!r}"
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"{where} must be True or False, got {value!r}.")
            return bool(value)
        if self.kind is str:
            if value not in self.choices:
                raise ConfigError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}.")
            return value
        ok_type = isinstance(value, (int, np.integer)) if self.kind is int else isinstance(value, (int, float, np.number))
        if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
            allowed = "an integer" if self.kind is int else "a finite number"
            raise ConfigError(f"{where} must be {allowed}{' or None' if self.optional else ''}, got {value!r}.")
        value = self.kind(value)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = "" if self.high is None else f"<= {self.high:g}"
            raise ConfigError(f"{where} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}.")
        return value


def check_options(method: str, options: dict, specs: dict[str, Option]) -> dict:
    """The method's full option dict: defaults overridden by ``options``, every value checked.

    An unknown name raises ConfigError listing the valid options of that method.
    """
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ConfigError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for method {method!r}. "
            f"Valid options: {', '.join(sorted(specs))}."
        )
    return {name: spec.check(method, name, options.get(name, spec.default)) for name, spec in specs.items()}
