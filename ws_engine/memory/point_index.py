"""Point indexes for the global memory: a spatial hash for radius merges, exact kNN indexes.

``SpatialHash`` answers "which stored points lie within ``radius`` of these queries" exactly, in
batched torch, and takes insertions and removals without re-sorting what it already holds.
``independent_set`` thins a set of points so that no two are closer than the radius.
``KnnIndex`` wraps scipy's cKDTree, sklearn's BallTree and a chunked torch ``cdist``+``topk``
behind one ``query(q, k)``; all three return the exact k nearest neighbours.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SpatialHash", "independent_set", "KnnIndex", "INDEX_TYPES"]

INDEX_TYPES = ("kd_tree", "ball_tree", "cuda_knn")

# Distances are compared in float32 as d2 < radius2 * (1 + _SLACK): a pair whose true distance is
# below the radius is always caught although float32 rounding perturbs d2 by ~1e-7 relative.
_SLACK = 1e-5


def _cells(points: torch.Tensor, cell: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid cells (N,3) int64 of ``points`` (N,3) and the position inside the cell (N,3) in [0,1).

    Computed in float64 so that cell membership is exact for float32 inputs of any magnitude.
    """
    scaled = points.double() / cell
    cells = torch.floor(scaled)
    return cells.long(), scaled - cells


_AXIS_MULT = (-7046029254386353131, -4658895280553007687, -7723592293110705685)  # odd 64-bit constants


def _axis_part(c: torch.Tensor, axis: int, bits: int) -> torch.Tensor:
    """Per-axis part (int32, same shape as ``c``) of the bucket of integer cell coordinates ``c``.

    The bucket is the sum of the three parts mod 2**bits: the 4x4x4 block of a cell hashes to the
    sum over axes of (block_a * odd constant) >> shift (mod 2**(bits-6)), in bits 6 and up; the
    cell's 2-bit Morton digits inside the block fill the low 6 bits (disjoint per axis, so the sum
    never carries out of them). Neighbouring cells share a block's 64 consecutive buckets, so the
    lookups of nearby queries stay in cache.
    """
    # the top bits of the 64-bit product, already in place above the low 6 bits
    part = ((c >> 2).mul_(_AXIS_MULT[axis]) >> (64 - bits)).bitwise_and_(((1 << bits) - 1) ^ 63)
    morton = torch.tensor([0, 1, 8, 9], device=c.device) << axis  # Morton digits of 0..3
    return part.bitwise_or_(morton.index_select(0, (c & 3).view(-1)).view(c.shape)).int()


def _bucket(cells: torch.Tensor, bits: int) -> torch.Tensor:
    """Bucket id (...,) int64 in [0, 2**bits) of integer cells (...,3)."""
    parts = [_axis_part(cells[..., a], a, bits) for a in range(3)]
    return ((parts[0] + parts[1] + parts[2]) & ((1 << bits) - 1)).long()


class SpatialHash:
    """Stored rows grouped by the hashed grid cell of their point (cell size = 2 * radius).

    Layout: ``rows`` (E,) holds the stored rows sorted by bucket; ``start`` (B+1,) the offset of
    each bucket in ``rows`` (bucket b is ``rows[start[b]:start[b+1]]``). Buckets are hashes of
    cells, so a bucket may hold points of several cells; the distance test filters them.
    Insertion merges the new rows in (no re-sort of the old ones); removal compacts by a mask.
    """

    def __init__(self, radius: float, device=None, min_buckets: int = 1 << 10):
        self.radius = float(radius)
        self.cell = 2.0 * self.radius * (1.0 + 1e-6)
        self.device = torch.device(device or "cpu")
        self.bits = max(10, math.ceil(math.log2(max(min_buckets, 1))))
        self.rows = torch.empty(0, dtype=torch.int64, device=self.device)
        self.start = torch.zeros((1 << self.bits) + 1, dtype=torch.int64, device=self.device)
        self._spans = None  # cache of spans(), dropped on every change

    def __len__(self) -> int:
        return self.rows.numel()

    def buckets(self, points: torch.Tensor) -> torch.Tensor:
        """Bucket id (N,) of points (N,3)."""
        return _bucket(_cells(points, self.cell)[0], self.bits)

    def build(self, points: torch.Tensor, rows: torch.Tensor) -> None:
        """Replace the content with ``rows`` (N,) at ``points`` (N,3); sizes the table to ~2N buckets."""
        self.bits = max(10, math.ceil(math.log2(max(2 * rows.numel(), 1))))
        b = self.buckets(points)
        b_sorted, order = torch.sort(b, stable=True)
        self.rows = rows.index_select(0, order)
        counts = torch.bincount(b_sorted, minlength=1 << self.bits)
        self.start = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self._spans = None

    def insert(self, points: torch.Tensor, rows: torch.Tensor) -> None:
        """Add ``rows`` (M,) at ``points`` (M,3). Cost O(E + M log M + B), no re-sort of the E held rows.

        In the merged order, the k-th new entry (sorted by bucket b) goes right after the held
        entries of bucket b, at ``start[b+1] + k``; the held entries fill the other positions in
        their order.
        """
        if rows.numel() == 0:
            return
        b_new, order = torch.sort(self.buckets(points), stable=True)
        E, M = len(self), rows.numel()
        new_pos = self.start.index_select(0, b_new + 1).add_(torch.arange(M, device=self.device))
        out = torch.empty(E + M, dtype=torch.int64, device=self.device)
        out.index_copy_(0, new_pos, rows.index_select(0, order))
        if E:
            held = torch.ones(E + M, dtype=torch.bool, device=self.device)
            held.index_fill_(0, new_pos, False)
            out.masked_scatter_(held, self.rows)
        self.rows = out
        new_counts = torch.bincount(b_new, minlength=1 << self.bits)
        self.start[1:] += new_counts.cumsum(0)
        self._spans = None

    def fits(self, extra: int) -> bool:
        """Whether ``extra`` more entries keep the load factor (entries per bucket) at most 1.5."""
        return 2 * (len(self) + extra) <= 3 * (1 << self.bits)

    def remove(self, drop_row: torch.Tensor) -> None:
        """Drop the entries whose row is flagged in ``drop_row`` (R,) bool (indexed by row)."""
        if len(self) == 0:
            return
        drop = drop_row.index_select(0, self.rows)
        if not bool(drop.any()):
            return
        entry = drop.nonzero().squeeze(1)
        bucket = torch.searchsorted(self.start, entry, right=True) - 1  # the bucket holding each entry
        removed = torch.bincount(bucket, minlength=1 << self.bits)
        self.rows = take(self.rows, ~drop)
        self.start[1:] -= removed.cumsum(0)
        self._spans = None

    def spans(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) int64 start | count << 32 of each bucket (one gather reads both) and (B,) bool
        "bucket not empty" (8x smaller, so testing many buckets stays in cache). Cached."""
        if self._spans is None:
            count = self.start[1:] - self.start[:-1]
            self._spans = count.bitwise_left_shift(32).bitwise_or_(self.start[:-1]), count > 0
        return self._spans

    def shift_rows(self, offset: int) -> None:
        """Subtract ``offset`` from every stored row (after the owner compacts its buffer)."""
        if offset:
            self.rows -= offset

    def _cell_buckets(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets (8,Q) of the 8 cells searched for each query (Q,3), and the per-axis distance
        (Q,3) float64, in cells, from the query to the boundary facing the neighbour cell.

        Row k = 4x + 2y + z is the cell own + (x,y,z) * side (side per axis: +1 when the query's
        fractional position f >= 0.5, else -1), so row 0 is the query's own cell and the boundary
        distance is min(f, 1 - f).
        """
        cells, frac = _cells(query, self.cell)
        other = cells + torch.where(frac >= 0.5, 1, -1)  # (Q,3) the neighbour cell on each axis
        # per axis the parts of the two candidate cells (2,Q); the 8 buckets are their sums (8,Q)
        # (laid out so that every op runs over contiguous rows of length Q)
        px, py, pz = (_axis_part(torch.stack([cells[:, a], other[:, a]]), a, self.bits) for a in range(3))
        Q = query.shape[0]
        b = (px[:, None] + py[None]).view(4, 1, Q).add(pz[None]).view(8, Q).bitwise_and_((1 << self.bits) - 1)
        return b, torch.minimum(frac, 1 - frac)

    def _scan(self, bucket: torch.Tensor, query: torch.Tensor, stored_t: torch.Tensor, mask: torch.Tensor | None = None):
        """qid, row, d2 (P,) of the pairs closer than the radius between each query (Q,3) and the
        held rows of its buckets ``bucket`` (K,Q) (where ``mask`` (K,Q) bool, if given, is set)."""
        spans, filled = self.spans()
        search = filled.index_select(0, bucket.reshape(-1))
        if mask is not None:
            search &= mask.reshape(-1)
        seg = search.nonzero().squeeze(1)  # searched non-empty (bucket, query) segments
        if seg.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return empty, empty, torch.empty(0, device=self.device)
        span = spans.index_select(0, bucket.reshape(-1).index_select(0, seg))
        pos, count = span & 0xFFFFFFFF, span >> 32
        # segments by decreasing count (a stable radix sort on a small key), so the segments still
        # holding a j-th entry are a prefix: no compaction inside the loop
        most = int(count.max())
        key = (most - count).to(torch.uint8 if most < 256 else torch.int32)
        order = torch.sort(key, stable=True)[1]
        pos, qseg = pos.index_select(0, order), seg.remainder_(query.shape[0]).index_select(0, order)  # qseg: the query
        q = [query[:, axis].index_select(0, qseg) for axis in range(3)]
        active = (count.numel() - torch.bincount(count, minlength=most + 1).cumsum(0)).tolist()  # count > j
        r2 = self.radius**2 * (1 + _SLACK)
        found = []
        # slot by slot: the j-th entry of every segment holding one. Every working array has at most
        # one element per segment (no (P,) candidate arrays, no repeat_interleave); the active
        # prefix shrinks fast since buckets hold ~1-3 entries.
        for j in range(most):
            n = active[j]
            row = self.rows.index_select(0, pos[:n] + j)
            d2 = None
            for axis in range(3):
                diff = stored_t[axis].index_select(0, row).sub_(q[axis][:n])
                d2 = diff.square_() if d2 is None else d2.add_(diff.square_())
            near = (d2 < r2).nonzero().squeeze(1)
            found.append((qseg.index_select(0, near), row.index_select(0, near), d2.index_select(0, near)))
        qid, row, d2 = (torch.cat(parts) for parts in zip(*found))
        return qid, row, d2

    def candidates(self, query: torch.Tensor, stored_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All held rows within the radius of each query point.

        Args:
            query: (Q,3) points; stored_t: the owner's points transposed (3,R), indexed by row.
        Returns:
            qid (P,), row (P,), d2 (P,) squared distance, for every pair closer than the radius
            (up to the float32 slack). A row may appear twice for one query when two of the
            searched cells share a bucket; callers reduce with min/any, which is unaffected.

        Completeness: the cell is 2r. For a query at fractional position f in its cell along an
        axis, [q-r, q+r] stays inside its own cell and the neighbour on the side of f (f >= 0.5:
        the next cell, else the previous), so every point closer than r lies in one of the 8
        cells own + {0,1}^3 * side. Cells are computed in float64 from the same float32
        coordinates for stored and query points, so membership agrees on both sides.
        """
        Q = query.shape[0]
        if Q == 0 or len(self) == 0:
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return empty, empty, torch.empty(0, device=self.device)
        return self._scan(self._cell_buckets(query)[0], query, stored_t)

    def nearest(self, query: torch.Tensor, stored_t: torch.Tensor) -> torch.Tensor:
        """The held row (Q,) nearest to each query (Q,3) among those ``candidates`` reports, -1 if none.

        Same result as ``nearest_within`` over ``candidates`` (ties to the lower row), but the
        query's own cell is searched first, giving a best squared distance d2 (the radius when
        none); a neighbour cell is then searched only where its lower bound can reach below d2.
        Bound: a point of a neighbour cell differing from the own cell in the axes A is at least
        sqrt(sum over a in A of (min(f_a, 1 - f_a) * cell)^2) from the query (it lies beyond the
        boundary facing it on each such axis). The bound is lowered by 1e-5 relative (float32
        rounding of d2 and of the bound) and by the float64 rounding of the cell coordinates, so a
        skipped cell holds no point whose computed d2 could be below or tie the best one.
        """
        Q = query.shape[0]
        if Q == 0 or len(self) == 0:
            return torch.full((Q,), -1, dtype=torch.int64, device=self.device)
        b, edge = self._cell_buckets(query)
        best = _best_key(Q, *self._scan(b[:1], query, stored_t))
        # per-axis squared boundary distance (Q,3), lowered for rounding; per cell its sum (8,Q)
        eps = 1e-15 * (float(query.abs().max()) / self.cell + 1)
        g = ((edge - eps).clamp_(min=0) * self.cell).square_().mul_(1 - _SLACK).float()
        zero = g.new_zeros(Q)
        gx, gy, gz = (torch.stack([zero, g[:, a]]) for a in range(3))
        lower = (gx[:, None] + gy[None]).view(4, 1, Q).add(gz[None]).view(8, Q)[1:]
        found = best != _NONE
        best_d2 = torch.where(found, best >> 32, 0).int().view(torch.float32)
        bound = torch.where(found, best_d2, self.radius**2 * (1 + _SLACK) * (1 + 1e-6)).add_(1e-44)
        best = _best_key(Q, *self._scan(b[1:], query, stored_t, lower <= bound), best)
        return torch.where(best == _NONE, -1, best & 0xFFFFFFFF)


def take(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` along dim 0 via nonzero + index_select (boolean indexing is ~10x slower on CPU)."""
    return values.index_select(0, mask.nonzero().squeeze(1))


_NONE = torch.iinfo(torch.int64).max  # key of "no pair"


def _best_key(n: int, qid: torch.Tensor, other: torch.Tensor, d2: torch.Tensor, best: torch.Tensor | None = None) -> torch.Tensor:
    """Per query (n,) the min over its pairs of the key d2 bits << 32 | other (``_NONE`` if none),
    folded into ``best`` when given. Non-negative float32 bit patterns sort like the floats."""
    if best is None:
        best = torch.full((n,), _NONE, dtype=torch.int64, device=qid.device)
    if qid.numel():
        key = (d2.float().view(torch.int32).long() << 32) | other
        best.scatter_reduce_(0, qid, key, reduce="amin")
    return best


def nearest_within(n_query: int, qid: torch.Tensor, other: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """For each query (n_query,), the ``other`` id of its closest pair, -1 when it has none.

    Ties in distance go to the lower id (distance bits and id are packed into one int64 key).
    """
    best = _best_key(n_query, qid, other, d2)
    return torch.where(best == _NONE, -1, best & 0xFFFFFFFF)


def independent_set(n: int, src: torch.Tensor, dst: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """A maximal independent set of the graph of close pairs, and where every other node merges.

    Args:
        n: number of nodes; src, dst (P,): close pairs (both directions listed); d2 (P,) their
            squared distances.
    Returns:
        target (n,) long: -1 for nodes kept, else the id of a kept node adjacent to it (its nearest
        kept neighbour when it was decided).

    Luby's rounds with a fixed pseudo-random priority (a bijective hash of the node id, so the
    result is deterministic): an undecided node whose priority is below every undecided
    neighbour's is kept, its undecided neighbours merge into it. No two kept nodes are adjacent
    (a kept node's neighbours are removed in the round it is kept; two neighbours are never kept in
    one round as priorities are distinct), and every merged node is adjacent to its target.
    Expected O(log n) rounds; the pair list shrinks every round.
    """
    device = src.device
    bits = max(1, math.ceil(math.log2(max(n, 2))))
    priority = (torch.arange(n, device=device) * 0x5851F42D4C957F2D) & ((1 << bits) - 1)  # odd multiplier: bijective
    target = torch.full((n,), -2, dtype=torch.int64, device=device)  # -2 undecided, -1 kept
    big = torch.iinfo(torch.int64).max
    while True:
        undecided = target == -2
        if src.numel() == 0:
            target[undecided] = -1
            return target
        min_nb = torch.full((n,), big, dtype=torch.int64, device=device)
        min_nb.scatter_reduce_(0, src, priority.index_select(0, dst), reduce="amin")
        kept = undecided & (priority < min_nb)
        target.masked_fill_(kept, -1)
        to_kept = kept.index_select(0, dst).nonzero().squeeze(1)
        merged_to = nearest_within(n, src.index_select(0, to_kept), dst.index_select(0, to_kept), d2.index_select(0, to_kept))
        target = torch.where(merged_to >= 0, merged_to, target)
        alive = ((target.index_select(0, src) == -2) & (target.index_select(0, dst) == -2)).nonzero().squeeze(1)
        src, dst, d2 = src.index_select(0, alive), dst.index_select(0, alive), d2.index_select(0, alive)


class KnnIndex:
    """Exact k-nearest-neighbour search over fixed points (N,3), one of ``INDEX_TYPES``.

    ``kd_tree``: scipy cKDTree (all cores); ``ball_tree``: sklearn BallTree; ``cuda_knn``: torch
    ``cdist`` + ``topk`` in query chunks on the points' device (CUDA or CPU). Results are sorted by
    distance; all three agree except in exact distance ties.
    """

    def __init__(self, points: torch.Tensor, index_type: str, chunk_elements: int = 1 << 24):
        self.index_type, self.points, self.chunk_elements = index_type, points, chunk_elements
        if index_type == "kd_tree":
            from scipy.spatial import cKDTree

            self._tree = cKDTree(points.detach().cpu().double().numpy())
        elif index_type == "ball_tree":
            from sklearn.neighbors import BallTree

            self._tree = BallTree(points.detach().cpu().double().numpy())

    def query(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dist (Q,k) float32 and idx (Q,k) long of the k nearest points, nearest first."""
        device = query.device
        if self.index_type == "cuda_knn":
            return self._torch_query(query, k)
        q = query.detach().cpu().double().numpy()
        if self.index_type == "kd_tree":
            dist, idx = self._tree.query(q, k=k, workers=-1)
            if k == 1:
                dist, idx = dist[:, None], idx[:, None]
        else:
            dist, idx = self._tree.query(q, k=k, return_distance=True, sort_results=True)
        return torch.from_numpy(dist).float().to(device), torch.from_numpy(idx).long().to(device)

    def _torch_query(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        pts = self.points.double()
        q = query.to(pts.device).double()
        chunk = max(1, self.chunk_elements // max(pts.shape[0], 1))
        dists, idxs = [], []
        for s in range(0, q.shape[0], chunk):
            # float64 matmul form: fast; its rounding (~1e-16 |x|^2) only matters for near-exact ties
            d = torch.cdist(q[s : s + chunk], pts, compute_mode="use_mm_for_euclid_dist")
            dk, ik = torch.topk(d, k, dim=1, largest=False, sorted=True)
            dists.append(dk)
            idxs.append(ik)
        return torch.cat(dists).float().to(query.device), torch.cat(idxs).to(query.device)
