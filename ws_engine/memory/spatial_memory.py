"""Spatial-Stereo Memory (SSM): a bounded bank of fine features tied to 3D correspondences.

Each entry j holds a feature ``f_j`` (D,), K world points ``x_jk`` (its 3D correspondences) and their
confidences ``c_jk``. In a camera, correspondence k of entry j is *usable* when ``c_jk >=
confidence_threshold``, the point projects in front of the camera (depth > 0) and the entry slot is
filled. A query (feature ``q_i``, world position ``p_i``) in front of the camera may attend entry j
iff some usable correspondence of j projects within ``attention_window`` pixels (Euclidean, plain
pixel coordinates, so no longitude wrap for panoramas) of the projection of ``p_i``. Attention is a
softmax of ``q_i . f_j / sqrt(D)`` over those entries; a query without any gets zeros.

The attention is computed sparsely (:func:`window_attention`): usable correspondences are bucketed
in a grid of cells of size ``attention_window``; queries in one tile of 2x2 cells share a candidate
list (the correspondences of the cells around the tile, one entry counted once), tested exactly per
query; scores are small batched matmuls. Dense (B,N,M) tensors are built only for the weights.

Frame-level retrieval (:meth:`SpatialStereoMemory.select_reference_frames`) scores registered views
like the official WorldStereo memory bank: IoU of frustum bounding boxes times an angle penalty.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..cameras import CameraParameters
from ..device import resolve_device
from ..errors import ConfigError, EmptyMemoryError, ShapeMismatchError, check_choice
from ..geometry import project

__all__ = ["SpatialStereoMemory", "REPLACEMENT_POLICIES", "window_attention"]

REPLACEMENT_POLICIES = ("fifo", "lru", "importance_based")
CHUNK_ELEMENTS = 1 << 21  # bound on the (groups x queries x candidates) elements held at once
MAX_GROUP_QUERIES = 32
TILE_CELLS = 2  # queries are grouped by tiles of 2x2 cells (see window_attention)
RETRIEVE_CHUNK_ELEMENTS = 1 << 22  # bound on the (queries x M x K) distances retrieve holds at once


# ------------------------------------------------------------------------------------------------
# sparse windowed attention (pure function)
# ------------------------------------------------------------------------------------------------


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
    index = _CellIndex(
        key, torch.cat([corr_uv.index_select(0, order), far]), torch.cat([corr.index_select(0, order) // K, sentinel]), row_stride
    )
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
    ends = length.cumsum(1)
    slot = torch.arange(L, device=start.device).repeat(c, 1)
    run = torch.searchsorted(ends, slot, right=True)  # (c,L) run of each slot, R = padding
    pos = slot + (start - ends + length).gather(1, run.clamp(max=R - 1))
    pos.masked_fill_(run >= R, len(index.key))
    uv = index.uv[pos]
    inside = ((uv >= low[:, None]) & (uv <= high[:, None])).all(-1)
    M = int(index.entry[-1])
    entry = index.entry[pos].masked_fill_(~inside, M)
    # sort each row by entry id with one flat (int32 where it fits) sort that keeps rows apart;
    # the candidates outside the box go last and are cut off
    flat = entry + (M + 1) * torch.arange(c, device=start.device)[:, None]
    perm = torch.sort((flat.int() if c * (M + 1) < 2**31 else flat).flatten()).indices.view(c, L)
    perm = perm[:, : max(1, int(inside.sum(1).max()))]
    return entry.flatten()[perm], uv.view(-1, 2)[perm]


def _entry_distances(d2: torch.Tensor, entry: torch.Tensor, M: int):
    """Squared pixel distance (c,G,U) of each query to each distinct entry (c,U) of its group's
    candidates: the minimum over the entry's correspondences in ``d2`` (c,G,L) (``entry`` (c,L)
    sorted, M = padding). Returns entry ids (c,U), distances, validity (c,U)."""
    c, G, L = d2.shape
    first = entry < M
    first[:, 1:] &= entry[:, 1:] != entry[:, :-1]
    col, col_ok = _compact(first)
    U = col.shape[1]
    column = (first.cumsum(1) - 1).masked_fill_(entry >= M, U)  # (c,L) each candidate's column, U = none
    dist = d2.new_full((c, G, U + 1), math.inf).scatter_reduce_(2, column[:, None, :].expand(c, G, L), d2, "amin")
    return entry.gather(1, col).masked_fill_(~col_ok, 0), dist[..., :U], col_ok


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
    ``window`` of the box around its queries. They are sorted by entry, tested exactly per query, reduced to one column per entry (nearest correspondence),
    and attended with batched matmuls over the entries some query of the group may see.
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
            d2 = (q_uv[..., 0] - cand_uv[:, None, :, 0]).square_()
            d2 += (q_uv[..., 1] - cand_uv[:, None, :, 1]).square_()  # (c,G,L), inf for padding
            uid, dist, ok = _entry_distances(d2, entry, M)
            allow = (dist <= window * window).logical_and_(ok[:, None, :])
            col, ok = _compact(allow.any(1))  # drop entries no query of the group may attend
            if col.shape[1] == 0:
                continue
            col3 = col[:, None, :].expand(c, G, -1)
            uid, allow, dist = uid.gather(1, col), allow.gather(2, col3).logical_and_(ok[:, None, :]), dist.gather(2, col3)
            if max_candidates is not None and col.shape[1] > max_candidates:
                _keep_nearest(allow, dist, max_candidates)

            keys = features.index_select(0, uid.flatten()).view(c, -1, D)  # (c,U,D)
            q_index = queries[qpos.clamp(max=len(queries) - 1)]  # (c,G)
            q_feat = query_features.index_select(0, q_index.flatten()).view(c, G, D).to(dtype)
            scores = torch.bmm(q_feat, keys.transpose(1, 2)).mul_(1.0 / math.sqrt(D)).masked_fill_(~allow, -math.inf)
            top = scores.amax(2, keepdim=True).nan_to_num_(0.0, neginf=0.0)
            weights = scores.sub_(top).exp_()
            weights /= weights.sum(2, keepdim=True).clamp_min_(torch.finfo(dtype).tiny)
            output[q_index[q_real]] = torch.bmm(weights, keys)[q_real].to(output.dtype)
            mass.index_add_(0, uid.flatten(), weights.sum(1).flatten())
            if return_pairs:
                g, q, u = allow.nonzero(as_tuple=True)
                pairs.append((q_index[g, q], uid[g, u], weights[g, q, u]))
    return output, mass, tuple(map(torch.cat, zip(*pairs))) if return_pairs else None


# ------------------------------------------------------------------------------------------------
# frame-level retrieval helpers
# ------------------------------------------------------------------------------------------------


def _frustum_boxes(K: torch.Tensor, c2w: torch.Tensor, size: torch.Tensor, panorama: torch.Tensor, near: float, far: float):
    """Axis-aligned boxes (V,2,3) (min, max) of the 8 frustum corners, and optical axes (V,3).

    Corners lie at distances ``near`` and ``far`` along the unit rays of the image-corner pixels
    (0,0), (W,0), (W,H), (0,H). A panorama's box is the sphere of radius ``far`` around its centre.
    """
    W, H = size[:, 0].to(K.dtype), size[:, 1].to(K.dtype)
    zero, one = torch.zeros_like(W), torch.ones_like(W)
    pixels = torch.stack(
        [torch.stack([zero, zero, one], -1), torch.stack([W, zero, one], -1), torch.stack([W, H, one], -1), torch.stack([zero, H, one], -1)], 1
    )  # (V,4,3)
    rays = F.normalize(torch.einsum("vij,vcj->vci", torch.linalg.inv(K), pixels), dim=-1)
    depths = torch.tensor([near, far], dtype=K.dtype, device=K.device)
    local = (rays[:, None] * depths[None, :, None, None]).reshape(len(K), 8, 3)
    corners = torch.einsum("vij,vcj->vci", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]
    box = torch.stack([corners.amin(1), corners.amax(1)], 1)
    centre = c2w[:, :3, 3]
    sphere = torch.stack([centre - far, centre + far], 1)
    box = torch.where(panorama[:, None, None], sphere, box)
    return box, c2w[:, :3, 2]


def frustum_overlap_scores(target: CameraParameters, view_K, view_c2w, view_size, view_panorama, near=0.1, far=10.0):
    """Scores (T,V) = IoU of frustum boxes x ``clip(exp(5 (90 - angle) / 180), 0, 1)``.

    ``angle`` is the angle in degrees between the optical axes (c2w column 2).
    """
    t_size = torch.tensor([[target.width, target.height]], device=target.device).expand(len(target), 2)
    t_pano = torch.full((len(target),), target.model == "equirectangular", device=target.device)
    t_box, t_axis = _frustum_boxes(target.Kb.double(), target.c2wb.double(), t_size, t_pano, near, far)
    v_box, v_axis = _frustum_boxes(view_K.double(), view_c2w.double(), view_size, view_panorama, near, far)
    t_box, v_box, t_axis, v_axis = t_box.cpu(), v_box.cpu(), t_axis.cpu(), v_axis.cpu()
    low = torch.maximum(t_box[:, None, 0], v_box[None, :, 0])
    high = torch.minimum(t_box[:, None, 1], v_box[None, :, 1])
    inter = (high - low).clamp(min=0).prod(-1)
    volume = lambda box: (box[:, 1] - box[:, 0]).prod(-1)  # noqa: E731
    union = volume(t_box)[:, None] + volume(v_box)[None, :] - inter
    iou = inter / union.clamp_min(1e-12)
    cos = (F.normalize(t_axis, dim=-1) @ F.normalize(v_axis, dim=-1).T).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cos))
    return (iou * torch.exp(5 * (90 - angle) / 180).clamp(0, 1)).float()


# ------------------------------------------------------------------------------------------------
# the memory
# ------------------------------------------------------------------------------------------------


def _as_float(x, name: str, device, dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ShapeMismatchError(f"{name} must be a tensor or numeric array, got {type(x).__name__}: {exc}") from None
    return x.to(device=device, dtype=dtype)


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} contains NaN or infinity; drop or fix those rows before passing them.")


def _as_cameras(cameras, name: str = "camera_params") -> CameraParameters:
    cams = cameras if isinstance(cameras, CameraParameters) else getattr(cameras, "cameras", None)
    if not isinstance(cams, CameraParameters):
        raise ShapeMismatchError(f"{name} must be CameraParameters or a CameraTrajectory, got {type(cameras).__name__}.")
    return cams


def _check_cameras(camera_params, batch: int) -> CameraParameters:
    cams = _as_cameras(camera_params)
    if len(cams) not in (1, batch):
        raise ShapeMismatchError(
            f"The queries hold a batch of {batch} but camera_params holds {len(cams)} cameras; give one camera per batch item or a single camera."
        )
    return cams


class SpatialStereoMemory:
    """A bank of at most ``memory_size`` features (D,) with K world correspondences each.

    Args:
        memory_size: number of slots M. feature_dim: D. num_correspondences: K.
        attention_window: radius in pixels within which a query sees an entry's correspondence.
        confidence_threshold: correspondences with a lower confidence are ignored.
        replacement: what a full memory evicts when new entries arrive:
            ``"fifo"`` the oldest inserted; ``"lru"`` the least recently used (insertion, being
            returned by :meth:`retrieve` or receiving attention weight > 0 from
            :meth:`constrained_attention` count as uses); ``"importance_based"`` the lowest
            importance = max confidence at insertion + attention mass received since (softmax
            weights summed over all queries and calls; a dense call without weights adds none).
            Ties go to the oldest inserted. Free slots are always filled first.
        device: ``"cuda"`` without CUDA falls back to the CPU with one warning.
        max_candidates: default cap on entries per query in :meth:`constrained_attention`.
        dtype: storage dtype of features.

    Tensors are preallocated: ``features`` (M,D), ``correspondences`` (M,K,3), ``confidences``
    (M,K), ``filled`` (M,) bool, ``inserted_at``/``last_used`` (M,) long clocks, ``importance``
    (M,), ``entry_view`` (M,) long (-1 = none) and a Python ``metadata`` list.
    """

    def __init__(
        self,
        memory_size: int = 4096,
        feature_dim: int = 64,
        num_correspondences: int = 4,
        attention_window: float = 16,
        confidence_threshold: float = 0.5,
        replacement: str = "fifo",
        device: str | torch.device = "cpu",
        *,
        max_candidates: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        for name, value in (("memory_size", memory_size), ("feature_dim", feature_dim), ("num_correspondences", num_correspondences)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not (math.isfinite(float(attention_window)) and float(attention_window) > 0):
            raise ConfigError(f"attention_window must be a positive number of pixels, got {attention_window!r}.")
        if not math.isfinite(float(confidence_threshold)):
            raise ConfigError(f"confidence_threshold must be finite, got {confidence_threshold!r}.")
        self._check_cap(max_candidates)
        self.replacement = check_choice("replacement policy", replacement, REPLACEMENT_POLICIES)
        self.memory_size, self.feature_dim, self.num_correspondences = memory_size, feature_dim, num_correspondences
        self.attention_window, self.confidence_threshold = float(attention_window), float(confidence_threshold)
        self.max_candidates, self.dtype = max_candidates, dtype
        self.device = resolve_device(device)
        M, D, K, dev = memory_size, feature_dim, num_correspondences, self.device
        self.features = torch.zeros(M, D, dtype=dtype, device=dev)
        self.correspondences = torch.zeros(M, K, 3, dtype=torch.float32, device=dev)
        self.confidences = torch.zeros(M, K, dtype=torch.float32, device=dev)
        self.filled = torch.zeros(M, dtype=torch.bool, device=dev)
        self.inserted_at = torch.zeros(M, dtype=torch.long, device=dev)
        self.last_used = torch.zeros(M, dtype=torch.long, device=dev)
        self.importance = torch.zeros(M, dtype=torch.float32, device=dev)
        self.entry_view = torch.full((M,), -1, dtype=torch.long, device=dev)
        self.metadata: list[Any] = [None] * M
        self.views: list[dict] = []
        self._clock = 0

    # configuration and state ----------------------------------------------------------------
    @property
    def config(self) -> dict:
        """Constructor arguments as a plain (JSON-friendly) dict."""
        return {
            "memory_size": self.memory_size,
            "feature_dim": self.feature_dim,
            "num_correspondences": self.num_correspondences,
            "attention_window": self.attention_window,
            "confidence_threshold": self.confidence_threshold,
            "replacement": self.replacement,
            "max_candidates": self.max_candidates,
        }

    _STATE = ("features", "correspondences", "confidences", "filled", "inserted_at", "last_used", "importance", "entry_view")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly): the bank, the clocks and the registered view cameras.

        View images and names and entry metadata are not included; the config is :attr:`config`.
        """
        state = {name: getattr(self, name).clone() for name in self._STATE}
        state["clock"] = torch.tensor(self._clock, dtype=torch.long)
        if self.views:
            K, c2w, size, pano = self._view_tensors()
        else:
            K, c2w, size, pano = torch.zeros(0, 3, 3), torch.zeros(0, 4, 4), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
        state.update(view_K=K.float(), view_c2w=c2w.float(), view_size=size, view_panorama=pano)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` returned; shapes must match this memory's config."""
        missing = [n for n in self._STATE + ("clock",) if n not in state]
        if missing:
            raise ShapeMismatchError(f"The state dict lacks {', '.join(missing)}; pass what SpatialStereoMemory.state_dict() returned.")
        for name in self._STATE:
            mine, theirs = getattr(self, name), state[name]
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ShapeMismatchError(
                    f"State tensor {name!r} has shape {tuple(theirs.shape)} but this memory expects {tuple(mine.shape)}; "
                    "build the memory with the saved config (memory_size, feature_dim, num_correspondences)."
                )
        for name in self._STATE:
            setattr(self, name, state[name].to(device=self.device, dtype=getattr(self, name).dtype).clone())
        self._clock = int(state["clock"])
        self.metadata = [None] * self.memory_size
        self.views = []
        if "view_K" in state:
            for K, c2w, size, pano in zip(state["view_K"], state["view_c2w"], state["view_size"], state["view_panorama"]):
                model = "equirectangular" if bool(pano) else "pinhole"
                cam = CameraParameters(K, c2w, int(size[0]), int(size[1]), model=model).to(self.device)
                self.views.append({"camera": cam, "image": None, "name": None})

    def to(self, device) -> "SpatialStereoMemory":
        """Move every tensor (and the view cameras) to ``device``; returns self."""
        self.device = resolve_device(device)
        for name in self._STATE:
            setattr(self, name, getattr(self, name).to(self.device))
        for view in self.views:
            view["camera"] = view["camera"].to(self.device)
            if view["image"] is not None:
                view["image"] = view["image"].to(self.device)
        return self

    def clear(self) -> None:
        """Empty the bank and forget the registered views (the config stays)."""
        self.filled.zero_()
        self.features.zero_()
        self.correspondences.zero_()
        self.confidences.zero_()
        self.inserted_at.zero_()
        self.last_used.zero_()
        self.importance.zero_()
        self.entry_view.fill_(-1)
        self.metadata = [None] * self.memory_size
        self.views = []
        self._clock = 0

    def __len__(self) -> int:
        return int(self.filled.sum())

    def __repr__(self) -> str:
        return f"SpatialStereoMemory({len(self)}/{self.memory_size} entries, D={self.feature_dim}, K={self.num_correspondences}, replacement={self.replacement!r})"

    # writing -----------------------------------------------------------------------------------
    def add_to_memory(self, features, correspondences, confidences, metadata=None) -> torch.Tensor:
        """Store N entries; returns their slots (N,) long.

        Args:
            features: (N,D). correspondences: (N,K,3) world points. confidences: (N,K).
            metadata: None, one dict for all N entries, or a list of N items. A dict holding a
                ``"camera"`` (CameraParameters) also registers that view (see :meth:`add_view`,
                with its optional ``"image"`` and ``"name"``).
        Free slots are filled first (lowest index first), then entries are evicted by the
        replacement policy. N may not exceed ``memory_size`` (ShapeMismatchError): split the batch.
        """
        f = _as_float(features, "features", self.device, self.dtype)
        x = _as_float(correspondences, "correspondences", self.device, torch.float32)
        c = _as_float(confidences, "confidences", self.device, torch.float32)
        D, K = self.feature_dim, self.num_correspondences
        if f.dim() != 2 or f.shape[1] != D:
            raise ShapeMismatchError(f"features must have shape (N,{D}) for feature_dim={D}, got {tuple(f.shape)}.")
        N = f.shape[0]
        if x.dim() != 3 or x.shape[-1] != 3 or x.shape[1] != K:
            raise ShapeMismatchError(
                f"correspondences must have shape (N,{K},3) for num_correspondences={K}, got {tuple(x.shape)}."
            )
        if c.dim() != 2 or c.shape[1] != K:
            raise ShapeMismatchError(f"confidences must have shape (N,{K}), got {tuple(c.shape)}.")
        if x.shape[0] != N or c.shape[0] != N:
            raise ShapeMismatchError(
                f"features, correspondences and confidences must describe the same entries, got N = {N}, {x.shape[0]}, {c.shape[0]}."
            )
        if N > self.memory_size:
            raise ShapeMismatchError(
                f"Cannot add {N} entries to a memory of {self.memory_size} slots; add at most {self.memory_size} at a time "
                "(split the batch) or build the memory with a larger memory_size."
            )
        items = self._metadata_items(metadata, N)
        for t, name in ((f, "features"), (x, "correspondences"), (c, "confidences")):
            _check_finite(t, name)
        if N == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)

        slots = self._free_slots(N)
        self.features[slots], self.correspondences[slots], self.confidences[slots] = f, x, c
        self.filled[slots] = True
        stamp = self._clock + torch.arange(N, device=self.device)
        self._clock += N
        self.inserted_at[slots] = stamp
        self.last_used[slots] = stamp
        self.importance[slots] = c.amax(1)
        views: dict[int, int] = {}
        entry_view = torch.full((N,), -1, dtype=torch.long)
        for i, item in enumerate(items):
            self.metadata[int(slots[i])] = item
            camera = item.get("camera") if isinstance(item, dict) else None
            if isinstance(camera, CameraParameters):
                if id(camera) not in views:
                    views[id(camera)] = self.add_view(camera, item.get("image"), item.get("name"))
                entry_view[i] = views[id(camera)]
        self.entry_view[slots] = entry_view.to(self.device)
        return slots

    @staticmethod
    def _metadata_items(metadata, N: int) -> list:
        if metadata is None or isinstance(metadata, dict):
            return [metadata] * N
        if not isinstance(metadata, Sequence) or isinstance(metadata, str) or len(metadata) != N:
            raise ShapeMismatchError(f"metadata must be None, one dict, or a list of {N} items (one per entry), got {type(metadata).__name__}.")
        return list(metadata)

    def _free_slots(self, N: int) -> torch.Tensor:
        """N slots: empty ones first (lowest index), then the policy's victims (M-first order)."""
        free = (~self.filled).nonzero().squeeze(1)[:N]
        need = N - len(free)
        if need == 0:
            return free
        order = torch.argsort(self.inserted_at, stable=True)  # oldest first, tie-breaker for all
        if self.replacement == "lru":
            order = order[torch.argsort(self.last_used[order], stable=True)]
        elif self.replacement == "importance_based":
            order = order[torch.argsort(self.importance[order], stable=True)]
        victims = order[self.filled[order]][:need]
        return torch.cat([free, victims])

    def add_view(self, camera: CameraParameters, image: torch.Tensor | None = None, name: str | None = None) -> int:
        """Register one stored view (camera, optional image (3,H,W)) for frame retrieval; returns its index."""
        if not isinstance(camera, CameraParameters) or len(camera) != 1:
            got = f"{len(camera)} cameras" if isinstance(camera, CameraParameters) else type(camera).__name__
            raise ShapeMismatchError(f"add_view takes a single CameraParameters, got {got}; call it once per view.")
        if image is not None:
            image = _as_float(image, "image", self.device, torch.float32)
            if image.dim() != 3 or image.shape[0] != 3:
                raise ShapeMismatchError(f"A view image must have shape (3,H,W), got {tuple(image.shape)}.")
        self.views.append({"camera": camera.to(self.device), "image": image, "name": name})
        return len(self.views) - 1

    # reading -----------------------------------------------------------------------------------
    def _check_queries(self, query_positions, camera_params, query_features=None):
        """Validate query tensors (B,N,3)/(B,N,D) and cameras; raise before any work."""
        if not bool(self.filled.any()):
            raise EmptyMemoryError("The spatial-stereo memory is empty; add entries with add_to_memory() before querying it.")
        pos = _as_float(query_positions, "query_positions", self.device, torch.float32)
        if pos.dim() != 3 or pos.shape[-1] != 3:
            raise ShapeMismatchError(f"query_positions must have shape (B,N,3), got {tuple(pos.shape)}.")
        feats = None
        if query_features is not None:
            feats = _as_float(query_features, "query_features", self.device, self.dtype)
            D = self.feature_dim
            if feats.dim() != 3 or feats.shape[-1] != D:
                raise ShapeMismatchError(f"query_features must have shape (B,N,{D}) for feature_dim={D}, got {tuple(feats.shape)}.")
            if feats.shape[:2] != pos.shape[:2]:
                raise ShapeMismatchError(
                    f"query_features {tuple(feats.shape[:2])} and query_positions {tuple(pos.shape[:2])} must share (B,N)."
                )
            _check_finite(feats, "query_features")
        _check_finite(pos, "query_positions")
        cams = _check_cameras(camera_params, pos.shape[0])
        return pos, feats, cams

    def _project(self, query_positions: torch.Tensor, camera: CameraParameters):
        """Pixels and usability of one camera's queries (N,2),(N,) and entries (M,K,2),(M,K)."""
        M, K = self.confidences.shape
        q_uv, q_depth = project(query_positions, camera)
        e_uv, e_depth = project(self.correspondences.reshape(-1, 3), camera)
        e_uv, e_depth = e_uv.reshape(M, K, 2), e_depth.reshape(M, K)
        q_ok = (q_depth > 0) & torch.isfinite(q_uv).all(-1)
        e_ok = (e_depth > 0) & torch.isfinite(e_uv).all(-1) & (self.confidences >= self.confidence_threshold)
        return q_uv, q_ok, e_uv, e_ok & self.filled[:, None]

    def _touch(self, entries: torch.Tensor) -> None:
        """Mark entries (any shape, -1 ignored, repeats allowed) as used now (LRU clock)."""
        entries = entries[entries >= 0]
        if len(entries):
            self.last_used[entries] = self._clock
            self._clock += 1

    def retrieve(self, query_positions, camera_params, top_k: int = 8, *, max_distance: float | None = None):
        """The ``top_k`` entries nearest each query in the image of its camera.

        The distance of entry j to query i in camera b is the pixel distance between the
        projection of query i and the nearest projection of a usable correspondence of j
        (confident, in front). Entries without one, queries behind the camera, and (when given)
        distances above ``max_distance`` pixels give index -1 and zero features.

        Args:
            query_positions: (B,N,3) world points. camera_params: B cameras or one.
        Returns:
            features (B,N,top_k,D) and indices (B,N,top_k) long, nearest first.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}.")
        pos, _, cams = self._check_queries(query_positions, camera_params)
        B, N, _ = pos.shape
        M = self.memory_size
        k = min(top_k, M)
        indices = torch.full((B, N, top_k), -1, dtype=torch.long, device=self.device)
        chunk = max(1, RETRIEVE_CHUNK_ELEMENTS // (M * self.num_correspondences))
        for b in range(B):
            q_uv, q_ok, e_uv, e_ok = self._project(pos[b], cams[min(b, len(cams) - 1)])
            for s in range(0, N, chunk):
                d2 = ((q_uv[s : s + chunk, None, None] - e_uv[None]) ** 2).sum(-1)  # (n,M,K)
                d2 = d2.masked_fill(~e_ok[None], math.inf).amin(-1)
                d2 = d2.masked_fill(~q_ok[s : s + chunk, None], math.inf)
                if max_distance is not None:
                    d2 = d2.masked_fill(d2 > float(max_distance) ** 2, math.inf)
                dist, idx = d2.topk(k, dim=1, largest=False)
                indices[b, s : s + chunk, :k] = idx.masked_fill(~torch.isfinite(dist), -1)
        feats = self.features[indices.clamp(min=0)] * (indices >= 0)[..., None]
        self._touch(indices)
        return feats, indices

    def constrained_attention(
        self,
        query_features,
        query_positions,
        camera_params,
        use_correspondence_mask: bool = True,
        return_weights: bool = True,
        *,
        max_candidates: int | None = None,
    ):
        """Attention of queries to the entries whose correspondences land near them.

        Query i (in camera b) may attend entry j iff the query is in front of the camera and some
        usable correspondence of j (confidence >= threshold, in front) projects within
        ``attention_window`` pixels of the query's projection; with ``max_candidates`` (default:
        the memory's) only the nearest ones. Scores ``q.f / sqrt(D)``, softmax over allowed
        entries; queries without any output zeros. ``use_correspondence_mask=False`` is dense
        softmax attention over all filled entries.

        Args:
            query_features: (B,N,D). query_positions: (B,N,3) world points. camera_params: B or 1 cameras.
        Returns:
            output (B,N,D) and weights (B,N,memory_size) (zero off the allowed entries) or None.
        """
        cap = self.max_candidates if max_candidates is None else self._check_cap(max_candidates)
        pos, q, cams = self._check_queries(query_positions, camera_params, query_features)
        B, N, D = q.shape
        M = self.memory_size
        weights = torch.zeros(B, N, M, dtype=self.dtype, device=self.device) if return_weights else None
        if not use_correspondence_mask:
            filled = self.filled.nonzero().squeeze(1)
            keys = self.features[filled][None].expand(B, -1, -1)
            if return_weights:
                w = torch.softmax(torch.matmul(q, keys.transpose(1, 2)) / math.sqrt(D), dim=-1)
                weights[:, :, filled] = w
                output = torch.matmul(w, keys)
            else:
                output = F.scaled_dot_product_attention(q, keys, keys)
                w = None
            self._touch(filled)
            if w is not None:  # without weights the attention mass is unknown: importance unchanged
                self.importance.index_add_(0, filled, w.sum((0, 1)).to(self.importance.dtype))
            return output, weights
        output = torch.zeros_like(q)
        total_mass = torch.zeros(M, dtype=self.dtype, device=self.device)
        for b in range(B):
            q_uv, q_ok, e_uv, e_ok = self._project(pos[b], cams[min(b, len(cams) - 1)])
            output[b], mass, pairs = window_attention(
                q[b], q_uv, q_ok, e_uv, e_ok, self.features, self.attention_window, cap, return_pairs=return_weights
            )
            if weights is not None:
                rows, entries, w = pairs
                weights[b, rows, entries] = w
            total_mass += mass
        self.importance += total_mass.to(self.importance.dtype)
        self._touch((total_mass > 0).nonzero().squeeze(1))
        return output, weights

    @staticmethod
    def _check_cap(max_candidates):
        if max_candidates is not None and (isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1):
            raise ConfigError(f"max_candidates must be None (exact) or a positive integer, got {max_candidates!r}.")
        return max_candidates

    # frame-level retrieval -----------------------------------------------------------------------
    def _view_tensors(self):
        cams = [v["camera"] for v in self.views]
        K = torch.cat([c.Kb.double().cpu() for c in cams])
        c2w = torch.cat([c.c2wb.double().cpu() for c in cams])
        size = torch.tensor([[c.width, c.height] for c in cams], dtype=torch.long)
        pano = torch.tensor([c.model == "equirectangular" for c in cams])
        return K, c2w, size, pano

    def view_scores(self, target_cameras, *, near: float = 0.1, far: float = 10.0) -> torch.Tensor:
        """Scores (T,V) of every registered view for every target camera (see :func:`frustum_overlap_scores`)."""
        if not self.views:
            raise EmptyMemoryError(
                "No views are registered; call add_view(camera, image) or pass metadata={'camera': ...} to add_to_memory()."
            )
        target = _as_cameras(target_cameras, "target_cameras")
        if not (0 < float(near) < float(far)):
            raise ConfigError(f"Need 0 < near < far, got near={near}, far={far}.")
        return frustum_overlap_scores(target, *self._view_tensors(), near=float(near), far=float(far))

    def select_reference_frames(self, target_cameras, k: int = 8, *, near: float = 0.1, far: float = 10.0) -> torch.Tensor:
        """Up to ``k`` distinct stored views (indices into :attr:`views`) for the target cameras.

        Each target camera takes its best-scoring view (first on ties), as the official memory
        bank does; the distinct views so chosen are ranked by their best score (then by first
        appearance along the targets) and the top ``k`` are returned, best first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}.")
        scores = self.view_scores(target_cameras, near=near, far=far)  # (T,V)
        best_view = scores.argmax(1)  # (T,), first on ties
        best_score = scores.gather(1, best_view[:, None]).squeeze(1)
        V = scores.shape[1]
        score = torch.full((V,), -1.0).scatter_reduce_(0, best_view, best_score, "amax")
        first = torch.full((V,), len(best_view)).scatter_reduce_(0, best_view, torch.arange(len(best_view)), "amin")
        chosen = torch.unique(best_view)
        chosen = chosen[torch.argsort(first[chosen], stable=True)]  # by first appearance ...
        order = chosen[torch.argsort(-score[chosen], stable=True)][:k]  # ... then best score first
        return order.to(self.device)
