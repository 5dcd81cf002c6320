"""A z-buffer triangle rasteriser (batched torch) for depth renders of a mesh."""

from __future__ import annotations

import torch

from ..cameras import CameraParameters
from ..geometry import project

__all__ = ["rasterize_depth"]


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of (a, b, p) for (...,2) points."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def rasterize_depth(vertices: torch.Tensor, faces: torch.Tensor, camera: CameraParameters, near: float = 1e-4,
                    chunk: int = 1 << 22) -> torch.Tensor:  # fmt: skip
    """Depth (H,W) of the nearest triangle at each pixel centre of one pinhole camera, 0 where empty.

    vertices (V,3) world, faces (F,3). Each triangle covers the pixel centres inside it (its
    bounding box is enumerated, in chunks of ``chunk`` candidate pixels); depth is interpolated
    perspective-correctly (1/z is linear in the image). Triangles with a vertex behind ``near`` are
    skipped.
    """
    H, W = camera.height, camera.width
    uv, z = project(vertices, camera)
    # outcodes: a triangle whose three vertices are all beyond one image side (or behind the near
    # plane) cannot cover a pixel
    code = ((uv[:, 0] < 0).int() | (uv[:, 0] > W - 1).int() << 1 | (uv[:, 1] < 0).int() << 2
            | (uv[:, 1] > H - 1).int() << 3 | (z <= near).int() << 4)  # fmt: skip
    c = code[faces]
    keep = ((c[:, 0] & c[:, 1] & c[:, 2]) == 0) & ((c[:, 0] | c[:, 1] | c[:, 2]) & 16 == 0)
    faces = faces[keep]
    tri, tz = uv[faces], z[faces]  # (F,3,2), (F,3)
    lo, hi = tri.min(1).values, tri.max(1).values
    umin, vmin = lo[:, 0].ceil().clamp(min=0), lo[:, 1].ceil().clamp(min=0)
    umax, vmax = hi[:, 0].floor().clamp(max=W - 1), hi[:, 1].floor().clamp(max=H - 1)
    area = _edge(tri[:, 0], tri[:, 1], tri[:, 2])
    keep = (umin <= umax) & (vmin <= vmax) & (area.abs() > 1e-12)
    tri, tz, area = tri[keep], tz[keep], area[keep]
    umin, vmin, umax, vmax = umin[keep].long(), vmin[keep].long(), umax[keep].long(), vmax[keep].long()
    bw = umax - umin + 1
    count = bw * (vmax - vmin + 1)
    zbuf = torch.full((H * W,), torch.inf, device=vertices.device)
    ends = torch.cumsum(count, 0)
    start_face = 0
    while start_face < len(count):
        base = int(ends[start_face - 1]) if start_face else 0
        stop = int(torch.searchsorted(ends, base + chunk, right=True))
        stop = max(stop, start_face + 1)
        sl = slice(start_face, stop)
        n = count[sl]
        fid = torch.repeat_interleave(torch.arange(len(n), device=n.device), n)
        local = torch.arange(int(n.sum()), device=n.device) - (torch.cumsum(n, 0) - n)[fid]
        pu = umin[sl][fid] + local % bw[sl][fid]
        pv = vmin[sl][fid] + local // bw[sl][fid]
        p = torch.stack([pu, pv], 1).to(tri.dtype)
        t = tri[sl][fid]
        a = area[sl][fid]
        w0 = _edge(t[:, 1], t[:, 2], p) / a
        w1 = _edge(t[:, 2], t[:, 0], p) / a
        w2 = 1 - w0 - w1
        inside = (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
        zz = tz[sl][fid]
        depth = 1 / (w0 / zz[:, 0] + w1 / zz[:, 1] + w2 / zz[:, 2])
        zbuf.scatter_reduce_(0, (pv * W + pu)[inside], depth[inside].to(zbuf.dtype), reduce="amin")
        start_face = stop
    return torch.where(torch.isfinite(zbuf), zbuf, 0.0).view(H, W)
