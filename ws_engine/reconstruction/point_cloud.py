"""Point-cloud reconstruction: fused points, statistical outlier removal, oriented PCA normals.

Points come from the Global-Geometric Memory when one is given (it already fused every frame),
else from the frames' depth maps, unprojected and merged per voxel (confidence-weighted mean; by
default a voxel of one pixel at the median depth).

Outliers are points whose mean distance to their k nearest neighbours is beyond mean + n·std of
that statistic over the cloud (a second round takes mean and std over the first round's inliers).
Normals are the smallest principal axis of the k nearest inliers, oriented towards the cameras
whose frames see the point (projection + depth agreement): unlike "towards the nearest camera",
this stays right for a thin wall or an object seen from one side only, and it does not trust
finite differences of a depth map at its edges. A point no frame sees (e.g. memory points from
views that are not among the frames) faces its nearest camera centre.

Neighbour search (scipy cKDTree) dominates the cost, so above ``knn_max_points`` points the
statistics run on a voxel-merged proxy cloud (see :func:`neighborhood_analysis`).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, EmptyPointCloudError
from ..memory.point_index import KnnIndex
from .inputs import Observations, Option
from .visibility import visible_frames

__all__ = [
    "POINT_CLOUD_OPTIONS",
    "voxel_groups",
    "voxel_merge",
    "fit_voxel",
    "downsample",
    "knn",
    "statistical_inliers",
    "smallest_eigenvector",
    "pca_normals",
    "orient_normals",
    "neighborhood_analysis",
    "reconstruct_point_cloud",
]

POINT_CLOUD_OPTIONS = {
    "voxel_size": Option(None, float, 0, low_open=True, optional=True),
    "max_points": Option(None, int, 1, optional=True),
    "remove_outliers": Option(True, bool),
    "outlier_neighbors": Option(16, int, 1, 128),
    "outlier_std": Option(2.5, float, 0, low_open=True),
    "normal_neighbors": Option(16, int, 3, 128),
    "knn_max_points": Option(500_000, int, 1000),
    "min_confidence": Option(0.0, float, 0, 1),
}
FUSION_VOXEL_PIXELS = 1.0  # default fusion voxel: one pixel at the median depth
ORIENT_TOLERANCE = 0.05  # relative depth agreement for "this frame sees the point"
_MAX_CELLS_PER_AXIS = 1 << 20


def voxel_groups(points: torch.Tensor, voxel_size: float) -> tuple[torch.Tensor, int]:
    """Index (N,) of the cube of side ``voxel_size`` each point (N,3) falls in, numbered 0..M-1 in
    x-major order (neighbours stay close in memory), and M."""
    lo = points.min(0).values
    cells = torch.floor((points - lo) / voxel_size).long()
    dims = cells.max(0).values + 1
    if bool((dims > _MAX_CELLS_PER_AXIS).any()):
        raise ConfigError(
            f"voxel_size {voxel_size:g} is too small for a scene {float((points.max(0).values - lo).max()):g} units "
            "across; use a larger voxel_size."
        )
    key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, inverse = torch.unique(key, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _group_means(inverse: torch.Tensor, m: int, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean (M,C) of values (N,C) per group."""
    w = weights.to(values.dtype)
    out = torch.zeros(m, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, inverse, values * w[:, None])
    wsum = torch.zeros(m, dtype=values.dtype, device=values.device).index_add_(0, inverse, w)
    return out / wsum[:, None]


def _merge(inverse: torch.Tensor, m: int, points: torch.Tensor, colors: torch.Tensor, weights: torch.Tensor):
    """Weighted mean points (M,3) and colours (M,3) and summed weights (M,) of M groups."""
    w = weights.clamp(min=1e-6)
    wsum = torch.zeros(m, dtype=w.dtype, device=w.device).index_add_(0, inverse, w)
    return _group_means(inverse, m, points, w), _group_means(inverse, m, colors, w).clamp(0, 1), wsum


def voxel_merge(points: torch.Tensor, colors: torch.Tensor, weights: torch.Tensor, voxel_size: float):
    """Merge the points (N,3) of each cube of side ``voxel_size`` into their weighted mean.

    Returns points (M,3), colors (M,3) (weighted means) and weights (M,) (sums), M <= N, in
    x-major voxel order.
    """
    return _merge(*voxel_groups(points, voxel_size), points, colors, weights)


def fit_voxel(points: torch.Tensor, max_groups: int, voxel_size: float) -> tuple[torch.Tensor, int]:
    """Voxel groups (see :func:`voxel_groups`) with a voxel grown from ``voxel_size`` until there
    are at most ``max_groups``."""
    for _ in range(64):
        inverse, m = voxel_groups(points, voxel_size)
        if m <= max_groups:
            break
        voxel_size *= max(1.15, math.sqrt(m / max_groups))
    return inverse, m


def downsample(points, colors, weights, max_points: int, voxel_size: float):
    """Voxel-merge with a growing voxel until at most ``max_points`` remain (no-op below it)."""
    if len(points) <= max_points:
        return points, colors, weights
    return _merge(*fit_voxel(points, max_points, voxel_size), points, colors, weights)


def knn(points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N,k) and indices (N,k) of each point's k nearest other points (the memory's
    ``KnnIndex``, a scipy cKDTree).

    Queries run in a spatially sorted order (neighbouring queries walk the same tree nodes: about
    1.6x faster than a random order), results come back in the input order.
    """
    n = len(points)
    k = min(k, n - 1)
    pts = points.detach().cpu().double()
    lo, hi = pts.min(0).values, pts.max(0).values
    cell = float((hi - lo).max()) / 128 + 1e-12
    c = ((pts - lo) / cell).long()
    order = torch.argsort((c[:, 0] * 129 + c[:, 1]) * 129 + c[:, 2])
    dist, idx = KnnIndex(pts, "kd_tree").query(pts[order], k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    out_d, out_i = torch.empty_like(dist), torch.empty_like(idx)
    out_d[order], out_i[order] = dist, idx
    return out_d.to(points.device), out_i.to(points.device)


def statistical_inliers(neighbor_dist: torch.Tensor, std_ratio: float, rounds: int = 2) -> torch.Tensor:
    """(N,) bool: mean distance to the k nearest neighbours (N,k) at most mean + std_ratio·std.

    The mean and std are taken again over the inliers of the previous round (``rounds`` times), so
    a crowd of gross outliers cannot inflate the std enough to hide milder ones.
    """
    mean_d = neighbor_dist.double().mean(1)
    inlier = torch.ones_like(mean_d, dtype=torch.bool)
    for _ in range(rounds):
        kept = mean_d[inlier]
        inlier = mean_d <= kept.mean() + std_ratio * kept.std(unbiased=False)
    return inlier


def smallest_eigenvector(moments: torch.Tensor) -> torch.Tensor:
    """Unit eigenvectors (N,3) of the smallest eigenvalue of symmetric 3x3 matrices given by their
    entries (N,6) = (xx, yy, zz, xy, xz, yz).

    Closed form on the entries (trigonometric eigenvalues, then the longest cross product of two
    rows of A - λI), elementwise in float64: several times faster than ``torch.linalg.eigh`` on
    millions of tiny matrices. A matrix without a preferred axis gets an arbitrary unit vector.
    """
    m = moments.double()
    m = m / (m[:, 0] + m[:, 1] + m[:, 2]).clamp(min=1e-300)[:, None]  # trace 1: units do not matter
    a, b, c, d, e, f = m.unbind(1)
    q = (a + b + c) / 3
    aq, bq, cq = a - q, b - q, c - q
    p = torch.sqrt((aq * aq + bq * bq + cq * cq + 2 * (d * d + e * e + f * f)) / 6).clamp(min=1e-150)
    det = aq * (bq * cq - f * f) - d * (d * cq - f * e) + e * (d * f - bq * e)  # det(A - qI)
    phi = torch.acos((det / (2 * p**3)).clamp(-1, 1)) / 3
    lam = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    r0 = torch.stack([a - lam, d, e], 1)
    r1 = torch.stack([d, b - lam, f], 1)
    r2 = torch.stack([e, f, c - lam], 1)
    cands = torch.stack([torch.cross(r0, r1, dim=1), torch.cross(r0, r2, dim=1), torch.cross(r1, r2, dim=1)], 1)
    norms = cands.norm(dim=2)
    length, which = norms.max(1)
    best = cands[torch.arange(len(m), device=m.device), which]
    any_axis = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    n = torch.where((length > 1e-12)[:, None], best / length.clamp(min=1e-300)[:, None], any_axis)
    return n.to(moments.dtype)


def pca_normals(
    points: torch.Tensor, neighbors: torch.Tensor, usable: torch.Tensor | None = None, chunk: int = 65_536
) -> torch.Tensor:
    """Unit normals (N,3): the least-variance axis of each point and its neighbours (N,k).

    usable: (N,k) bool, neighbours to count (e.g. not outliers); the point itself always counts.
    Covariances are built from offsets to the point (no cancellation in float32), in chunks of
    points. Sign is arbitrary (see :func:`orient_normals`).
    """
    moments = torch.empty(len(points), 6, dtype=points.dtype, device=points.device)
    rows, cols = [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        q = points[neighbors[s : s + chunk]] - p[:, None]  # (c,k,3); the point itself adds q = 0
        if usable is None:
            w = torch.ones(q.shape[:2], dtype=q.dtype, device=q.device)
        else:
            w = usable[s : s + chunk].to(q.dtype)
        q = q * w[..., None]
        count = w.sum(1) + 1
        mean = q.sum(1) / count[:, None]
        cov = torch.einsum("cki,ckj->cij", q, q) / count[:, None, None] - mean[:, :, None] * mean[:, None, :]
        moments[s : s + chunk] = cov[:, rows, cols]
    return smallest_eigenvector(moments)


def orient_normals(points: torch.Tensor, normals: torch.Tensor, obs: Observations) -> torch.Tensor:
    """Flip normals (N,3) to face the cameras of the frames that see each point (see module doc)."""
    visible = visible_frames(points, obs, ORIENT_TOLERANCE)  # (T,N)
    centers = obs.centers.to(points.dtype)
    toward = torch.zeros_like(points)
    for t in range(obs.num_frames):
        ray = centers[t] - points
        toward += ray / ray.norm(dim=1, keepdim=True).clamp(min=1e-12) * visible[t, :, None]
    unseen = ~visible.any(0)
    if bool(unseen.any()):
        p = points[unseen]
        nearest = torch.cdist(p, centers).argmin(1)
        toward[unseen] = centers[nearest] - p
    sign = torch.where((normals * toward).sum(1) < 0, -1.0, 1.0).to(normals.dtype)
    return normals * sign[:, None]


def _source_points(obs: Observations, memory, opts: dict):
    """Points, colours, weights to start from and whether they came from the memory."""
    if memory is not None and len(memory) > 0:
        dev = obs.depths.device
        pts, cols = memory.points.to(dev, torch.float32), memory.colors.to(dev, torch.float32)
        wts = memory.weights.to(dev, torch.float32)
        if opts["voxel_size"] is not None:
            pts, cols, wts = voxel_merge(pts, cols, wts, opts["voxel_size"])
        return pts, cols, wts, True
    pts, cols, conf = obs.depth_points()
    keep = conf >= opts["min_confidence"]
    if not bool(keep.any()):
        raise EmptyPointCloudError(
            f"No depth pixel has confidence >= min_confidence={opts['min_confidence']:g}; lower min_confidence."
        )
    pts, cols, conf = pts[keep], cols[keep], conf[keep]
    voxel = opts["voxel_size"] or FUSION_VOXEL_PIXELS * obs.pixel_footprint()
    return (*voxel_merge(pts, cols, conf, voxel), False)


def neighborhood_analysis(points: torch.Tensor, weights: torch.Tensor, obs: Observations, opts: dict):
    """Inlier mask (N,) and oriented unit normals (N,3) of points (N,3) (see module doc).

    Above ``knn_max_points`` points the analysis runs on a weighted voxel-merged proxy cloud of
    about that size and every point takes its proxy's verdict and normal: an isolated outlier is
    its own isolated proxy, and on a surface the normal of a few neighbouring points is shared.
    """
    n = len(points)
    inverse = None
    if n > opts["knn_max_points"]:
        inverse, m = fit_voxel(points, opts["knn_max_points"], _proxy_voxel(points, opts["knn_max_points"]))
        points = _group_means(inverse, m, points, weights.clamp(min=1e-6))
    k_out, k_nrm = opts["outlier_neighbors"], opts["normal_neighbors"]
    dist, idx = knn(points, max(k_out, k_nrm))
    if opts["remove_outliers"]:
        inlier = statistical_inliers(dist[:, :k_out], opts["outlier_std"])
        normals = pca_normals(points, idx[:, :k_nrm], inlier[idx[:, :k_nrm]])
    else:
        inlier = torch.ones(len(points), dtype=torch.bool, device=points.device)
        normals = pca_normals(points, idx[:, :k_nrm])
    normals = orient_normals(points, normals, obs)
    return (inlier, normals) if inverse is None else (inlier[inverse], normals[inverse])


def _proxy_voxel(points: torch.Tensor, count: int) -> float:
    """A starting voxel for :func:`fit_voxel`: ``count`` cells over a square as wide as the scene
    (a surface of a few such squares needs one or two growth steps from there)."""
    return float((points.max(0).values - points.min(0).values).max()) / count**0.5


def reconstruct_point_cloud(obs: Observations, memory, opts: dict, progress):
    """Points (N,3), colours (N,3), oriented normals (N,3) and method figures (see module doc)."""
    pts, cols, wts, from_memory = _source_points(obs, memory, opts)
    progress(1, 2, "point_cloud: fused points")
    if opts["max_points"] is not None:
        pts, cols, wts = downsample(pts, cols, wts, opts["max_points"], opts["voxel_size"] or obs.pixel_footprint())
    if len(pts) <= max(opts["outlier_neighbors"], opts["normal_neighbors"]):
        raise EmptyPointCloudError(f"Only {len(pts)} points to reconstruct from; give depth maps with more valid pixels.")
    inlier, normals = neighborhood_analysis(pts, wts, obs, opts)
    progress(2, 2, "point_cloud: outliers and normals")
    figures = {"num_outliers_removed": int((~inlier).sum()), "from_memory": int(from_memory)}
    return pts[inlier].float(), cols[inlier].float(), normals[inlier].float(), figures
