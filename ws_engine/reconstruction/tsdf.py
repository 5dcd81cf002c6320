"""Mesh reconstruction: TSDF fusion of the depth maps (batched torch), then marching cubes.

The volume is block-sparse: only blocks of ``b``³ voxels (b = the truncation in voxels) that hold
a depth point or touch such a block are stored, which keeps every voxel within the truncation band
of an observed surface and skips the empty space (a quarter of the dense grid for the test room).
Each frame updates the stored voxels of the blocks in its view (a bounding-sphere test per block)
in one vectorised pass: project the voxel centres, look up the depth at the nearest pixel, and
fold the truncated signed distance (positive in front of the surface) and the pixel colour into
confidence-weighted running means. Voxels farther than the truncation behind the surface are left
alone (they may be hidden solid or another surface).

Marching cubes (scikit-image) runs on the dense TSDF. A vertex is kept only if both voxels of its
cube edge were observed, so no surface appears where observed space meets unobserved space.
Faces are oriented so their right-hand normals point into free space, i.e. towards the cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, EmptyPointCloudError
from ..geometry import project
from .inputs import Observations, Option, scene_bounds
from .types import Mesh, face_normals, vertex_normals
from .visibility import nearest_pixel

__all__ = [
    "MESH_OPTIONS",
    "TSDFVolume",
    "plan_grid",
    "allocate_volume",
    "blocks_in_view",
    "integrate_frame",
    "dense_tsdf",
    "observed_edges",
    "observed_surface",
    "uphill",
    "compact_vertices",
    "extract_mesh",
    "reconstruct_mesh",
]

MESH_OPTIONS = {
    "voxel_size": Option(None, float, 0, low_open=True, optional=True),
    "resolution": Option(256, int, 16, 1024),
    "truncation": Option(4.0, float, 1, 16),
    "min_confidence": Option(0.0, float, 0, 1),
    "min_component_faces": Option(32, int, 0),
}
MAX_VOXELS_PER_AXIS = 1024


@dataclass
class TSDFVolume:
    """A block-sparse TSDF.

    origin (3,): world position of voxel (0,0,0)'s centre; voxel_size; dims (X,Y,Z) of the full
    grid; block: block side in voxels; blocks (B,3) long: stored blocks (block grid indices);
    block_row (X/b,Y/b,Z/b) int64: row of each block, -1 when not stored. Per stored voxel
    (M = B·b³, block-major): voxels (M,3) long grid indices, tsdf (M,) in [-1,1] (signed distance
    / truncation, positive in front), weight (M,), color (M,3), color_weight (M,).
    """

    origin: torch.Tensor
    voxel_size: float
    dims: tuple[int, int, int]
    block: int
    blocks: torch.Tensor
    block_row: torch.Tensor
    voxels: torch.Tensor
    tsdf: torch.Tensor
    weight: torch.Tensor
    color: torch.Tensor
    color_weight: torch.Tensor

    def centers(self) -> torch.Tensor:
        """World positions (M,3) of the stored voxels."""
        return self.origin + self.voxels.to(self.origin.dtype) * self.voxel_size

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Row (N,) of grid indices idx (N,3) (-1 outside the grid or not stored)."""
        dims = torch.tensor(self.dims, device=idx.device)
        inside = ((idx >= 0) & (idx < dims)).all(1)
        b = self.block
        safe = torch.where(inside[:, None], idx, 0)
        blk = self.block_row[safe[:, 0] // b, safe[:, 1] // b, safe[:, 2] // b]
        local = ((safe[:, 0] % b) * b + safe[:, 1] % b) * b + safe[:, 2] % b
        return torch.where(inside & (blk >= 0), blk * b**3 + local, -1)


def plan_grid(obs: Observations, voxel_size: float | None, resolution: int, truncation: float):
    """Origin (3,), voxel size and dims of a grid over the robust depth bounds, padded by the
    truncation band plus two voxels."""
    lo, hi = scene_bounds(obs)
    extent = float((hi - lo).max())
    if extent <= 0:
        extent = obs.pixel_footprint() * 16
    voxel = voxel_size or extent / resolution
    pad = (truncation + 2) * voxel
    lo, hi = lo - pad, hi + pad
    dims = tuple(int(n) for n in (torch.ceil((hi - lo) / voxel) + 1).tolist())
    if max(dims) > MAX_VOXELS_PER_AXIS:
        raise ConfigError(
            f"voxel_size {voxel:g} gives a {dims[0]}x{dims[1]}x{dims[2]} grid for a scene {extent:.3g} units across; "
            f"use a voxel_size of at least {extent / (MAX_VOXELS_PER_AXIS - 2 * truncation - 8):.3g}."
        )
    return lo, voxel, dims


def allocate_volume(obs: Observations, origin: torch.Tensor, voxel: float, dims, block: int) -> TSDFVolume:
    """Store the blocks that hold a depth point and their 26 neighbours (see module doc)."""
    dev = obs.depths.device
    nb = [math.ceil(d / block) for d in dims]
    pts = obs.depth_points()[0]
    blk = torch.round((pts - origin) / voxel).long().div_(block, rounding_mode="floor")
    blk = blk.clamp(min=torch.zeros(3, dtype=torch.long, device=dev), max=torch.tensor(nb, device=dev) - 1)
    occupied = torch.zeros(nb, device=dev)
    occupied[blk[:, 0], blk[:, 1], blk[:, 2]] = 1.0
    grown = F.max_pool3d(occupied[None, None], 3, 1, 1)[0, 0] > 0  # the 26 neighbours too
    blocks = grown.nonzero()
    block_row = torch.full(nb, -1, dtype=torch.long, device=dev)
    block_row[blocks[:, 0], blocks[:, 1], blocks[:, 2]] = torch.arange(len(blocks), device=dev)
    local = torch.stack(torch.meshgrid(*[torch.arange(block, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
    voxels = (blocks[:, None] * block + local).reshape(-1, 3)
    m = len(voxels)
    return TSDFVolume(
        origin=origin, voxel_size=voxel, dims=tuple(dims), block=block, blocks=blocks, block_row=block_row, voxels=voxels,
        tsdf=torch.ones(m, device=dev), weight=torch.zeros(m, device=dev),
        color=torch.zeros(m, 3, device=dev), color_weight=torch.zeros(m, device=dev),
    )  # fmt: skip


def blocks_in_view(vol: TSDFVolume, camera) -> torch.Tensor:
    """Rows (M',) of the stored voxels whose block may appear in the camera's image: the block's
    bounding sphere projects into the image (or reaches behind the camera plane)."""
    b, v = vol.block, vol.voxel_size
    centers = vol.origin + (vol.blocks.to(vol.origin.dtype) * b + (b - 1) / 2) * v
    radius = b * v * math.sqrt(3) / 2
    uv, z = project(centers, camera)
    margin = radius * float(camera.Kb[0, :2, :2].abs().max()) / z.clamp(min=1e-6)
    near = z <= radius
    inside = (uv[:, 0] >= -margin) & (uv[:, 0] <= camera.width - 1 + margin)
    inside &= (uv[:, 1] >= -margin) & (uv[:, 1] <= camera.height - 1 + margin)
    keep = (near | inside) & (z > -radius)
    blocks = keep.nonzero().squeeze(1)
    return (blocks[:, None] * b**3 + torch.arange(b**3, device=blocks.device)).reshape(-1)


def integrate_frame(
    vol: TSDFVolume, centers: torch.Tensor, obs: Observations, t: int, truncation: float, min_confidence: float
) -> None:
    """Fold frame t into the running means of the stored voxels it may see (one batched pass).

    centers: (M,3) world positions of all stored voxels (``vol.centers()``)."""
    H, W = obs.depths.shape[-2:]
    trunc = truncation * vol.voxel_size
    rows = blocks_in_view(vol, obs.cameras[t])
    uv, z = project(centers[rows], obs.cameras[t])
    flat, inside = nearest_pixel(uv[:, 0], uv[:, 1], z, H, W)
    rows, pix, z = rows[inside], flat[inside], z[inside]
    d = obs.depths[t].reshape(-1)[pix]
    w = obs.confidences[t].reshape(-1)[pix]
    sdf = d - z
    ok = (d > 0) & (w > 0) & (w >= min_confidence) & (sdf > -trunc)
    rows, pix, w, sdf = rows[ok], pix[ok], w[ok], sdf[ok]
    w_old = vol.weight[rows]
    w_new = w_old + w
    vol.tsdf[rows] = (vol.tsdf[rows] * w_old + (sdf / trunc).clamp(max=1) * w) / w_new
    vol.weight[rows] = w_new
    near = sdf < trunc
    rows, pix, w = rows[near], pix[near], w[near]
    rgb = obs.frames[t].reshape(3, -1)[:, pix].T
    cw_old = vol.color_weight[rows]
    vol.color[rows] = (vol.color[rows] * cw_old[:, None] + rgb * w[:, None]) / (cw_old + w)[:, None]
    vol.color_weight[rows] = cw_old + w


def dense_tsdf(vol: TSDFVolume) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense TSDF (X,Y,Z) (1 where unobserved) and observed mask (X,Y,Z) bool."""
    X, Y, Z = vol.dims
    v = vol.voxels
    inside = ((v[:, 0] < X) & (v[:, 1] < Y) & (v[:, 2] < Z)).nonzero().squeeze(1)
    flat = (v[inside, 0] * Y + v[inside, 1]) * Z + v[inside, 2]
    tsdf = torch.ones(X * Y * Z, device=v.device)
    seen = torch.zeros(X * Y * Z, dtype=torch.bool, device=v.device)
    tsdf[flat] = vol.tsdf[inside]
    seen[flat] = vol.weight[inside] > 0
    return tsdf.view(X, Y, Z), seen.view(X, Y, Z)


def observed_edges(verts: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(V,) bool: both voxels of the cube edge each marching-cubes vertex (grid units) lies on are observed."""
    top = torch.tensor(seen.shape, device=verts.device) - 1
    lo = torch.floor(verts).long().clamp(min=torch.zeros_like(top), max=top)
    hi = torch.ceil(verts).long().clamp(min=torch.zeros_like(top), max=top)
    return seen[lo[:, 0], lo[:, 1], lo[:, 2]] & seen[hi[:, 0], hi[:, 1], hi[:, 2]]


def observed_surface(volume: torch.Tensor, level: float, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marching cubes (scikit-image) of ``volume`` (X,Y,Z) at ``level``: vertices (V,3) in grid
    units and the faces (F,3) whose vertices all pass :func:`observed_edges` with ``seen`` (X,Y,Z)."""
    from skimage.measure import marching_cubes

    verts, faces, _, _ = marching_cubes(volume.cpu().numpy(), level=level)
    verts = torch.from_numpy(verts.astype(np.float32)).to(volume.device)
    faces = torch.from_numpy(faces.astype(np.int64)).to(volume.device)
    return verts, faces[observed_edges(verts, seen)[faces].all(1)]


def uphill(verts: torch.Tensor, faces: torch.Tensor, tsdf: torch.Tensor, max_faces: int = 65_536) -> bool:
    """Whether the right-hand normals of faces over verts (grid units) point to increasing values
    of the volume ``tsdf`` (X,Y,Z) (free space for a TSDF), by majority of an even sample of faces
    (marching cubes orients all faces alike)."""
    faces = faces[:: max(1, len(faces) // max_faces)]
    n = face_normals(verts, faces)
    a, b, c = verts[faces].unbind(1)
    centroid = (a + b + c) / 3
    top = torch.tensor(tsdf.shape, device=verts.device) - 1

    def at(p):
        i = torch.round(p).long().clamp(min=torch.zeros_like(top), max=top)
        return tsdf[i[:, 0], i[:, 1], i[:, 2]]

    return bool(((at(centroid + n) - at(centroid - n)).sign().sum()) >= 0)


def _large_components(faces: torch.Tensor, num_vertices: int, min_faces: int) -> torch.Tensor:
    """(F,) bool: faces in connected components with at least ``min_faces`` faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = faces.cpu().numpy()
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    _, labels = connected_components(graph, directed=False)
    face_label = torch.from_numpy(labels[f[:, 0]]).to(faces.device)
    sizes = torch.bincount(face_label)
    return sizes[face_label] >= min_faces


def compact_vertices(faces: torch.Tensor, *per_vertex: torch.Tensor):
    """Drop unreferenced vertices: faces renumbered and each per-vertex tensor (V,...) subset."""
    used = torch.zeros(len(per_vertex[0]), dtype=torch.bool, device=faces.device)
    used[faces.reshape(-1)] = True
    new_index = torch.cumsum(used, 0) - 1
    return (new_index[faces], *[x[used] for x in per_vertex])


def _vertex_colors(vol: TSDFVolume, verts: torch.Tensor) -> torch.Tensor:
    """Colours (V,3) at marching-cubes vertices (grid units): linear along the cube edge each lies
    on, between its two voxels (falling back to the one that saw colour)."""
    lo, hi = torch.floor(verts).long(), torch.ceil(verts).long()
    frac = (verts - lo).amax(1)  # the one fractional coordinate
    acc = torch.zeros(len(verts), 3, device=verts.device)
    wsum = torch.zeros(len(verts), device=verts.device)
    for idx, w in ((lo, 1 - frac), (hi, frac)):
        rows = vol.rows(idx)
        ok = (rows >= 0) & (vol.color_weight[rows.clamp(min=0)] > 0)
        w = torch.where(ok, w + 1e-6, 0.0)
        acc += w[:, None] * vol.color[rows.clamp(min=0)]
        wsum += w
    return (acc / wsum.clamp(min=1e-12)[:, None]).clamp(0, 1)


def extract_mesh(vol: TSDFVolume, min_component_faces: int = 0) -> Mesh:
    """Marching cubes on the fused TSDF (see module doc), vertex colours and normals."""
    tsdf, seen = dense_tsdf(vol)
    if not bool((tsdf[seen] < 0).any() and (tsdf[seen] > 0).any()):
        raise EmptyPointCloudError(
            "The fused depth maps hold no surface (no zero crossing in the TSDF); check that the depths are metric "
            "and the cameras match the frames."
        )
    verts, faces = observed_surface(tsdf, 0.0, seen)
    if len(faces) and not uphill(verts, faces, tsdf):
        faces = faces[:, [0, 2, 1]]
    if min_component_faces > 1 and len(faces):
        faces = faces[_large_components(faces, len(verts), min_component_faces)]
    if len(faces) == 0:
        raise EmptyPointCloudError(
            "The TSDF surface is empty once unobserved space is cut away; use more frames, a larger voxel_size or a "
            "smaller min_component_faces."
        )
    faces, verts = compact_vertices(faces, verts)
    colors = _vertex_colors(vol, verts)
    world = vol.origin + verts * vol.voxel_size
    return Mesh(world, faces, colors, vertex_normals(world, faces))


def reconstruct_mesh(obs: Observations, opts: dict, progress) -> tuple[Mesh, dict]:
    """TSDF-fuse every frame and extract the mesh; returns it and the method's figures."""
    trunc = opts["truncation"]
    origin, voxel, dims = plan_grid(obs, opts["voxel_size"], opts["resolution"], trunc)
    vol = allocate_volume(obs, origin, voxel, dims, block=max(2, math.ceil(trunc)))
    centers = vol.centers()
    T = obs.num_frames
    for t in range(T):
        integrate_frame(vol, centers, obs, t, trunc, opts["min_confidence"])
        progress(t + 1, T + 1, f"mesh: fused frame {t + 1}/{T}")
    mesh = extract_mesh(vol, opts["min_component_faces"])
    progress(T + 1, T + 1, "mesh: marching cubes")
    figures = {
        "voxel_size": float(voxel),
        "grid_x": dims[0],
        "grid_y": dims[1],
        "grid_z": dims[2],
        "stored_voxels": int(len(vol.voxels)),
        "observed_voxels": int((vol.weight > 0).sum()),
    }
    return mesh, figures
