"""Geometry: unproject, project, z-buffer point splatting, correspondences, depth completion.

Cameras follow OpenCV (x right, y down, z forward), pixel centres at integer coordinates.
Pinhole depth is the z coordinate in the camera; equirectangular depth is the distance along the
ray (longitude spans the width, latitude the height, +z at the image centre, +y down).
Every function is batched torch and runs on CPU and CUDA alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .cameras import CameraParameters
from .cameras import rigid_inverse as _rigid_inverse
from .errors import EmptyPointCloudError, InvalidDepthError, ShapeMismatchError

__all__ = [
    "RenderOutput",
    "Correspondences",
    "pixel_grid",
    "camera_rays",
    "unproject",
    "project",
    "render_points",
    "correspondences",
    "complete_depth",
    "normals_from_depth",
]


class RenderOutput(NamedTuple):
    """What a point render returns.

    rgb (T,C,H,W) colours (0 where empty), depth (T,H,W) (0 where empty), mask (T,H,W) bool (True
    where a point landed), index (T,H,W) long: the winning point per pixel, -1 where empty.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor


class Correspondences(NamedTuple):
    """Where each pixel of view A lands in view B.

    uv (H,W,2) pixel coordinates in B, depth (H,W) its depth in B, valid (H,W) bool: A's pixel has
    depth, lands inside B in front of the camera and is not occluded there.
    """

    uv: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor


def _check_camera(camera) -> CameraParameters:
    if not isinstance(camera, CameraParameters):
        # a CameraTrajectory carries its batched cameras
        cams = getattr(camera, "cameras", None)
        if isinstance(cams, CameraParameters):
            return cams
        raise ShapeMismatchError(f"Expected CameraParameters or CameraTrajectory, got {type(camera).__name__}.")
    return camera


def _as_float_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a floating tensor (arrays and lists become float32)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    try:
        return torch.as_tensor(x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeMismatchError(f"{name} must be a numeric array or tensor: {exc}") from None


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centre coordinates (H,W,2) as (u, v) = (column, row)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([u, v], dim=-1)


def camera_rays(camera: CameraParameters, dtype=torch.float32) -> torch.Tensor:
    """Ray directions in camera coordinates (B,H,W,3).

    Pinhole rays have z = 1 (so ``depth * ray`` is the point); equirectangular rays have unit length.
    """
    camera = _check_camera(camera)
    H, W, dev = camera.height, camera.width, camera.device
    uv = pixel_grid(H, W, dev, dtype)
    if camera.model == "equirectangular":
        lon = ((uv[..., 0] + 0.5) / W - 0.5) * (2 * math.pi)
        lat = ((uv[..., 1] + 0.5) / H - 0.5) * math.pi
        d = torch.stack([torch.cos(lat) * torch.sin(lon), torch.sin(lat), torch.cos(lat) * torch.cos(lon)], -1)
        return d.expand(len(camera), H, W, 3)
    Kinv = torch.linalg.inv(camera.Kb.to(torch.float64)).to(dtype)  # (B,3,3)
    hom = torch.cat([uv, torch.ones_like(uv[..., :1])], -1)  # (H,W,3)
    return torch.einsum("bij,hwj->bhwi", Kinv, hom)


def unproject(depth: torch.Tensor, camera: CameraParameters, world: bool = True) -> torch.Tensor:
    """Lift a depth map to 3D points.

    Args:
        depth: (H,W) or (B,H,W) depth (z for pinhole, ray distance for equirectangular).
        camera: one camera, or B cameras for a (B,H,W) depth.
        world: points in world coordinates (default) or camera coordinates.
    Returns:
        points (H,W,3) or (B,H,W,3); pixels with depth <= 0 or non-finite lift to garbage and must
        be masked by the caller with ``depth > 0``.
    """
    camera = _check_camera(camera)
    if not isinstance(depth, torch.Tensor):
        depth = torch.as_tensor(depth, dtype=torch.float32)
    single = depth.dim() == 2
    d = depth[None] if single else depth
    if d.dim() != 3 or d.shape[-2:] != (camera.height, camera.width):
        raise InvalidDepthError(
            f"Depth must have shape (H,W) or (B,H,W) = ({camera.height},{camera.width}) for a "
            f"{camera.width}x{camera.height} camera, got {tuple(depth.shape)}. Resize the depth map or the camera."
        )
    if len(camera) not in (1, d.shape[0]):
        raise ShapeMismatchError(f"{d.shape[0]} depth maps but {len(camera)} cameras; give one camera per map or one for all.")
    d = d.to(camera.device)
    dtype = d.dtype if d.is_floating_point() else torch.float32
    pts = camera_rays(camera, dtype) * d[..., None].to(dtype)  # (B,H,W,3)
    if world:
        c2w = camera.c2wb.to(dtype)
        pts = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], pts.expand(len(c2w), *pts.shape[1:]) if pts.shape[0] == 1 else pts)
        pts = pts + c2w[:, None, None, :3, 3]
    return pts[0] if single and pts.shape[0] == 1 else pts


def project(points: torch.Tensor, camera: CameraParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into cameras.

    Args:
        points: (N,3), or (B,N,3) with one camera or B cameras.
        camera: one camera or B cameras; (N,3) points with B cameras broadcast to (B,N,...).
    Returns:
        uv: pixel coordinates (N,2) or (B,N,2) (column, row; centres at integers).
        depth: (N,) or (B,N): z in the camera for pinhole (<= 0 means behind the camera),
            distance for equirectangular.
    """
    camera = _check_camera(camera)
    if points.shape[-1] != 3 or points.dim() not in (2, 3):
        raise ShapeMismatchError(f"Points must have shape (N,3) or (B,N,3), got {tuple(points.shape)}.")
    if points.dim() == 3 and len(camera) not in (1, points.shape[0]):
        raise ShapeMismatchError(f"{points.shape[0]} point batches but {len(camera)} cameras.")
    dtype = points.dtype if points.is_floating_point() else torch.float32
    if points.dim() == 2:
        u, v, depth = _pixel_rows(points.to(dtype), camera.as_batch(), safe=True)
        uv = torch.stack([u, v], -1)
        return (uv, depth) if camera.batched else (uv[0], depth[0])
    w2c = camera.w2c.to(points.device, dtype)
    w2c = w2c if w2c.dim() == 3 else w2c[None]
    p = points.to(dtype)
    cam = torch.matmul(p, w2c[:, :3, :3].transpose(-1, -2)) + w2c[:, None, :3, 3]  # (B,N,3)
    if camera.model == "equirectangular":
        u, v, depth = _equirect_pixels(*cam.unbind(-1), camera.width, camera.height)
        uv = torch.stack([u, v], -1)
    else:
        K = camera.Kb.to(points.device, dtype)
        z = cam[..., 2]
        zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        xy = cam[..., :2] / zs[..., None]
        u = K[:, None, 0, 0] * xy[..., 0] + K[:, None, 0, 1] * xy[..., 1] + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * xy[..., 1] + K[:, None, 1, 2]
        uv, depth = torch.stack([u, v], -1), z
    return uv, depth


_EMPTY = torch.iinfo(torch.int64).max
_ARANGE: dict[torch.device, torch.Tensor] = {}


def _arange(n: int, device: torch.device) -> torch.Tensor:
    """A cached ``arange(n)`` (int64): the point ids packed into z-buffer keys."""
    cached = _ARANGE.get(device)
    if cached is None or len(cached) < n:
        cached = _ARANGE[device] = torch.arange(max(n, 1024), device=device, dtype=torch.int64)
    return cached[:n]


def splat_offsets(radius: float) -> list[tuple[int, int]]:
    """Pixel offsets (dy, dx) a point covers around its nearest pixel: dx² + dy² < radius²."""
    r = int(math.ceil(radius))
    return [(dy, dx) for dy in range(-r + 1, r) for dx in range(-r + 1, r) if dx * dx + dy * dy < radius * radius]


def _equirect_pixels(x, y, z, width: int, height: int):
    """Equirectangular pixel u, v and distance of camera-frame coordinates x, y, z (same shapes)."""
    r = torch.sqrt(x * x + y * y + z * z)
    lon = torch.atan2(x, z)
    lat = torch.asin((y / r.clamp(min=1e-12)).clamp(-1, 1))
    return (lon / (2 * math.pi) + 0.5) * width - 0.5, (lat / math.pi + 0.5) * height - 0.5, r


def _affine_rows(points: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``M[:, :3] @ points.T + M[:, 3:]``: (R,N) rows from points (N,3) and a matrix M (R,4)."""
    if M.shape[0] == 3 and points.stride(1) == 1 and points.stride(0) > 1:
        # row-major (N,3), one camera: fused multiply-adds over the strided columns beat a GEMM
        # that must read the transposed layout (column-major input, like the global memory's
        # mirror, takes the GEMM at full speed)
        x, y, z = points.unbind(1)
        m = M.tolist()
        return torch.stack([torch.mul(x, r[0]).add_(y, alpha=r[1]).add_(z, alpha=r[2]).add_(r[3]) for r in m])
    return torch.addmm(M[:, 3:], M[:, :3], points.T)


def _pixel_rows(points: torch.Tensor, cams: CameraParameters, safe: bool = False):
    """Pixel u, v and depth (each (T,N)) of points (N,3) in a batch of T cameras.

    Pinhole depth is z (K folded into the world-to-camera matrix: one pass over the points);
    equirectangular depth is the distance. ``safe`` keeps u, v finite for z = 0 (the renderer
    drops those points anyway and skips that pass).
    """
    T, dtype = len(cams), points.dtype
    w2c = _rigid_inverse(cams.c2wb.to(points.device, dtype))
    if cams.model == "equirectangular":
        x, y, z = _affine_rows(points, w2c[:, :3, :].reshape(-1, 4)).view(T, 3, -1).unbind(1)
        return _equirect_pixels(x, y, z, cams.width, cams.height)
    P = torch.matmul(cams.Kb.to(points.device, dtype), w2c[:, :3, :]).reshape(-1, 4)  # (T*3,4)
    u, v, z = _affine_rows(points, P).view(T, 3, -1).unbind(1)
    inv_z = (torch.where(z.abs() < 1e-12, 1e-12, z) if safe else z).reciprocal()
    return u.mul_(inv_z), v.mul_(inv_z), z


def _dilate_keys(keys: torch.Tensor, radius: float, wrap: bool) -> torch.Tensor:
    """Min-filter packed z-buffer keys (T,H,W) over the splat disk (exactly a disk splat)."""
    offsets = [o for o in splat_offsets(radius) if o != (0, 0)]
    if not offsets:
        return keys
    r = int(math.ceil(radius)) - 1
    T, H, W = keys.shape
    padded = torch.full((T, H + 2 * r, W + 2 * r), _EMPTY, dtype=keys.dtype, device=keys.device)
    padded[:, r : r + H, r : r + W] = keys
    if wrap and r:  # equirectangular: longitude wraps around
        padded[:, r : r + H, :r] = keys[..., W - r :]
        padded[:, r : r + H, r + W :] = keys[..., :r]
    out = keys.clone()
    for dy, dx in offsets:
        torch.minimum(out, padded[:, r + dy : r + dy + H, r + dx : r + dx + W], out=out)
    return out


def render_points(
    points: torch.Tensor,
    colors: torch.Tensor,
    cameras,
    radius: float = 1,
    near: float = 1e-4,
) -> RenderOutput:
    """Z-buffer point splatting into T cameras in one batched pass.

    Args:
        points: (N,3) world points.
        colors: (N,C) per-point values (RGB in [0,1], or any features).
        cameras: CameraParameters (single -> T=1, or a batch of T) or a CameraTrajectory,
            pinhole or equirectangular.
        radius: a point covers the pixels whose offset from its nearest pixel satisfies
            dx² + dy² < radius² (radius=1: the nearest pixel only; 2: a 3x3 block).
        near: points with depth <= near (behind the camera) are dropped.
    Returns:
        RenderOutput(rgb (T,C,H,W), depth (T,H,W), mask (T,H,W) bool, index (T,H,W) long).

    The nearest point wins each pixel; ties in depth go to the lower point index, so the result is
    deterministic. Depth and point index are packed into one int64 key, so a single
    ``scatter_reduce(amin)`` resolves visibility; larger radii min-filter that z-buffer in image
    space, which is exactly a disk splat at the cost of a few image-sized passes.
    """
    cams = _check_camera(cameras).as_batch()
    points, colors = _as_float_tensor(points, "points"), _as_float_tensor(colors, "colors")
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ShapeMismatchError(f"points must have shape (N,3), got {tuple(points.shape)}.")
    if points.shape[0] == 0:
        raise EmptyPointCloudError("Cannot render an empty point cloud; add points first (e.g. unproject a depth map).")
    if colors.dim() != 2 or colors.shape[0] != points.shape[0]:
        raise ShapeMismatchError(f"colors must have shape (N,C) with N={points.shape[0]}, got {tuple(colors.shape)}.")
    if points.shape[0] >= 2**31:
        raise ShapeMismatchError("render_points handles at most 2**31 - 1 points per call; render in chunks.")
    if not radius >= 1:
        raise ShapeMismatchError(f"radius must be >= 1 pixel, got {radius}.")
    T, H, W = len(cams), cams.height, cams.width
    pts = points
    equirect = cams.model == "equirectangular"
    # a point just outside the image still covers border pixels with radius > 1: splat into a
    # z-buffer with a margin, then crop (longitude wraps around instead on a panorama)
    my = int(math.ceil(radius)) - 1
    mx = 0 if equirect else my
    Hp, Wp = H + 2 * my, W + 2 * mx
    # The loop below touches N*T elements; it is written with in-place ops so that a 1M-point
    # render allocates few large temporaries (each fresh allocation costs page faults).
    u, v, z = _pixel_rows(pts, cams)  # (T,N) each
    valid = z > near
    u.round_().add_(mx)
    v.round_().add_(my)
    half_w, half_h = (Wp - 1) / 2, (Hp - 1) / 2  # 0 <= u <= Wp-1  <=>  |u - (Wp-1)/2| <= (Wp-1)/2
    valid &= (u - half_w).abs_() <= half_w
    valid &= (v - half_h).abs_() <= half_h
    if T * Hp * Wp < 2**24 and u.dtype == torch.float32:  # exact in float32: skip two int conversions
        pix = v.mul_(Wp).add_(u)
        if T > 1:
            pix += (torch.arange(T, device=pix.device, dtype=pix.dtype) * (Hp * Wp))[:, None]
    else:
        pix = v.to(torch.int64).mul_(Wp).add_(u.to(torch.int64))
        pix += (torch.arange(T, device=pix.device) * (Hp * Wp))[:, None]
    pix = pix.masked_fill_(~valid, T * Hp * Wp).to(torch.int64)  # invalid points land in a dump slot
    keys = z.to(torch.float32).view(torch.int32).to(torch.int64)  # ordered like z for z > 0
    keys.bitwise_left_shift_(32).bitwise_or_(_arange(pts.shape[0], pts.device))
    zbuf = torch.full((T * Hp * Wp + 1,), _EMPTY, dtype=torch.int64, device=pts.device)
    zbuf.scatter_reduce_(0, pix.view(-1), keys.view(-1), reduce="amin")
    zbuf = zbuf[:-1].view(T, Hp, Wp)
    if radius > 1:
        zbuf = _dilate_keys(zbuf, radius, wrap=equirect)[:, my : my + H, mx : mx + W]
    mask = zbuf != _EMPTY
    index = torch.where(mask, zbuf & 0xFFFFFFFF, -1)
    depth = torch.where(mask, (zbuf >> 32).to(torch.int32).view(torch.float32), 0.0)
    rgb = colors.index_select(0, index.clamp(min=0).view(-1)).view(T, H, W, -1)
    rgb = rgb.permute(0, 3, 1, 2) * mask[:, None].to(colors.dtype)  # (T,C,H,W)
    return RenderOutput(rgb, depth, mask, index)


def _check_depth(depth, camera: CameraParameters | None = None, name: str = "depth") -> torch.Tensor:
    """A float depth tensor (H,W) or (B,H,W) with at least one valid (finite, > 0) pixel."""
    if not isinstance(depth, torch.Tensor):
        depth = torch.as_tensor(depth)
    if depth.dim() not in (2, 3) or depth.numel() == 0:
        raise InvalidDepthError(f"{name} must have shape (H,W) or (B,H,W), got {tuple(depth.shape)}.")
    if camera is not None and depth.shape[-2:] != (camera.height, camera.width):
        raise InvalidDepthError(
            f"{name} is {depth.shape[-1]}x{depth.shape[-2]} but the camera is {camera.width}x{camera.height}; "
            "resize the depth map or rescale the camera (CameraParameters.rescale)."
        )
    depth = depth if depth.is_floating_point() else depth.float()
    if not bool(((depth > 0) & torch.isfinite(depth)).any()):
        raise InvalidDepthError(f"{name} has no valid pixel (all values are <= 0, NaN or infinite).")
    return depth


def correspondences(
    depth_a: torch.Tensor,
    cam_a: CameraParameters,
    cam_b: CameraParameters,
    depth_b: torch.Tensor | None = None,
    rel_tol: float = 0.02,
    splat_radius: float = 2,
) -> Correspondences:
    """Where the pixels of view A land in view B, with an occlusion check.

    Args:
        depth_a: (H,W) depth of view A (<= 0 marks unknown pixels).
        cam_a: camera of A (single); cam_b: camera of B (single, any size or model).
        depth_b: optional (H_b,W_b) depth of B. A pixel is occluded when it lands more than
            ``rel_tol`` (relative) behind B's depth at that pixel. Without it, A's own points are
            z-buffered into B (``splat_radius``) and must be the front surface there.
    Returns:
        Correspondences(uv (H,W,2), depth (H,W), valid (H,W) bool).
    """
    cam_a, cam_b = _check_camera(cam_a), _check_camera(cam_b)
    if len(cam_a) != 1 or len(cam_b) != 1:
        raise ShapeMismatchError("correspondences takes one camera for A and one for B.")
    depth_a = _check_depth(depth_a, cam_a, "depth_a")
    if depth_a.dim() != 2:
        raise InvalidDepthError(f"depth_a must be a single (H,W) map, got {tuple(depth_a.shape)}.")
    depth_a = depth_a.to(cam_a.device)
    has_depth = (depth_a > 0) & torch.isfinite(depth_a)
    pts = unproject(torch.where(has_depth, depth_a, 1.0), cam_a).reshape(-1, 3)
    uv, z = project(pts, cam_b[0])
    Hb, Wb = cam_b.height, cam_b.width
    inside = has_depth.reshape(-1) & (z > 1e-6) & (uv[:, 0] > -0.5) & (uv[:, 0] < Wb - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < Hb - 0.5)
    ui = torch.round(uv[:, 0]).long().clamp(0, Wb - 1)
    vi = torch.round(uv[:, 1]).long().clamp(0, Hb - 1)
    if depth_b is not None:
        depth_b = _check_depth(depth_b, cam_b, "depth_b").to(cam_a.device)
        ref = depth_b.reshape(-1, Hb, Wb)[0][vi, ui]
        visible = (ref <= 0) | ~torch.isfinite(ref) | (z <= ref * (1 + rel_tol))
    else:
        sel = inside.nonzero().flatten()
        visible = torch.zeros_like(inside)
        if len(sel):
            zb = render_points(pts[sel], pts[sel, :1], cam_b, radius=splat_radius).depth[0]
            visible[sel] = z[sel] <= zb[vi[sel], ui[sel]] * (1 + rel_tol)
    H, W = depth_a.shape
    return Correspondences(uv.reshape(H, W, 2), z.reshape(H, W), (inside & visible).reshape(H, W))


def _nearest_known(d: torch.Tensor, known: torch.Tensor, dim: int, reverse: bool):
    """Depth of the nearest known pixel before each pixel along ``dim``, its distance (inf if none)
    and its position along ``dim`` (long, clamped to 0 where there is none)."""
    if reverse:
        d, known = d.flip(dim), known.flip(dim)
    n = d.shape[dim]
    pos = torch.arange(n, device=d.device).view(-1, *[1] * (d.dim() - 1 - dim))
    last = torch.where(known, pos, -1).cummax(dim=dim).values
    source = last.clamp(min=0)
    value = torch.gather(d, dim, source)
    dist = torch.where(last >= 0, (pos - last).to(d.dtype), torch.inf)
    if reverse:
        value, dist, source = value.flip(dim), dist.flip(dim), (n - 1 - source).flip(dim)
    return value, dist, source


def complete_depth(depth: torch.Tensor, mask: torch.Tensor | None = None, background_tolerance: float = 0.2) -> torch.Tensor:
    """Fill the holes of a depth map, preferring the background (the larger depth).

    Args:
        depth: (H,W) or (B,H,W).
        mask: bool, same shape, True where ``depth`` is known (default: finite and > 0).
        background_tolerance: relative band below the farthest candidate that still counts as
            background.
    Returns:
        depth of the same shape, known pixels unchanged. Each hole pixel looks for the nearest known
        pixel left, right, up and down; candidates within ``background_tolerance`` of the farthest
        one are blended by inverse distance. A disocclusion between a near and a far surface is so
        filled with the far surface, and a hole inside one surface is interpolated smoothly.
    """
    return complete_background(depth, mask, None, background_tolerance)[0]


def complete_background(depth: torch.Tensor, mask: torch.Tensor | None, values: torch.Tensor | None, background_tolerance: float = 0.2):
    """:func:`complete_depth` that also carries per-pixel ``values`` (C,H,W) or (B,C,H,W) along:
    a hole pixel gets the blend of the values of the same background candidates as its depth.
    Returns (depth, values) (values None when not given)."""
    d = _check_depth(depth) if mask is None else torch.as_tensor(depth)
    single = d.dim() == 2
    d = (d[None] if single else d).float() if not d.is_floating_point() else (d[None] if single else d)
    known = ((d > 0) & torch.isfinite(d)) if mask is None else (mask[None] if single else mask).to(torch.bool)
    if known.shape != d.shape:
        raise InvalidDepthError(f"mask shape {tuple(known.shape)} does not match depth shape {tuple(d.shape)}.")
    if not bool(known.flatten(1).any(1).all()):
        raise InvalidDepthError("A depth map to complete has no known pixel; give at least one valid depth.")
    vals = None
    if values is not None:
        vals = values[None] if single else values  # (B,C,H,W)
        if vals.shape[0] != d.shape[0] or vals.shape[-2:] != d.shape[-2:]:
            raise ShapeMismatchError(f"values {tuple(values.shape)} do not match depth {tuple(depth.shape)}.")
        vals = torch.where(known[:, None], vals, 0.0)
    out = torch.where(known, d, 0.0)
    while not bool(known.all()):  # at most two passes: rows/columns of known pixels, then the rest
        cands = [_nearest_known(out, known, dim, rev) for dim in (1, 2) for rev in (False, True)]
        values_ = torch.stack([c[0] for c in cands])  # (4,B,H,W)
        dists = torch.stack([c[1] for c in cands])
        sources = [(dim, c[2]) for dim, c in zip((1, 1, 2, 2), cands)]
        has = torch.isfinite(dists)
        far = torch.where(has, values_, -torch.inf).amax(0)
        weight = torch.where(has & (values_ >= far * (1 - background_tolerance)), 1.0 / dists.clamp(min=1), 0.0)
        total = weight.sum(0).clamp(min=1e-12)
        fill = (weight * torch.where(has, values_, 0.0)).sum(0) / total
        reached = has.any(0)
        if vals is not None:
            carried = [torch.gather(vals, dim + 1, src[:, None].expand_as(vals)) for dim, src in sources]
            vfill = sum(w[:, None] * c for w, c in zip(weight, carried)) / total[:, None]
            vals = torch.where((known | ~reached)[:, None], vals, vfill)
        out = torch.where(known, out, torch.where(reached, fill, 0.0))
        known = known | reached
    if single:
        return out[0], None if vals is None else vals[0]
    return out, vals


def normals_from_depth(depth: torch.Tensor, camera: CameraParameters, world: bool = True) -> torch.Tensor:
    """Unit surface normals (H,W,3) or (B,H,W,3) facing the camera; zeros where depth is unknown.

    Central differences of the unprojected points, falling back to one-sided differences at
    unknown neighbours; ``world=False`` gives them in camera coordinates.
    """
    camera = _check_camera(camera)
    d = _check_depth(depth, camera)
    single = d.dim() == 2
    d = d[None] if single else d
    known = (d > 0) & torch.isfinite(d)
    P = unproject(torch.where(known, d, 0.0), camera, world=False)
    P = P[None] if P.dim() == 3 else P  # (B,H,W,3)

    def diff(axis: int) -> torch.Tensor:
        """Derivative of P along ``axis`` (1: rows, 2: columns) using only known neighbours."""
        idx = torch.arange(P.shape[axis], device=P.device)
        nxt, prv = (idx + 1).clamp(max=len(idx) - 1), (idx - 1).clamp(min=0)
        k_n = (known.index_select(axis, nxt) & (nxt != idx).view(-1, *[1] * (2 - axis)))[..., None]
        k_p = (known.index_select(axis, prv) & (prv != idx).view(-1, *[1] * (2 - axis)))[..., None]
        fwd = torch.where(k_n, P.index_select(axis, nxt) - P, 0.0)
        bwd = torch.where(k_p, P - P.index_select(axis, prv), 0.0)
        return torch.where(k_n & k_p, 0.5 * (fwd + bwd), fwd + bwd)

    du, dv = diff(2), diff(1)
    n = torch.cross(dv, du, dim=-1)  # (x right, y down): dv x du points towards the camera
    n = torch.where(((n * P).sum(-1, keepdim=True) > 0), -n, n)  # flip any that face away
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    n = torch.where(known[..., None] & (n.norm(dim=-1, keepdim=True) > 0.5), n, torch.zeros_like(n))
    if world:
        R = camera.c2wb[:, :3, :3].to(n.dtype)
        n = torch.einsum("bij,bhwj->bhwi", R, n)
    return n[0] if single else n
