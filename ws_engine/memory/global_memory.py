"""Global-Geometric Memory (GGM): an incremental point cloud with exact radius merging.

Storage (all on ``device``): points (N,3) float32, colors (N,3) in [0,1], optional features (N,F),
weights (N,) (merge count / confidence), stamps (N,) int64 (insertion order, for eviction). Rows
live in preallocated buffers that grow geometrically; new points are appended, evicted (oldest)
points are dropped from the front by moving a head offset, so an update never re-copies the
stored cloud (an occasional amortised compaction aside).

Merge invariant: after every update no two points are closer than the merge threshold r.
Proof sketch (induction; the stored cloud satisfies it before the update):
1. Each new point finds its nearest stored point closer than r (``SpatialHash.nearest``: the 8
   cells that hold every point closer than r, a neighbour cell skipped only when its distance
   lower bound exceeds the best distance already found, so the result is exact). If there is
   one, the new point is merged into it and never added.
2. The remaining new points are thinned by a maximal independent set of their "closer than r"
   graph (``independent_set``): kept points are pairwise >= r apart, the others merge into a kept
   neighbour. Kept points are >= r from every stored point by 1., so adding them keeps it.
3. ``incremental`` never moves a stored point. ``replace``/``weighted`` propose moves; a move is
   made only if its target is >= r from every other stored point at its current position
   (including the other movers' current positions and the points just added) and from every other
   proposed target. Whatever subset of moves is refused, each pair is then covered: two movers
   by the target check, a mover and a non-mover by the current-position check, two non-movers
   by the induction hypothesis (see ``_move``).
4. Eviction and ``clear`` only remove points.
When a later update asks for a larger r than the cloud was built with, the whole cloud is thinned
once with the new r first (a full rebuild), so the statement holds for the r of the last update.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from ..device import resolve_device
from ..errors import ConfigError, EmptyMemoryError, check_choice
from ..errors import MemoryFileError  # noqa: F401  (re-exported)
from .ggm_io import MemoryPersistence
from .ggm_query import MemoryReadout
from .ggm_utils import check_threshold, check_whole, parse_batch, parse_pose
from .point_index import INDEX_TYPES, SpatialHash, independent_set

__all__ = ["GlobalGeometricMemory", "UpdateResult", "MemoryFileError"]

STRATEGIES = ("incremental", "replace", "weighted")
FREQUENCIES = ("per_frame", "per_step", "manual")


class UpdateResult(NamedTuple):
    """What an update did: ``num_added + num_merged`` equals the number of new points.

    ``num_pending``: points queued but not applied (``update_frequency="manual"``, see ``flush``).
    Supports attribute and key access (``result.num_added`` or ``result["num_added"]``).
    """

    num_added: int
    num_merged: int
    total_points: int
    num_pending: int = 0

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)

    def keys(self):
        return self._fields


class GlobalGeometricMemory(MemoryReadout, MemoryPersistence):
    """An incremental point cloud rendered into target cameras as a structural prior.

    Args:
        point_cloud_dim: coordinates per point; must be 3.
        feature_dim: per-point feature channels F (0 = none; queries/renders then use colours).
        num_neighbors: k of ``query``.
        update_frequency: ``"per_frame"`` / ``"per_step"``: ``update`` applies at once (the caller
            decides whether it calls it after each frame or each generation step); ``"manual"``:
            ``update`` only queues, ``flush()`` applies the queue in order.
        index_type: kNN index for ``knn``/``query``: ``"kd_tree"`` (scipy), ``"ball_tree"``
            (sklearn), ``"cuda_knn"`` (torch cdist+topk, any device). Exact; they agree.
        max_points: capacity; past it the oldest points (first inserted) are evicted.
        device: ``"cuda"`` without CUDA falls back to CPU with one warning.
        merge_threshold: default r of ``initialize``/``update`` (scene units); 0 disables merging.
        merge_strategy: default strategy of ``update``.
        render_radius: default splat radius of ``render``/``inject_to_latent`` in pixels. 2 (3x3
            splats) closes the one-pixel cracks a cloud thinned to spacing ~r shows in nearby
            views; use 1 to reproduce a source view pixel for pixel.
    """

    def __init__(
        self,
        point_cloud_dim: int = 3,
        feature_dim: int = 0,
        num_neighbors: int = 32,
        update_frequency: str = "per_frame",
        index_type: str = "kd_tree",
        max_points: int = 2_000_000,
        device: str | torch.device = "cpu",
        *,
        merge_threshold: float = 0.01,
        merge_strategy: str = "incremental",
        render_radius: float = 2,
    ):
        if point_cloud_dim != 3:
            raise ConfigError(f"point_cloud_dim must be 3 (x, y, z), got {point_cloud_dim!r}.")
        self.feature_dim = check_whole("feature_dim", feature_dim, 0)
        self.num_neighbors = check_whole("num_neighbors", num_neighbors, 1)
        self.max_points = check_whole("max_points", max_points, 1)
        self.update_frequency = check_choice("update frequency", update_frequency, FREQUENCIES)
        self.index_type = check_choice("index type", index_type, INDEX_TYPES)
        self.merge_strategy = check_choice("merge strategy", merge_strategy, STRATEGIES)
        self.merge_threshold = check_threshold(merge_threshold)
        if not (isinstance(render_radius, (int, float)) and render_radius >= 1):
            raise ConfigError(f"render_radius must be a number >= 1 (pixels), got {render_radius!r}.")
        self.render_radius = float(render_radius)
        self.point_cloud_dim = 3
        self.device = resolve_device(device)
        self.last_timings: dict[str, float] = {}
        self.clear()

    # ------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """Constructor arguments as a plain (JSON-able) dict."""
        return dict(
            point_cloud_dim=3, feature_dim=self.feature_dim, num_neighbors=self.num_neighbors,
            update_frequency=self.update_frequency, index_type=self.index_type, max_points=self.max_points,
            merge_threshold=self.merge_threshold, merge_strategy=self.merge_strategy, render_radius=self.render_radius,
        )  # fmt: skip

    def clear(self) -> None:
        """Remove every point, view and queued update."""
        self._alloc(0)
        self._head = self._tail = 0
        self._next_stamp = 0
        self._separation = math.inf  # every pair of stored points is at least this far apart
        self._hash: SpatialHash | None = None
        self._knn = None  # KnnIndex, built lazily
        self._pending: list[tuple] = []
        self.views: list[torch.Tensor | None] = []  # c2w (4,4) of each update's frame (None if not given)
        self.version = 0

    def _alloc(self, capacity: int) -> None:
        dev, F_ = self.device, self.feature_dim
        self._pts = torch.zeros(capacity, 3, device=dev)
        self._pts_t = torch.zeros(3, capacity, device=dev)  # transposed mirror for the hash search
        self._col = torch.zeros(capacity, 3, device=dev)
        self._feat = torch.zeros(capacity, F_, device=dev)
        self._wt = torch.zeros(capacity, device=dev)
        self._stamp = torch.zeros(capacity, dtype=torch.int64, device=dev)

    def _buffers(self) -> tuple[str, ...]:
        return ("_pts", "_col", "_feat", "_wt", "_stamp")

    def _reserve(self, extra: int) -> None:
        """Room for ``extra`` rows after the tail: compact to the front, growing by 1.5x when needed."""
        capacity = self._pts.shape[0]
        if self._tail + extra <= capacity:
            return
        n, needed = len(self), len(self) + extra
        if needed > 0.75 * capacity:
            capacity = max(1024, int(needed * 1.5))
        live = {name: getattr(self, name)[self._head : self._tail].clone() for name in self._buffers()}
        if capacity != self._pts.shape[0]:
            self._alloc(capacity)
        for name, values in live.items():
            getattr(self, name)[:n] = values
        self._pts_t[:, :n] = live["_pts"].T
        if self._hash is not None:
            self._hash.shift_rows(self._head)
        self._head, self._tail = 0, n

    def __len__(self) -> int:
        return self._tail - self._head

    points = property(lambda self: self._pts[self._head : self._tail], doc="Points (N,3) float32 (a view).")
    colors = property(lambda self: self._col[self._head : self._tail], doc="Colours (N,3) in [0,1] (a view).")
    weights = property(lambda self: self._wt[self._head : self._tail], doc="Merge weight (N,): observations merged in.")
    stamps = property(lambda self: self._stamp[self._head : self._tail], doc="Insertion stamps (N,) int64, increasing.")

    @property
    def features(self) -> torch.Tensor | None:
        """Per-point features (N,F), or None when ``feature_dim == 0``."""
        return self._feat[self._head : self._tail] if self.feature_dim else None

    def _values(self) -> torch.Tensor:
        """What queries and latent injection read: features (N,F), else colours (N,3)."""
        return self.features if self.feature_dim else self.colors

    def to(self, device) -> "GlobalGeometricMemory":
        """Move all storage to ``device`` (in place; returns self)."""
        self.device = resolve_device(device)
        for name in self._buffers():
            setattr(self, name, getattr(self, name).to(self.device))
        self._pts_t = self._pts.T.contiguous()
        self._hash, self._knn = None, None
        self._pending = [tuple(t.to(self.device) if isinstance(t, torch.Tensor) else t for t in p) for p in self._pending]
        return self

    # ------------------------------------------------------------------------------------------
    # input checks
    # ------------------------------------------------------------------------------------------
    def _parse(self, points, colors, features, weights, name: str):
        """Validated (P (M,3), C (M,3), Fe (M,F), W (M,)) on the memory's device."""
        return parse_batch(points, colors, features, weights, name, self.feature_dim, self.device)

    def _check_not_empty(self, what: str) -> None:
        if len(self) == 0:
            raise EmptyMemoryError(f"Cannot {what}: the memory holds no points. Call initialize(points) first.")

    # ------------------------------------------------------------------------------------------
    # content
    # ------------------------------------------------------------------------------------------
    def initialize(self, points, features=None, colors=None, *, merge_threshold: float | None = None, weights=None) -> UpdateResult:
        """Replace the content with ``points`` (N,3) or (N,6) xyz+rgb (colours (N,3), features (N,F)).

        The merge rule applies within the initial points too: points closer than the threshold are
        merged (colours/features averaged into a kept point), so the invariant holds from the start.
        Applies at once whatever the update frequency.
        """
        r = self.merge_threshold if merge_threshold is None else check_threshold(merge_threshold)
        batch = self._parse(points, colors, features, weights, "points")
        self.clear()
        return self._integrate(*batch, None, r, "incremental")

    def update(
        self,
        new_points,
        camera_pose=None,
        features=None,
        colors=None,
        merge_threshold: float | None = None,
        merge_strategy: str | None = None,
        *,
        weights=None,
    ) -> UpdateResult:
        """Merge new points (M,3)/(M,6) seen from ``camera_pose`` (c2w (4,4), a CameraParameters, or None).

        A new point closer than ``merge_threshold`` r to a stored point merges into the nearest
        one; new points closer than r to each other merge into one kept point (maximal
        independent set); the rest are added. Strategies for a stored point receiving merges
        (w: weights, new points default 1 or ``weights`` (M,)):
        ``incremental``: position kept, colour/features running (weighted) mean, weight summed;
        ``replace``: position/colour/features become the (weighted) mean of the new points merged
        into it, weight reset to theirs; ``weighted``: position, colour and features all become the
        weighted mean of old and new. Moves that would bring a point closer than r to another are
        not made (colours still update). Past ``max_points`` the oldest points are evicted.
        Returns UpdateResult(num_added, num_merged, total_points[, num_pending]).
        """
        strategy = check_choice("merge strategy", merge_strategy or self.merge_strategy, STRATEGIES)
        r = self.merge_threshold if merge_threshold is None else check_threshold(merge_threshold)
        pose = parse_pose(camera_pose, self.device)
        batch = self._parse(new_points, colors, features, weights, "new_points")
        if self.update_frequency == "manual":
            self._pending.append((*batch, pose, r, strategy))
            return UpdateResult(0, 0, len(self), sum(p[0].shape[0] for p in self._pending))
        return self._integrate(*batch, pose, r, strategy)

    def flush(self) -> UpdateResult:
        """Apply queued updates (``update_frequency="manual"``) in order; returns the summed result."""
        added = merged = 0
        pending, self._pending = self._pending, []
        for item in pending:
            res = self._integrate(*item)
            added, merged = added + res.num_added, merged + res.num_merged
        return UpdateResult(added, merged, len(self), 0)

    def _integrate(self, P, C, Fe, W, pose, r: float, strategy: str) -> UpdateResult:
        """Merge a validated batch; see the module docstring for the invariant."""
        t0 = time.perf_counter()
        timings = {}
        M = P.shape[0]
        self.views.append(pose)
        if r > 0 and len(self) and r > self._separation:
            self._rethin(r)
        timings["rethin"] = time.perf_counter() - t0
        if r > 0:
            hash_ = self._ensure_hash(r)
            old_target = hash_.nearest(P, self._pts_t)  # absolute buffer row, -1: none closer than r
            timings["search_old"] = time.perf_counter() - t0 - sum(timings.values())
            fresh = (old_target < 0).nonzero().squeeze(1)
            Pf = P.index_select(0, fresh)
            local = SpatialHash(r, self.device)
            local.build(Pf, torch.arange(fresh.numel(), device=self.device))
            qid, other, d2 = local.candidates(Pf, Pf.T.contiguous())
            pair = (qid != other).nonzero().squeeze(1)
            rep = independent_set(fresh.numel(), *(t.index_select(0, pair) for t in (qid, other, d2)))
            timings["dedupe_new"] = time.perf_counter() - t0 - sum(timings.values())
        else:
            old_target = torch.full((M,), -1, dtype=torch.int64, device=self.device)
            fresh = torch.arange(M, device=self.device)
            rep = torch.full((M,), -1, dtype=torch.int64, device=self.device)
        # kept new points: accumulate the new points merged into them (weighted means)
        kept_local = (rep < 0).nonzero().squeeze(1)
        kept = fresh.index_select(0, kept_local)
        K = kept.numel()
        slot = torch.full((fresh.numel(),), -1, dtype=torch.int64, device=self.device)
        slot.index_copy_(0, kept_local, torch.arange(K, device=self.device))
        slot = torch.where(rep < 0, slot, slot.index_select(0, rep.clamp(min=0)))  # kept slot of each fresh point
        w_fresh = W.index_select(0, fresh)
        w_sum = torch.zeros(K, device=self.device).index_add_(0, slot, w_fresh)
        c_sum = torch.zeros(K, 3, device=self.device).index_add_(0, slot, C.index_select(0, fresh) * w_fresh[:, None])
        f_sum = torch.zeros(K, Fe.shape[1], device=self.device).index_add_(0, slot, Fe.index_select(0, fresh) * w_fresh[:, None])
        # add the kept new points first: moves of stored points (step 3) are checked against them
        stamps = torch.arange(self._next_stamp, self._next_stamp + K, device=self.device)
        self._next_stamp += K
        old_target = torch.where(old_target >= 0, old_target - self._head, -1)  # rows relative to head
        self._append(P.index_select(0, kept), c_sum / w_sum[:, None], f_sum / w_sum[:, None], w_sum, stamps, r)
        timings["append"] = time.perf_counter() - t0 - sum(timings.values())
        if M - fresh.numel():
            self._merge_into_stored(P, C, Fe, W, torch.where(old_target >= 0, old_target + self._head, -1), strategy, r)
        timings["merge_stored"] = time.perf_counter() - t0 - sum(timings.values())
        self._separation = min(self._separation, r) if len(self) else math.inf
        self._evict()
        self.version += 1
        timings["evict"] = time.perf_counter() - t0 - sum(timings.values())
        timings["total"] = time.perf_counter() - t0
        self.last_timings = timings
        return UpdateResult(K, M - K, len(self), sum(p[0].shape[0] for p in self._pending))

    def _merge_into_stored(self, P, C, Fe, W, old_target, strategy: str, r: float) -> None:
        """Fold new points into the stored rows ``old_target`` (M,) (-1: not merged)."""
        matched = (old_target >= 0).nonzero().squeeze(1)
        rows, inverse = torch.unique(old_target.index_select(0, matched), return_inverse=True)
        wm = W.index_select(0, matched)[:, None]
        w_new = torch.zeros(rows.numel(), device=self.device).index_add_(0, inverse, wm[:, 0])
        c_new = torch.zeros(rows.numel(), 3, device=self.device).index_add_(0, inverse, C.index_select(0, matched) * wm)
        f_new = torch.zeros(rows.numel(), Fe.shape[1], device=self.device).index_add_(0, inverse, Fe.index_select(0, matched) * wm)
        w_old = self._wt.index_select(0, rows)
        if strategy == "replace":
            w_keep = torch.zeros_like(w_old)  # old values get no say
        else:
            w_keep = w_old
        total = (w_keep + w_new)[:, None]
        self._col.index_copy_(0, rows, ((self._col.index_select(0, rows) * w_keep[:, None] + c_new) / total).clamp_(0, 1))
        if Fe.shape[1]:
            self._feat.index_copy_(0, rows, (self._feat.index_select(0, rows) * w_keep[:, None] + f_new) / total)
        self._wt.index_copy_(0, rows, total[:, 0])
        if strategy != "incremental":
            p_new = torch.zeros(rows.numel(), 3, device=self.device).index_add_(0, inverse, P.index_select(0, matched) * wm)
            target = (self._pts.index_select(0, rows) * w_keep[:, None] + p_new) / total
            self._move(rows, target, r)

    def _move(self, rows: torch.Tensor, target: torch.Tensor, r: float) -> None:
        """Move stored ``rows`` (K,) to ``target`` (K,3) where that keeps every pair >= r apart.

        One pass, no iteration: a move is accepted only if its target is >= r from every other
        stored point at its current position (other movers included) and from every other
        mover's target. Then any mix of accepted and refused moves is valid: accepted-accepted
        pairs were checked at their targets, accepted-other pairs at the other's current
        position, and points that do not move kept the valid configuration they had.
        """
        moving = (target != self._pts.index_select(0, rows)).any(1).nonzero().squeeze(1)
        rows, target = rows.index_select(0, moving), target.index_select(0, moving)
        if rows.numel() == 0:
            return
        self._ensure_hash(r)
        qid, row, _ = self._hash.candidates(target, self._pts_t)
        bad = torch.zeros(rows.numel(), dtype=torch.bool, device=self.device)
        bad[qid[row != rows.index_select(0, qid)]] = True
        among = SpatialHash(r, self.device)
        among.build(target, torch.arange(rows.numel(), device=self.device))
        qid, other, _ = among.candidates(target, target.T.contiguous())
        bad[qid[qid != other]] = True
        ok = (~bad).nonzero().squeeze(1)
        rows, target = rows.index_select(0, ok), target.index_select(0, ok)
        changed = self._hash.buckets(self._pts.index_select(0, rows)) != self._hash.buckets(target)
        self._pts.index_copy_(0, rows, target)
        self._pts_t.index_copy_(1, rows, target.T)
        flag = torch.zeros(self._pts.shape[0], dtype=torch.bool, device=self.device)
        flag[rows[changed]] = True
        self._hash.remove(flag)
        self._hash.insert(target[changed], rows[changed])

    def _append(self, P, C, Fe, W, stamps, r: float) -> None:
        K = P.shape[0]
        if K == 0:
            return
        self._reserve(K)
        s, e = self._tail, self._tail + K
        self._pts[s:e], self._col[s:e], self._wt[s:e], self._stamp[s:e] = P, C, W, stamps
        self._pts_t[:, s:e] = P.T
        if self.feature_dim:
            self._feat[s:e] = Fe
        self._tail = e
        if self._hash is not None and self._hash.radius == r and self._hash.fits(K):
            self._hash.insert(P, torch.arange(s, e, device=self.device))
        elif self._hash is not None and self._hash.radius == r:
            self._hash = None
            self._ensure_hash(r)  # resized to ~2 buckets per point
        else:
            self._hash = None  # rebuilt lazily by the next merging update

    def _evict(self) -> None:
        """Drop the oldest rows beyond ``max_points`` (rows are in insertion order)."""
        excess = len(self) - self.max_points
        if excess <= 0:
            return
        if self._hash is not None:
            flag = torch.zeros(self._pts.shape[0], dtype=torch.bool, device=self.device)
            flag[self._head : self._head + excess] = True
            self._hash.remove(flag)
        self._head += excess

    def _ensure_hash(self, r: float) -> SpatialHash:
        if self._hash is None or self._hash.radius != r:
            self._hash = SpatialHash(r, self.device)
            self._hash.build(self.points, torch.arange(self._head, self._tail, device=self.device))
        return self._hash

    def _rethin(self, r: float) -> None:
        """Re-merge the stored cloud with a larger threshold r (keeps the oldest point of a cluster's
        insertion order where the independent set picks it; stamps, hence eviction order, are kept)."""
        P, C, Fe, W, S = (t.clone() for t in (self.points, self.colors, self._feat[self._head : self._tail], self.weights, self.stamps))
        local = SpatialHash(r, self.device)
        local.build(P, torch.arange(P.shape[0], device=self.device))
        qid, other, d2 = local.candidates(P, P.T.contiguous())
        not_self = qid != other
        rep = independent_set(P.shape[0], qid[not_self], other[not_self], d2[not_self])
        kept = (rep < 0).nonzero().squeeze(1)
        slot = torch.full((P.shape[0],), -1, dtype=torch.int64, device=self.device)
        slot[kept] = torch.arange(kept.numel(), device=self.device)
        slot = torch.where(rep < 0, slot, slot[rep.clamp(min=0)])
        w = torch.zeros(kept.numel(), device=self.device).index_add_(0, slot, W)
        c = torch.zeros(kept.numel(), 3, device=self.device).index_add_(0, slot, C * W[:, None]) / w[:, None]
        f = torch.zeros(kept.numel(), Fe.shape[1], device=self.device).index_add_(0, slot, Fe * W[:, None]) / w[:, None]
        self._head = self._tail = 0
        self._hash = None
        self._append(P[kept], c, f, w, S[kept], r)
        self._separation = r

    def __repr__(self) -> str:
        return f"GlobalGeometricMemory({len(self)} points, feature_dim={self.feature_dim}, device={self.device})"
