"""Which frames see a point: projection plus a depth agreement test against each frame's depth."""

from __future__ import annotations

import torch

from .inputs import Observations

__all__ = ["nearest_pixel", "visible_frames"]


def nearest_pixel(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, height: int, width: int):
    """Flat index (long) of the pixel nearest to (u, v) and whether it is in the image with depth
    z > 0 (bool); all of one shape, the inputs are left unchanged."""
    u, v = u.round(), v.round()
    inside = (z > 0) & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    flat = v.clamp_(0, height - 1).mul_(width).add_(u.clamp_(0, width - 1)).long()
    return flat, inside


def visible_frames(points: torch.Tensor, obs: Observations, rel_tol: float, chunk: int = 131_072) -> torch.Tensor:
    """(T,N) bool: frame t sees point n: it projects inside the image, in front of the camera, and
    within ``rel_tol`` (relative) of the frame's known depth at the nearest pixel.

    All frames at once per chunk of points: one (3T,4) x (4,chunk) product gives every pixel
    coordinate, one gather every depth."""
    T, H, W = obs.depths.shape
    dtype = points.dtype
    w2c = obs.cameras.w2c.to(dtype).reshape(T, 4, 4)
    P = torch.matmul(obs.cameras.Kb.to(dtype), w2c[:, :3, :]).reshape(3 * T, 4)
    depth = obs.depths.reshape(T, H * W)
    out = torch.empty(T, len(points), dtype=torch.bool, device=points.device)
    for s in range(0, len(points), chunk):
        u, v, z = torch.addmm(P[:, 3:], P[:, :3], points[s : s + chunk].T).view(T, 3, -1).unbind(1)
        inv = torch.where(z > 0, z, 1.0).reciprocal_()
        flat, inside = nearest_pixel(u.mul_(inv), v.mul_(inv), z, H, W)
        d = depth.gather(1, flat)
        out[:, s : s + chunk] = inside & (d > 0) & ((z - d).abs() <= rel_tol * d)
    return out
