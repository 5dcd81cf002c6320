"""Sparse window attention: queries attend the entries with a correspondence within a pixel window.

Usable correspondences are bucketed in a grid of cells of size ``window``; queries in one tile of
2x2 cells share a candidate list (the correspondences of the cells around the tile, one entry
counted once), tested exactly per query; scores are small batched matmuls. Pure eager torch
(CPU and CUDA alike); used by :class:`~ws_engine.memory.spatial_memory.SpatialStereoMemory`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["window_attention", "CHUNK_ELEMENTS", "TILE_CELLS"]

# bound on the (groups x queries x candidates) elements held at once: 2 MB float blocks stay in
# the allocator's heap; 8 MB ones went back to the OS and page-faulted in again on every chunk
CHUNK_ELEMENTS = 1 << 19
MAX_GROUP_QUERIES = 32
TILE_CELLS = 2  # queries are grouped by tiles of 2x2 cells (see window_attention)


def _group_queries(tile_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Split queries into groups of at most G queries sharing a tile.

    Args:
        tile_key: (Q,) tile keys of the queries.
    Returns:
        members (Gn,G) long: query positions (into ``tile_key``) per group, padded with Q;
        group_key (Gn,) tile key of each group; G (a power of two near the mean tile occupancy).
    """
    key, order = torch.sort(tile_key, stable=True)
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    tile_start = first.nonzero().squeeze(1)
    rank = torch.arange(len(key), device=key.device) - tile_start[torch.cumsum(first, 0) - 1]
    mean = len(key) / len(tile_start)
    size = int(min(MAX_GROUP_QUERIES, 2 ** math.ceil(math.log2(max(mean, 1.0)))))
    new_group = first | (rank % size == 0)
    group = torch.cumsum(new_group, 0) - 1
    members = torch.full((int(group[-1]) + 1, size), len(key), dtype=torch.long, device=key.device)
    members[group, rank % size] = order
    return members, key[new_group], size


def _compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column positions (c,U) of the True entries of each row of ``mask`` (c,L), in order, and their
    validity (c,U) (rows hold fewer than U = the largest row count)."""
    count = mask.sum(1)
    rows, cols = mask.nonzero(as_tuple=True)
    slot = torch.arange(len(rows), device=mask.device) - (count.cumsum(0) - count)[rows]
    U = int(count.max()) if len(count) else 0
    col = torch.zeros(mask.shape[0], U, dtype=torch.long, device=mask.device)
    col_ok = torch.zeros(mask.shape[0], U, dtype=torch.bool, device=mask.device)
    col[rows, slot] = cols
    col_ok[rows, slot] = True
    return col, col_ok


def _keep_nearest(allow: torch.Tensor, dist: torch.Tensor, cap: int) -> None:
    """In place: each row of ``allow`` (...,U) keeps its ``cap`` nearest True entries by ``dist``
    (...,U), ties to the lower column."""
    flat = allow.view(-1, allow.shape[-1])
    rows = (flat.sum(1) > cap).nonzero().squeeze(1)  # only these rows need work
    if len(rows) == 0:
        return
    d = dist.view(-1, dist.shape[-1])[rows].masked_fill_(~flat[rows], math.inf)
    kth = d.kthvalue(cap, dim=1, keepdim=True).values
    keep = d <= kth  # every tie at the cap distance included ...
    crowded = (keep.sum(1) > cap).nonzero().squeeze(1)
    if len(crowded):  # ... then the ties beyond the cap dropped, from the highest column down
        d, kth = d[crowded], kth[crowded]
        closer, tie = d < kth, d == kth
        keep[crowded] = closer | (tie & (tie.cumsum(1) <= cap - closer.sum(1, keepdim=True)))
    flat[rows] = keep


class _CellIndex(NamedTuple):
    """Usable correspondences sorted by grid cell; index P of ``uv``/``entry`` is a padding sentinel."""

    key: torch.Tensor  # (P,) sorted cell keys (row * row_stride + column)
    uv: torch.Tensor  # (P+1,2) pixels; the sentinel lies infinitely far from every query
    entry: torch.Tensor  # (P+1,) entry ids; the sentinel is M
    row_stride: int


def _cell_index(corr, corr_uv, query_uv, window: float, tile: int, K: int, M: int):
    """Bucket correspondences (P,) at ``corr_uv`` (P,2) in cells of size ``window``.

    Returns the index and the tile key (Q,) of each query (tiles of ``tile`` x ``tile`` cells).
    Coordinates are clamped first: that keeps keys in int64 and, being 1-Lipschitz, keeps near
    points near; cells are shifted so that neighbourhoods of tiles never wrap around a row.
    """
    limit = window * 2.0**26
    corr_cell = torch.floor(corr_uv.clamp(-limit, limit) / window).long()
    query_cell = torch.floor(query_uv.clamp(-limit, limit) / window).long()
    low = torch.minimum(corr_cell.amin(0), query_cell.amin(0)) - 2 * tile
    corr_cell, query_cell = corr_cell - low, query_cell - low
    row_stride = int(max(corr_cell[:, 0].max(), query_cell[:, 0].max())) + 2 * tile + 2
    key, order = torch.sort(corr_cell[:, 1] * row_stride + corr_cell[:, 0])
    far = torch.full((1, 2), -3e38, dtype=corr_uv.dtype, device=corr_uv.device)
    sentinel = torch.tensor([M], device=corr.device)
    entry = torch.cat([corr.index_select(0, order) // K, sentinel])
    index = _CellIndex(key, torch.cat([corr_uv.index_select(0, order), far]), entry.int() if M < 2**31 else entry, row_stride)
    query_tile = torch.div(query_cell, tile, rounding_mode="floor")
    return index, query_tile[:, 1] * row_stride + query_tile[:, 0]


def _tile_runs(index: _CellIndex, tile_key: torch.Tensor, tile: int):
    """Start and length (Gn,tile+2) of the runs of ``index.key`` holding the cells within one cell
    of each tile (one run per cell row)."""
    stride = index.row_stride
    ty, tx = torch.div(tile_key, stride, rounding_mode="floor"), tile_key % stride
    rows = (ty[:, None] * tile + torch.arange(-1, tile + 1, device=tile_key.device)) * stride
    start = torch.searchsorted(index.key, rows + (tx * tile - 1)[:, None])
    end = torch.searchsorted(index.key, rows + (tx * tile + tile)[:, None], right=True)
    return start, end - start


def _candidates(index: _CellIndex, start: torch.Tensor, length: torch.Tensor, L: int, low: torch.Tensor, high: torch.Tensor):
    """The runs of c groups laid side by side, restricted to the boxes ``low``..``high`` (c,2) and
    sorted by entry: entry ids (c,L') (M = padding) and pixels (c,L',2), L' <= L."""
    c, R = start.shape
    P, dev = len(index.key), start.device
    small = P < 2**31
    # positions in the index by one cumsum of +1 steps and a jump at the start of each run:
    # the jump at run r is start_r - end_(r-1), so empty runs telescope away
    jump = start.clone()
    jump[:, 1:] -= (start + length)[:, :-1]
    ends = length.cumsum(1)
    step = torch.ones(c, L + 1, dtype=torch.int32 if small else torch.long, device=dev)
    step[:, 0] = 0
    step.scatter_add_(1, ends - length, jump.to(step.dtype))
    pos = step[:, :L].cumsum(1, dtype=step.dtype)
    pos.masked_fill_(torch.arange(L, device=dev) >= ends[:, -1:], P)
    pos = pos.flatten()
    uv = index.uv.index_select(0, pos).view(c, L, 2)
    inside = ((uv >= low[:, None]) & (uv <= high[:, None])).all(-1)
    M = int(index.entry[-1])
    # sort each row by entry id with one flat (int32 where it fits) sort that keeps rows apart;
    # the candidates outside the box go last and are cut off
    wide = c * (M + 1) >= 2**31
    row = (M + 1) * torch.arange(c, device=dev, dtype=torch.long if wide else torch.int32)[:, None]
    flat = index.entry.index_select(0, pos).view(c, L).to(row.dtype).masked_fill_(~inside, M).add_(row)
    key, perm = torch.sort(flat.flatten())
    width = max(1, int(inside.sum(1).max()))
    entry = key.view(c, L)[:, :width].sub_(row)
    return entry, uv.view(-1, 2).index_select(0, perm.view(c, L)[:, :width].flatten()).view(c, width, 2)


def _entry_distances(d2: torch.Tensor, entry: torch.Tensor, M: int, K: int, scratch: torch.Tensor):
    """Squared pixel distance (c,G,U) of each query to each distinct entry (c,U) of its group's
    candidates: the minimum over the entry's correspondences in ``d2`` (c,L,G) (candidate-major;
    ``entry`` (c,L) sorted, M = padding; an entry holds at most K consecutive candidates). Returns
    entry ids (c,U) (0 in padding columns) and distances (inf there). ``d2`` is overwritten and
    ``scratch`` (like ``d2``) clobbered: no large temporaries.

    The minimum is a segmented inclusive scan (shifts 1, 2, 4, ... < K, each step only within one
    entry's run) read at the last candidate of each run: contiguous dense passes, no scatter.
    """
    c, L, G = d2.shape
    real = entry < M
    s = 1
    while s < K:
        same = (entry[:, s:] == entry[:, :-s]).logical_and_(real[:, s:])  # (c,L-s)
        block = torch.zeros(same.shape, dtype=d2.dtype, device=d2.device).masked_fill_(~same, math.inf)
        prev = torch.add(d2[:, :-s], block[:, :, None], out=scratch[:, s:])
        torch.minimum(d2[:, s:], prev, out=d2[:, s:])
        s *= 2
    last = real.clone()
    last[:, :-1] &= entry[:, :-1] != entry[:, 1:]
    col, col_ok = _compact(last)
    rows = (col + L * torch.arange(c, device=col.device)[:, None]).flatten()
    dist = d2.view(c * L, G).index_select(0, rows).view(c, -1, G).masked_fill_(~col_ok[..., None], math.inf)
    return entry.gather(1, col).masked_fill_(~col_ok, 0), dist.transpose(1, 2).contiguous()


def _chunks(total: list[int], G: int, budget: int):
    """Consecutive ranges [i, j) of groups sorted by candidate count ``total`` whose padded size
    (j - i) * G * total[j - 1] stays within ``budget`` (at least one group each); empty groups skipped."""
    i, n = sum(1 for t in total if t == 0), len(total)
    while i < n:
        j = i + 1
        while j < n and (j + 1 - i) * G * total[j] <= budget:
            j += 1
        yield i, j
        i = j


def window_attention(
    query_features: torch.Tensor,
    query_uv: torch.Tensor,
    query_ok: torch.Tensor,
    entry_uv: torch.Tensor,
    entry_ok: torch.Tensor,
    features: torch.Tensor,
    window: float,
    max_candidates: int | None = None,
    return_pairs: bool = True,
    chunk_elements: int = CHUNK_ELEMENTS,
    tile_cells: int = TILE_CELLS,
):
    """Sparse attention of queries to entries with a correspondence within ``window`` pixels.

    Args:
        query_features: (N,D); query_uv: (N,2) pixels; query_ok: (N,) bool (query usable).
        entry_uv: (M,K,2) pixels of the correspondences; entry_ok: (M,K) bool (usable).
        features: (M,D) entry features (keys and values).
        window: radius in pixels (inclusive). max_candidates: keep only the nearest ones per query
            (distance = nearest usable correspondence; ties go to the lower entry index); None = all.
        chunk_elements: bound on the (groups x queries x candidates) elements held at once.
        tile_cells: queries are grouped by tiles of ``tile_cells`` x ``tile_cells`` grid cells.
    Returns:
        output (N,D); mass (M,) the attention weight each entry received (summed over queries);
        with ``return_pairs`` the sparse weights ``(query (P,), entry (P,), weight (P,))`` over
        every allowed (query, entry) pair, else None.

    Method: usable correspondences are sorted by grid cell (size ``window``). Queries are grouped
    by tile (at most G per group); a group's candidates are the correspondences of the cells
    within one cell of its tile (one run of the sorted list per cell row) that lie within
    ``window`` of the box around its queries. They are sorted by entry, tested exactly per query,
    reduced to one column per entry (nearest correspondence, by a segmented min scan), and
    attended with batched matmuls over the group's entries (softmax masked to the allowed ones).
    """
    N, D = query_features.shape
    M, K = entry_ok.shape
    dev, dtype = features.device, features.dtype
    output = query_features.new_zeros(N, D)
    mass = features.new_zeros(M)
    pairs = [(torch.zeros(0, dtype=torch.long, device=dev),) * 2 + (features.new_zeros(0),)]
    corr = entry_ok.flatten().nonzero().squeeze(1)  # usable correspondences (P,)
    queries = query_ok.nonzero().squeeze(1)
    if len(corr) and len(queries):
        query_uv = query_uv.index_select(0, queries)
        index, tile_key = _cell_index(corr, entry_uv.reshape(-1, 2).index_select(0, corr), query_uv, window, tile_cells, K, M)
        members, group_key, G = _group_queries(tile_key)
        query_uv = torch.cat([query_uv, torch.full((1, 2), 3e38, dtype=query_uv.dtype, device=dev)])  # padding query
        run_start, run_len = _tile_runs(index, group_key, tile_cells)
        total, by_size = torch.sort(run_len.sum(1))  # chunks of similar size pad little
        total = total.tolist()
        for i, j in _chunks(total, G, chunk_elements):
            sel, L = by_size[i:j], total[j - 1]
            c = len(sel)
            qpos = members[sel]  # (c,G), padding = len(queries)
            q_uv = query_uv.index_select(0, qpos.flatten()).view(c, G, 1, 2)
            q_real = qpos < len(queries)
            # only candidates within `window` of the box around the group's queries can match
            low = q_uv[:, :, 0].masked_fill(~q_real[..., None], math.inf).amin(1) - window
            high = q_uv[:, :, 0].masked_fill(~q_real[..., None], -math.inf).amax(1) + window
            entry, cand_uv = _candidates(index, run_start[sel], run_len[sel], L, low, high)
            d2 = cand_uv[:, :, None, 0] - q_uv[:, None, :, 0, 0]
            dv = cand_uv[:, :, None, 1] - q_uv[:, None, :, 0, 1]
            d2 = d2.mul_(d2).addcmul_(dv, dv)  # (c,L,G), inf for padding
            uid, dist = _entry_distances(d2, entry, M, K, scratch=dv)
            del d2, dv
            if uid.shape[1] == 0:
                continue
            allow = dist <= window * window  # columns past a row's entries hold inf
            if max_candidates is not None and uid.shape[1] > max_candidates:
                _keep_nearest(allow, dist, max_candidates)

            keys = features.index_select(0, uid.flatten()).view(c, -1, D)  # (c,U,D)
            q_index = queries[qpos.clamp(max=len(queries) - 1)]  # (c,G)
            q_feat = query_features.index_select(0, q_index.flatten()).view(c, G, D).to(dtype)
            scores = torch.bmm(q_feat, keys.transpose(1, 2)).mul_(1.0 / math.sqrt(D)).masked_fill_(~allow, -math.inf)
            weights = torch.softmax(scores, 2).nan_to_num_(0.0)  # rows without any entry: 0/0 -> 0
            del scores
            output[q_index[q_real]] = torch.bmm(weights, keys)[q_real].to(output.dtype)
            mass.index_add_(0, uid.flatten(), weights.sum(1).flatten())
            if return_pairs:
                g, q, u = allow.nonzero(as_tuple=True)
                pairs.append((q_index[g, q], uid[g, u].long(), weights[g, q, u]))
    return output, mass, tuple(map(torch.cat, zip(*pairs))) if return_pairs else None
