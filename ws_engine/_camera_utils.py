"""Low-level helpers shared by cameras.py and presets.py: tensor coercion, argument checks and the
intrinsics of a field of view. Import ``intrinsics_from_fov`` from :mod:`ws_engine.cameras`."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ConfigError, InvalidCameraError, ShapeMismatchError, check_choice


def _as_tensor(x, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:  # lists and arrays become float32, like every engine tensor
            t = torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype or torch.float32)
        except (TypeError, ValueError) as exc:
            raise ShapeMismatchError(f"{name} must be a numeric array or tensor, got {type(x).__name__}: {exc}") from None
    if dtype is not None:
        return t.to(dtype)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def intrinsics_from_fov(fov: float, width: int, height: int, fov_axis: str = "horizontal") -> torch.Tensor:
    """K (3,3) of a centred pinhole camera with a field of view ``fov`` in degrees along ``fov_axis``."""
    check_choice("fov axis", fov_axis, ("horizontal", "vertical"))
    try:
        degrees = float(fov)
    except (TypeError, ValueError):
        degrees = math.nan
    if not (0.0 < degrees < 180.0):
        raise InvalidCameraError(f"Field of view must be a number of degrees between 0 and 180 (exclusive), got {fov!r}.")
    size = width if fov_axis == "horizontal" else height
    f = (size / 2.0) / math.tan(math.radians(degrees) / 2.0)
    return torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _check_frames(num_frames) -> int:
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or int(num_frames) < 1:
        raise ConfigError(f"num_frames must be a whole number >= 1, got {num_frames!r}.")
    return int(num_frames)


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    return v
