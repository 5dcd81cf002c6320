"""Spatial-Stereo Memory (SSM): a bounded bank of fine features tied to 3D correspondences.

Each entry j holds a feature ``f_j`` (D,), K world points ``x_jk`` (its 3D correspondences) and their
confidences ``c_jk``. In a camera, correspondence k of entry j is *usable* when ``c_jk >=
confidence_threshold``, the point projects in front of the camera (depth > 0) and the entry slot is
filled. A query (feature ``q_i``, world position ``p_i``) in front of the camera may attend entry j
iff some usable correspondence of j projects within ``attention_window`` pixels (Euclidean, plain
pixel coordinates, so no longitude wrap for panoramas) of the projection of ``p_i``. Attention is a
softmax of ``q_i . f_j / sqrt(D)`` over those entries; a query without any gets zeros.

The sparse kernel lives in :mod:`.window_attention`; frame-level retrieval
(:meth:`SpatialStereoMemory.select_reference_frames`) scores registered views like the official
WorldStereo memory bank (IoU of frustum bounding boxes times an angle penalty, :mod:`.view_selection`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..cameras import CameraParameters
from ..device import resolve_device
from ..errors import ConfigError, EmptyMemoryError, ShapeMismatchError, check_choice
from ..geometry import project
from .view_selection import frustum_overlap_scores, rank_reference_views, view_tensors
from .window_attention import window_attention

__all__ = ["SpatialStereoMemory", "REPLACEMENT_POLICIES", "window_attention", "frustum_overlap_scores"]

REPLACEMENT_POLICIES = ("fifo", "lru", "importance_based")
RETRIEVE_CHUNK_ELEMENTS = 1 << 22  # bound on the (queries x M x K) distances retrieve holds at once




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
        max_view_images: how many registered views keep their pixel data (see :meth:`add_view`).
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
        max_view_images: int | None = 64,
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
        if max_view_images is not None and (isinstance(max_view_images, bool) or not isinstance(max_view_images, int) or max_view_images < 1):
            raise ConfigError(f"max_view_images must be None (no bound) or a positive integer, got {max_view_images!r}.")
        self.max_view_images = max_view_images
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
        self._projection_cache: dict | None = None  # see _project_entries

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
            "max_view_images": self.max_view_images,
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
                self.views.append({"camera": cam, "image": None, "name": None, "depth": None, "confidence": None})

    def to(self, device) -> "SpatialStereoMemory":
        """Move every tensor (and the view cameras) to ``device``; returns self."""
        self.device = resolve_device(device)
        for name in self._STATE:
            setattr(self, name, getattr(self, name).to(self.device))
        for view in self.views:
            view["camera"] = view["camera"].to(self.device)
            for key in self._PIXELS:
                if view.get(key) is not None:
                    view[key] = view[key].to(self.device)
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

    def add_view(
        self,
        camera: CameraParameters,
        image: torch.Tensor | None = None,
        name: str | None = None,
        *,
        depth: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
    ) -> int:
        """Register one stored view for frame retrieval and detail transfer; returns its index.

        ``image`` (3,H,W), ``depth`` (H,W) (0 = unknown) and ``confidence`` (H,W) in [0,1] are
        optional pixel data at the camera's size. At most ``max_view_images`` views keep pixel data:
        past that, the oldest views after the first lose theirs (cameras stay for retrieval).
        """
        if not isinstance(camera, CameraParameters) or len(camera) != 1:
            got = f"{len(camera)} cameras" if isinstance(camera, CameraParameters) else type(camera).__name__
            raise ShapeMismatchError(f"add_view takes a single CameraParameters, got {got}; call it once per view.")
        size = (camera.height, camera.width)
        if image is not None:
            image = _as_float(image, "image", self.device, torch.float32)
            if image.dim() != 3 or image.shape[0] != 3:
                raise ShapeMismatchError(f"A view image must have shape (3,H,W), got {tuple(image.shape)}.")
        for value, what in ((image, "image"), (depth, "depth"), (confidence, "confidence")):
            if value is not None and tuple(value.shape[-2:]) != size:
                raise ShapeMismatchError(f"The view {what} is {tuple(value.shape[-2:])} but the camera is {size} (H,W).")
        depth = None if depth is None else _as_float(depth, "depth", self.device, torch.float32)
        confidence = None if confidence is None else _as_float(confidence, "confidence", self.device, torch.float32)
        self.views.append({"camera": camera.to(self.device), "image": image, "name": name, "depth": depth, "confidence": confidence})
        self._bound_view_pixels()
        return len(self.views) - 1

    _PIXELS = ("image", "depth", "confidence")

    def _bound_view_pixels(self) -> None:
        with_pixels = [i for i, v in enumerate(self.views) if any(v.get(k) is not None for k in self._PIXELS)]
        if self.max_view_images is None or len(with_pixels) <= self.max_view_images:
            return
        for i in with_pixels[1 : 1 + len(with_pixels) - self.max_view_images]:
            for key in self._PIXELS:
                self.views[i][key] = None

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
        q_uv, q_depth = project(query_positions, camera)
        q_ok = (q_depth > 0) & torch.isfinite(q_uv).all(-1)
        return (q_uv, q_ok) + self._project_entries(camera)

    def _project_entries(self, camera: CameraParameters):
        """Pixels (M,K,2) and usability (M,K) of every correspondence in ``camera``.

        The last result is reused while the camera (K, c2w, size, model), the threshold and the
        bank tensors are unchanged: the same tensor objects at the same in-place version counters
        (any write through ``add_to_memory``, ``clear`` or indexing bumps them). Tensors that keep
        no version counter (made under ``torch.inference_mode``) are never cached.
        """
        bank = (self.correspondences, self.confidences, self.filled)
        try:
            versions = tuple(t._version for t in bank)
        except RuntimeError:  # inference tensors
            versions = None
        view = (camera.width, camera.height, camera.model, self.confidence_threshold)
        pose = (camera.Kb, camera.c2wb)
        hit = self._projection_cache
        if (
            versions is not None
            and hit is not None
            and all(a is b for a, b in zip(hit["bank"], bank))
            and hit["versions"] == versions
            and hit["view"] == view
            and all(a.shape == b.shape and a.device == b.device and torch.equal(a, b) for a, b in zip(hit["pose"], pose))
        ):
            return hit["result"]
        M, K = self.confidences.shape
        e_uv, e_depth = project(self.correspondences.reshape(-1, 3), camera)
        e_uv, e_depth = e_uv.reshape(M, K, 2), e_depth.reshape(M, K)
        e_ok = (e_depth > 0) & torch.isfinite(e_uv).all(-1) & (self.confidences >= self.confidence_threshold)
        result = (e_uv, e_ok & self.filled[:, None])
        self._projection_cache = None
        if versions is not None:
            self._projection_cache = {"bank": bank, "versions": versions, "view": view, "pose": tuple(t.clone() for t in pose), "result": result}
        return result

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
        return view_tensors([v["camera"] for v in self.views])

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

    def reference_frames(self, target_cameras, max_references: int = 8, *, features_model: str | None = None):
        """Reference frames for keyframes 1..F-1 of ``target_cameras`` (F pinhole cameras; keyframe 0 is
        the anchor), as the official memory bank retrieves them, or None when no stored view has an image.

        Each keyframe takes the stored view (with an image) of best frustum overlap x view-angle score;
        more than ``max_references`` distinct views are reduced by quality-aware furthest point sampling
        (camera poses, plus DINOv2 features of ``features_model`` when given) and the keyframes choose
        again among those. Returns images (R,3,H,W) at the targets' size, their c2w (R,4,4) float64 and
        ref_index (R,) long: the first keyframe position (i - 1) that chose each reference.
        """
        from .view_selection import dinov2_features, select_diverse_views

        targets = _as_cameras(target_cameras, "target_cameras")
        usable = [v for v in self.views if v.get("image") is not None and v["camera"].model == "pinhole"]
        if not usable or len(targets) < 2:
            return None
        size = (targets.height, targets.width)
        images = torch.stack([
            v["image"] if tuple(v["image"].shape[-2:]) == size
            else torch.nn.functional.interpolate(v["image"][None], size=size, mode="bicubic", align_corners=False)[0]
            for v in usable
        ]).clamp(0, 1)  # fmt: skip
        c2w = torch.cat([v["camera"].c2wb.double().cpu() for v in usable])
        cams = [v["camera"] for v in usable]
        best = frustum_overlap_scores(targets[1:], *view_tensors(cams)).argmax(1)
        distinct = list(dict.fromkeys(best.tolist()))
        if len(distinct) > max_references:
            feats = dinov2_features(images[distinct], features_model) if features_model else None
            keep = [distinct[i] for i in select_diverse_views(c2w[distinct], images[distinct], max_references, feats).tolist()]
            best = torch.as_tensor(keep)[frustum_overlap_scores(targets[1:], *view_tensors([cams[k] for k in keep])).argmax(1)]
            distinct = list(dict.fromkeys(best.tolist()))
        ref_index = torch.as_tensor([int((best == d).nonzero()[0]) for d in distinct])
        return images[distinct], c2w[distinct], ref_index

    def select_reference_frames(self, target_cameras, k: int = 8, *, near: float = 0.1, far: float = 10.0) -> torch.Tensor:
        """Up to ``k`` distinct stored views (indices into :attr:`views`) for the target cameras.

        Each target camera takes its best-scoring view (first on ties), as the official memory
        bank does; the distinct views so chosen are ranked by their best score (then by first
        appearance along the targets) and the top ``k`` are returned, best first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}.")
        scores = self.view_scores(target_cameras, near=near, far=far)  # (T,V)
        return rank_reference_views(scores, k).to(self.device)
