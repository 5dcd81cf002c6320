"""Quality figures of a reconstruction measured against the frames' depth maps and cameras.

- ``coverage``: the fraction of the frames' valid-depth pixels the reconstruction covers when it is
  rendered back into their cameras (points: ``render_points`` with radius 2; a mesh: rasterised
  triangles, since its vertices are far sparser than the pixels close to the camera) with a depth
  within ``COVERAGE_TOLERANCE`` (relative) of the frame's depth.
- ``mean_reprojection_error`` (pixels): for points seen by at least two frames (inside the image,
  depth within ``VISIBILITY_TOLERANCE`` of that frame's depth), frame a's own observation of the
  point (frame a's depth at the point's sub-pixel projection in a, interpolated in inverse depth,
  lifted to 3D) is projected into frame b and compared with the point's projection in b; averaged
  over all such (point, a, b). Zero when the depth maps agree with one another; a frame whose depth
  is off by a few percent shows up as parallax. Observations next to a depth edge (the four
  neighbouring depths spread by more than ``SMOOTH_TOLERANCE``) are left out: there the generous
  visibility tolerance could pair a point with the surface in front of it. Points are subsampled
  (seeded) for speed.
"""

from __future__ import annotations

import torch

from ..geometry import project, render_points
from .inputs import Observations
from .rasterize import rasterize_depth
from .types import Mesh
from .visibility import visible_frames

__all__ = [
    "COVERAGE_TOLERANCE",
    "VISIBILITY_TOLERANCE",
    "SMOOTH_TOLERANCE",
    "coverage",
    "sample_depth",
    "reprojection_error",
    "quality_metrics",
]

COVERAGE_TOLERANCE = 0.05
VISIBILITY_TOLERANCE = 0.1
SMOOTH_TOLERANCE = 0.03
_FRAMES_PER_RENDER = 4


def coverage(points: torch.Tensor, obs: Observations, mesh: Mesh | None = None, rel_tol: float = COVERAGE_TOLERANCE) -> float:
    """Fraction of valid-depth pixels whose rendered reconstruction depth agrees (see module doc)."""
    valid = obs.valid
    covered = 0
    for s in range(0, obs.num_frames, _FRAMES_PER_RENDER):
        frames = range(s, min(s + _FRAMES_PER_RENDER, obs.num_frames))
        if mesh is not None:
            depth = torch.stack([rasterize_depth(mesh.vertices, mesh.faces, obs.cameras[t]) for t in frames])
        else:
            depth = render_points(points, points[:, :1], obs.cameras[s : frames.stop], radius=2).depth
        d = obs.depths[s : frames.stop]
        ok = valid[s : frames.stop] & (depth > 0) & ((depth - d).abs() <= rel_tol * d)
        covered += int(ok.sum())
    return covered / max(int(valid.sum()), 1)


def sample_depth(depth: torch.Tensor, uv: torch.Tensor, smooth_tol: float = SMOOTH_TOLERANCE) -> torch.Tensor:
    """Depth (N,) of a map (H,W) at sub-pixel uv (N,2), bilinear in inverse depth (exact on planes).

    0 where any of the four neighbouring pixels is unknown or outside, or where they spread by more
    than ``smooth_tol`` (relative): near a depth edge a sub-pixel depth is ill-defined.
    """
    H, W = depth.shape
    u0, v0 = uv[:, 0].floor(), uv[:, 1].floor()
    inside = (u0 >= 0) & (v0 >= 0) & (u0 + 1 <= W - 1) & (v0 + 1 <= H - 1)
    u0 = u0.clamp(0, max(W - 2, 0)).long()
    v0 = v0.clamp(0, max(H - 2, 0)).long()
    u1, v1 = (u0 + 1).clamp(max=W - 1), (v0 + 1).clamp(max=H - 1)
    fu, fv = (uv[:, 0] - u0).clamp(0, 1), (uv[:, 1] - v0).clamp(0, 1)
    d = torch.stack([depth[v0, u0], depth[v0, u1], depth[v1, u0], depth[v1, u1]], 1)
    w = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], 1)
    smooth = inside & (d > 0).all(1) & (d.amax(1) <= d.amin(1) * (1 + smooth_tol))
    inv = (w / d.clamp(min=1e-12)).sum(1)
    return torch.where(smooth, 1 / inv.clamp(min=1e-12), 0.0)


def _lift(uv: torch.Tensor, depth: torch.Tensor, obs: Observations, t: int) -> torch.Tensor:
    """World points (N,3) at pixels uv (N,2) with depth (N,) in frame t."""
    origins, dirs = obs.rays(torch.full((len(uv),), t, device=uv.device), uv[:, 0], uv[:, 1])
    return origins + dirs * depth[:, None]


def reprojection_error(points: torch.Tensor, obs: Observations, max_samples: int = 20_000, seed: int = 0,
                       rel_tol: float = VISIBILITY_TOLERANCE) -> tuple[float, int]:  # fmt: skip
    """Mean reprojection error in pixels over multi-view points and the number of points seen in
    at least two frames (see module doc). The error is 0.0 when no point is seen twice."""
    T = obs.num_frames
    visible = visible_frames(points, obs, rel_tol)  # (T,N)
    multi = (visible.sum(0) >= 2).nonzero().squeeze(1)
    num_multi = len(multi)
    if num_multi == 0:
        return 0.0, 0
    if num_multi > max_samples:
        g = torch.Generator().manual_seed(seed)
        multi = multi[torch.randperm(num_multi, generator=g)[:max_samples].sort().values.to(multi.device)]
    seen = visible[:, multi]  # (T,S)
    uv, _ = project(points[multi], obs.cameras)  # (T,S,2)
    observed = []
    for t in range(T):
        d = sample_depth(obs.depths[t], uv[t])
        seen[t] &= d > 0
        observed.append(_lift(uv[t], d, obs, t))
    total, pairs = 0.0, 0
    for a in range(T):
        if not bool(seen[a].any()):
            continue
        uv_ab, _ = project(observed[a], obs.cameras)  # (T,S,2): a's observation in every frame b
        both = seen & seen[a]
        both[a] = False
        err = (uv_ab - uv).norm(dim=-1)
        total += float(err[both].double().sum())
        pairs += int(both.sum())
    return (total / pairs if pairs else 0.0), num_multi


def quality_metrics(points: torch.Tensor, obs: Observations, mesh: Mesh | None = None, max_samples: int = 20_000,
                    seed: int = 0) -> dict[str, float | int]:  # fmt: skip
    """num_points, num_faces, coverage, mean_reprojection_error, num_multi_view_points, extent
    (bounding-box diagonal) as plain Python numbers."""
    error, multi = reprojection_error(points, obs, max_samples, seed)
    extent = float((points.max(0).values - points.min(0).values).norm()) if len(points) else 0.0
    return {
        "num_points": int(len(points)),
        "num_faces": int(mesh.num_faces) if mesh is not None else 0,
        "coverage": float(coverage(points, obs, mesh)),
        "mean_reprojection_error": float(error),
        "num_multi_view_points": multi,
        "extent": extent,
    }
