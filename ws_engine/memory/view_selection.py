"""Frame-level view selection: frustum-overlap scores of registered views for target cameras.

The official WorldStereo memory bank (``SimpleMemoryBank``, reference notes section 5) scores a
stored view for a target camera by the IoU of the axis-aligned boxes of their frusta (corners at
depths ``near``/``far``) times an angle penalty, and takes the best view per target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cameras import CameraParameters

__all__ = ["dinov2_features", "frustum_overlap_scores", "image_quality", "rank_reference_views", "select_diverse_views", "view_tensors"]


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
    volume = lambda box: (box[:, 1] - box[:, 0]).prod(-1)
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


def image_quality(images: torch.Tensor) -> torch.Tensor:
    """Quality (N,) of images (N,3,H,W) in [0,1]: 0.4 log1p(Laplacian variance) + 0.3 grey-level entropy
    (256 bins, bits) + 0.3 std/128, on 8-bit grey made with OpenCV's BGR2GRAY from RGB (the official quirk)."""
    import cv2
    import numpy as np

    out = []
    for img in (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy():
        grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)
        sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
        hist = np.bincount(grey.ravel(), minlength=256) / grey.size
        entropy = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        out.append(0.4 * np.log1p(sharp) + 0.3 * entropy + 0.3 * float(grey.std()) / 128)
    return torch.tensor(out, dtype=torch.float64)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-8)


def select_diverse_views(c2w: torch.Tensor, images: torch.Tensor, k: int, features: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` view indices (long) by quality-aware furthest point sampling (the official CameraSelector).

    Each view is [z-scored camera centre and quaternion (x, y, z, w; w >= 0)] x 0.3, joined with
    z-scored ``features`` (N,D) (e.g. DINOv2) x 0.7 when given. The first pick maximises
    ``-|f - centroid| + 0.1 q``, each next one ``min-distance x (1 + 0.1 (q - 0.5))`` with q the
    min-max normalised :func:`image_quality`.
    """
    from scipy.spatial.transform import Rotation

    n = len(c2w)
    if k >= n:
        return torch.arange(n)
    c2w = c2w.detach().double().cpu()
    quat = torch.from_numpy(Rotation.from_matrix(c2w[:, :3, :3].numpy()).as_quat())
    quat = torch.where(quat[:, 3:] < 0, -quat, quat)
    f = _zscore(torch.cat([c2w[:, :3, 3], quat], 1)) * 0.3
    if features is not None:
        f = torch.cat([f, _zscore(features.detach().double().cpu()) * 0.7], 1)
    q = image_quality(images)
    q = (q - q.min()) / (q.max() - q.min()).clamp_min(1e-12)
    chosen = [int(torch.argmax(-(f - f.mean(0)).norm(dim=1) + 0.1 * q))]
    dist = (f - f[chosen[0]]).norm(dim=1)
    while len(chosen) < k:
        score = dist * (1 + 0.1 * (q - 0.5))
        score[chosen] = -1
        nxt = int(torch.argmax(score))
        chosen.append(nxt)
        dist = torch.minimum(dist, (f - f[nxt]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


def dinov2_features(images: torch.Tensor, model: str = "facebook/dinov2-base", local_files_only: bool = False) -> torch.Tensor:
    """Global DINOv2 features (N,D) (``pooler_output``) of images (N,3,H,W) in [0,1] via transformers."""
    try:
        from transformers import AutoImageProcessor, AutoModel
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError('DINOv2 features need transformers: pip install "comfyui-worldstereo[neural]".') from e
    processor = AutoImageProcessor.from_pretrained(model, local_files_only=local_files_only)
    net = AutoModel.from_pretrained(model, local_files_only=local_files_only).eval()
    pixels = list((images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    with torch.no_grad():
        inputs = processor(images=pixels, return_tensors="pt")
        return net(**inputs).pooler_output.float()
