"""Frame-level view selection: frustum-overlap scores of registered views for target cameras.

The official WorldStereo memory bank (``SimpleMemoryBank``, reference notes section 5) scores a
stored view for a target camera by the IoU of the axis-aligned boxes of their frusta (corners at
depths ``near``/``far``) times an angle penalty, and takes the best view per target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cameras import CameraParameters

__all__ = ["frustum_overlap_scores", "rank_reference_views", "view_tensors"]


def view_tensors(cameras: list[CameraParameters]):
    """Stack single-view cameras: K (V,3,3), c2w (V,4,4) float64 on the CPU, size (V,2) long (W,H),
    panorama (V,) bool."""
    K = torch.cat([c.Kb.double().cpu() for c in cameras])
    c2w = torch.cat([c.c2wb.double().cpu() for c in cameras])
    size = torch.tensor([[c.width, c.height] for c in cameras], dtype=torch.long)
    pano = torch.tensor([c.model == "equirectangular" for c in cameras])
    return K, c2w, size, pano


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


def rank_reference_views(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Up to ``k`` distinct view indices (long) from scores (T,V): each target takes its best view
    (first on ties); the chosen views are ranked by their best score, then first appearance."""
    best_view = scores.argmax(1)  # (T,), first on ties
    best_score = scores.gather(1, best_view[:, None]).squeeze(1)
    V = scores.shape[1]
    score = torch.full((V,), -1.0).scatter_reduce_(0, best_view, best_score, "amax")
    first = torch.full((V,), len(best_view)).scatter_reduce_(0, best_view, torch.arange(len(best_view)), "amin")
    chosen = torch.unique(best_view)
    chosen = chosen[torch.argsort(first[chosen], stable=True)]  # by first appearance ...
    return chosen[torch.argsort(-score[chosen], stable=True)][:k]  # ... then best score first
