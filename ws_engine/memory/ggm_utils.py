"""Helpers of GlobalGeometricMemory: input checks, aggregations, windowed attention, state checks."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import CameraParameters
from ..errors import ConfigError, EmptyPointCloudError, ShapeMismatchError


def parse_batch(points, colors, features, weights, name: str, feature_dim: int, device):
    """Validated (P (M,3), C (M,3), Fe (M,F), W (M,)) on ``device``; raises before any work."""
    if points is None:
        raise EmptyPointCloudError(f"{name} is None; pass an (N,3) or (N,6) xyz(+rgb) array.")
    pts = as_tensor(points, name)
    if pts.dim() != 2 or pts.shape[1] not in (3, 6):
        raise ShapeMismatchError(f"{name} must have shape (N,3) xyz or (N,6) xyz+rgb, got {tuple(pts.shape)}.")
    if pts.shape[0] == 0:
        raise EmptyPointCloudError(f"{name} holds no points; pass at least one (e.g. unproject a depth map).")
    M = pts.shape[0]
    if pts.shape[1] == 6:
        if colors is not None:
            raise ShapeMismatchError(f"{name} is (N,6) xyz+rgb and colors= was given too; pass the colours once.")
        pts, colors = pts[:, :3], pts[:, 3:]
    pts = pts.to(device, torch.float32).contiguous()
    if not bool(torch.isfinite(pts).all()):
        raise ConfigError(f"{name} contains NaN or infinite coordinates; drop those points (e.g. mask depth > 0).")
    if colors is None:
        col = torch.full((M, 3), 0.5, device=device)
    else:
        col = as_tensor(colors, "colors")
        if col.dtype == torch.uint8:
            col = col.float() / 255
        if col.shape != (M, 3):
            raise ShapeMismatchError(f"colors must have shape ({M},3) to match the points, got {tuple(col.shape)}.")
        col = col.to(device, torch.float32)
        if not bool(((col >= 0) & (col <= 1)).all()):
            raise ConfigError("colors must be finite RGB in [0,1]; divide 0-255 values by 255.")
    if feature_dim:
        if features is None:
            raise ShapeMismatchError(f"This memory stores {feature_dim} features per point; pass features=(N,F).")
        fe = as_tensor(features, "features").to(device, torch.float32)
        if fe.shape != (M, feature_dim):
            raise ShapeMismatchError(f"features must have shape ({M},{feature_dim}), got {tuple(fe.shape)}.")
        if not bool(torch.isfinite(fe).all()):
            raise ConfigError("features contain NaN or infinity.")
    elif features is not None:
        raise ShapeMismatchError("features were given but this memory has feature_dim=0; construct it with feature_dim=F.")
    else:
        fe = torch.zeros(M, 0, device=device)
    if weights is None:
        wt = torch.ones(M, device=device)
    else:
        wt = as_tensor(weights, "weights").to(device, torch.float32).reshape(-1)
        if wt.shape != (M,) or not bool((torch.isfinite(wt) & (wt > 0)).all()):
            raise ConfigError(f"weights must be ({M},) positive finite confidences, got shape {tuple(wt.shape)}.")
    return pts, col.contiguous(), fe.contiguous(), wt


def validate_state(state: dict, feature_dim: int, max_points: int) -> tuple[int, torch.Tensor]:
    """Check a state dict's keys, shapes and values; returns (N, stamps int64)."""
    need = {"points", "colors", "weights", "stamps", "views"} | ({"features"} if feature_dim else set())
    missing = need - set(state)
    if missing:
        raise ShapeMismatchError(f"state is missing {sorted(missing)}; was it saved with feature_dim={feature_dim}?")
    pts = state["points"]
    N = pts.shape[0] if pts.dim() == 2 else -1
    expect = {"points": (N, 3), "colors": (N, 3), "weights": (N,), "stamps": (N,)}
    if feature_dim:
        expect["features"] = (N, feature_dim)
    for key, shape in expect.items():
        if tuple(state[key].shape) != shape or N < 0:
            raise ShapeMismatchError(f"state[{key!r}] has shape {tuple(state[key].shape)}, expected {shape}.")
    if state["views"].dim() != 3 or state["views"].shape[1:] != (4, 4):
        raise ShapeMismatchError(f"state['views'] must be (V,4,4), got {tuple(state['views'].shape)}.")
    if N > max_points:
        raise ConfigError(f"state holds {N} points but max_points is {max_points}; raise max_points.")
    if not bool(torch.isfinite(pts).all()) or not bool(torch.isfinite(state["colors"]).all()):
        raise ConfigError("state holds non-finite points or colours.")
    stamps = state["stamps"].long()
    if N > 1 and not bool((stamps[1:] > stamps[:-1]).all()):
        raise ConfigError("state['stamps'] must be strictly increasing (insertion order).")
    return N, stamps


# ----------------------------------------------------------------------------------------------
def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() or x.dtype == torch.uint8 else x.float()
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(f"{name} must be a numeric array or tensor, got {type(x).__name__}: {exc}") from None


def check_whole(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def check_threshold(value) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"merge_threshold must be a number, got {value!r}.") from None
    if not (math.isfinite(r) and r >= 0):
        raise ConfigError(f"merge_threshold must be finite and >= 0 (scene units; 0 disables merging), got {value!r}.")
    return r


def parse_pose(camera_pose, device) -> torch.Tensor | None:
    if camera_pose is None:
        return None
    if isinstance(camera_pose, CameraParameters):
        if len(camera_pose) != 1:
            raise ShapeMismatchError(f"camera_pose must be one camera, got {len(camera_pose)}.")
        return camera_pose.c2wb[0].to(device, torch.float32)
    pose = as_tensor(camera_pose, "camera_pose")
    if pose.shape != (4, 4):
        raise ShapeMismatchError(f"camera_pose must be a c2w (4,4) matrix or a CameraParameters, got {tuple(pose.shape)}.")
    return pose.to(device, torch.float32)


def as_cameras(cameras) -> CameraParameters:
    if isinstance(cameras, CameraParameters):
        return cameras.as_batch()
    inner = getattr(cameras, "cameras", None)
    if isinstance(inner, CameraParameters):
        return inner.as_batch()
    raise ShapeMismatchError(f"Expected CameraParameters or CameraTrajectory, got {type(cameras).__name__}.")


def aggregate(vals: torch.Tensor, dist: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce vals (R,k,D) over k with distances (R,k) and validity (R,k) -> (R,D); 0 if none valid."""
    any_valid = valid.any(1, keepdim=True)
    if how == "max":
        out = vals.masked_fill(~valid[..., None], -math.inf).amax(1)
        return torch.where(any_valid, out, 0.0)
    if how == "mean":
        w = valid.float()
    elif how == "weighted":
        w = valid.float() / (dist + 1e-8)
    else:  # attention
        sigma = torch.where(valid, dist, math.nan).nanmedian(1, keepdim=True).values.clamp(min=1e-12)
        logits = (-dist.square() / (2 * sigma.square())).masked_fill(~valid, -math.inf)
        w = torch.softmax(logits, 1).nan_to_num(0.0)
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return (w[..., None] * vals).sum(1)


def window_attention(latent: torch.Tensor, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel attention over the valid values of the 3x3 neighbourhood.

    latent, feat (N,C,H,W), mask (N,1,H,W) -> attended (N,C,H,W), 0 where no neighbour is valid.
    """
    N, C, H, W = latent.shape
    nb = F.unfold(feat, 3, padding=1).view(N, C, 9, H * W)
    nb_valid = F.unfold(mask, 3, padding=1).view(N, 9, H * W) > 0.5
    scores = (latent.reshape(N, C, 1, H * W) * nb).sum(1) / math.sqrt(C)  # (N,9,HW)
    attn = torch.softmax(scores.masked_fill(~nb_valid, -math.inf), 1).nan_to_num(0.0)
    return (attn[:, None] * nb).sum(2).view(N, C, H, W)
