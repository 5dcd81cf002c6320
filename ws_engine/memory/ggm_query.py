"""Read-out side of GlobalGeometricMemory: kNN, aggregated queries, rendering, latent injection.

A mixin: it uses the memory's ``points``, ``colors``, ``features``, ``_values()``, ``version`` and
configuration; all inputs are checked before any work.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, ShapeMismatchError, check_choice
from ..geometry import RenderOutput, render_points
from .ggm_utils import aggregate, as_cameras, as_tensor, check_whole, window_attention
from .point_index import KnnIndex

AGGREGATIONS = ("mean", "max", "weighted", "attention")
INJECTIONS = ("cross_attention", "addition", "concatenation")


class MemoryReadout:
    """kNN, ``query``, ``render`` and ``inject_to_latent`` of :class:`GlobalGeometricMemory`."""

    # ------------------------------------------------------------------------------------------
    # neighbours and queries
    # ------------------------------------------------------------------------------------------
    def knn(self, query, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dist (Q,k') float32 Euclidean and idx (Q,k') long (rows of ``points``), nearest first.

        ``query`` (Q,3); k' = min(k, len(self)). The index (``index_type``) is rebuilt lazily when
        the cloud changed since the last call.
        """
        self._check_not_empty("search neighbours")
        q = as_tensor(query, "query")
        if q.dim() != 2 or q.shape[1] != 3:
            raise ShapeMismatchError(f"query must have shape (Q,3), got {tuple(q.shape)}.")
        if not bool(torch.isfinite(q).all()):
            raise ConfigError("query contains NaN or infinite coordinates.")
        k = check_whole("k", k, 1)
        if self._knn is None or self._knn_version != self.version:
            self._knn = KnnIndex(self.points.clone(), self.index_type)
            self._knn_version = self.version
        return self._knn.query(q.to(self.device, torch.float32), min(k, len(self)))

    def query(self, query_points, camera_params=None, aggregation: str = "mean") -> torch.Tensor:
        """Aggregate the values (features, or colours when feature_dim == 0) of the k nearest points.

        Args:
            query_points: (B,Q,3) world points.
            camera_params: optional cameras (B, or 1 shared): neighbours behind the camera
                (pinhole depth <= 0) are ignored; the k nearest are found first, then filtered.
                Equirectangular cameras see every direction and filter nothing.
            aggregation: over the valid neighbours j of a query, with distances d_j:
                ``mean``: plain mean; ``max``: per-channel maximum; ``weighted``: weights
                1/(d_j + 1e-8), normalised; ``attention``: softmax of -d_j²/(2σ²) with σ the median
                distance of that query's valid neighbours (clamped to >= 1e-12).
        Returns:
            (B,Q,D) with D = feature_dim or 3; zeros for a query with no valid neighbour.
        """
        check_choice("aggregation", aggregation, AGGREGATIONS)
        self._check_not_empty("query")
        q = as_tensor(query_points, "query_points")
        if q.dim() != 3 or q.shape[-1] != 3:
            raise ShapeMismatchError(f"query_points must have shape (B,Q,3), got {tuple(q.shape)}.")
        B, Q = q.shape[:2]
        dist, idx = self.knn(q.reshape(-1, 3), self.num_neighbors)  # (BQ,k)
        k = idx.shape[1]
        vals = self._values()[idx]  # (BQ,k,D)
        valid = torch.ones_like(idx, dtype=torch.bool)
        if camera_params is not None:
            cams = as_cameras(camera_params)
            if len(cams) not in (1, B):
                raise ShapeMismatchError(f"camera_params holds {len(cams)} cameras for {B} query batches; give 1 or {B}.")
            if cams.model == "pinhole":
                w2c = cams.w2c if cams.batched else cams.w2c[None]
                w2c = w2c.to(self.device, torch.float32)
                nb = self.points[idx].view(B, Q * k, 3)
                z = (nb @ w2c[:, 2, :3, None]).squeeze(-1) + w2c[:, 2, 3, None]  # (B,Q*k)
                valid = (z > 0).view(B * Q, k)
        return aggregate(vals, dist, valid, aggregation).view(B, Q, -1)

    # ------------------------------------------------------------------------------------------
    # rendering
    # ------------------------------------------------------------------------------------------
    def render(self, cameras, radius: float | None = None) -> RenderOutput:
        """Render the colours into T cameras (CameraParameters or CameraTrajectory).

        Returns geometry.RenderOutput(rgb (T,3,H,W), depth (T,H,W), mask (T,H,W), index (T,H,W));
        per-point features render as ``memory.features[out.index.clamp(min=0)]`` masked by ``mask``.
        ``radius`` defaults to ``render_radius``.
        """
        self._check_not_empty("render")
        return render_points(self._points_for_render(), self.colors, as_cameras(cameras), radius=radius or self.render_radius)

    def _points_for_render(self) -> torch.Tensor:
        """The points (N,3) as a view of the transposed mirror (3,N): render_points projects that
        column-major layout with one GEMM at full speed."""
        return self._pts_t[:, self._head : self._tail].T

    def inject_to_latent(self, latent: torch.Tensor, camera_params, injection: str = "cross_attention", radius: float | None = None) -> torch.Tensor:
        """Render the memory's values into each frame's camera at latent resolution and inject them.

        Args:
            latent: (B,T,C,H,W).
            camera_params: T cameras (shared over the batch) or B*T (batch-major), any image size;
                they are rescaled to W x H.
            injection: with the rendered values feat (B,T,D,H,W) (features, or colours) and
                validity mask (B,T,1,H,W):
                ``addition``: latent + mask * feat (needs D == C) -> (B,T,C,H,W);
                ``concatenation``: cat([latent, feat, mask]) on dim 2 -> (B,T,C+D+1,H,W);
                ``cross_attention``: each latent token attends over the valid rendered values in its
                3x3 pixel neighbourhood, scores latent.feat/sqrt(C) (needs D == C), output
                latent + attended (unchanged where no neighbour is valid) -> (B,T,C,H,W).
        """
        check_choice("injection", injection, INJECTIONS)
        if not isinstance(latent, torch.Tensor) or latent.dim() != 5:
            raise ShapeMismatchError(f"latent must be a (B,T,C,H,W) tensor, got {tuple(getattr(latent, 'shape', ()))}.")
        B, T, C, H, W = latent.shape
        cams = as_cameras(camera_params)
        if len(cams) not in (T, B * T):
            raise ShapeMismatchError(f"camera_params holds {len(cams)} cameras; the latent needs T={T} (or B*T={B * T}).")
        D = self.feature_dim or 3
        if injection != "concatenation" and D != C:
            raise ShapeMismatchError(
                f"{injection} needs rendered values with C={C} channels but the memory has {D} "
                f"({'feature_dim' if self.feature_dim else 'colours'}); use injection='concatenation' or feature_dim={C}."
            )
        self._check_not_empty("inject into the latent")
        out = render_points(self._points_for_render(), self._values(), cams.rescale(W, H), radius=radius or self.render_radius)
        feat = out.rgb.to(latent.device, latent.dtype)
        mask = out.mask.to(latent.device, latent.dtype)[:, None]
        if len(cams) == T:
            feat, mask = feat.expand(B, *feat.shape), mask.expand(B, *mask.shape)
        feat, mask = feat.reshape(B, T, D, H, W), mask.reshape(B, T, 1, H, W)
        if injection == "addition":
            return latent + mask * feat
        if injection == "concatenation":
            return torch.cat([latent, feat, mask], dim=2)
        return latent + window_attention(latent.reshape(B * T, C, H, W), feat.reshape(B * T, C, H, W), mask.reshape(B * T, 1, H, W)).view_as(latent)
