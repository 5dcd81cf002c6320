"""ComfyUI IMAGE/MASK <-> engine tensors, with the checks users need to see on the node.

ComfyUI: IMAGE (B,H,W,C) float in [0,1], MASK (B,H,W). Engine: image (3,H,W), video (T,3,H,W).
"""

from __future__ import annotations

import torch

from ws_engine.errors import ShapeMismatchError


def _check_image(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ShapeMismatchError(f"{name} must be a ComfyUI IMAGE (batch, height, width, channels), got {got}.")
    return images


def one_image(images, name: str = "image") -> torch.Tensor:
    """A single IMAGE (1,H,W,C) as (3,H,W); a batch of several is refused (the user picks one)."""
    images = _check_image(images, name)
    if len(images) != 1:
        raise ShapeMismatchError(
            f"{name} is a batch of {len(images)} images, but one image is needed here. Pick one with the core "
            "'Image From Batch' node (batch_index) before this node."
        )
    return as_video(images)[0]


def as_video(images, name: str = "frames") -> torch.Tensor:
    """IMAGE (T,H,W,C) -> (T,3,H,W) float32 (grey is repeated, alpha dropped)."""
    images = _check_image(images, name).float()
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:3], 3)
    return images[..., :3].permute(0, 3, 1, 2).contiguous()


def to_image(video: torch.Tensor) -> torch.Tensor:
    """(T,3,H,W) or (3,H,W) -> IMAGE (T,H,W,3) on the CPU, clamped to [0,1]."""
    if video.dim() == 3:
        video = video[None]
    return video.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def to_mask(mask: torch.Tensor) -> torch.Tensor:
    """(T,H,W) bool/float -> MASK (T,H,W) float on the CPU."""
    return mask.detach().float().cpu()


def depth_map(depth_image=None, depth_mask=None, batch: int | None = 1) -> torch.Tensor | None:
    """A depth IMAGE (B,H,W,C) or MASK (B,H,W) from a depth node as (B,H,W) (or (H,W) for batch 1).

    Only one of the two may be given; ``batch`` is the number of maps expected (None: any).
    """
    if depth_image is not None and depth_mask is not None:
        raise ShapeMismatchError("Connect the depth as an IMAGE or as a MASK, not both.")
    if depth_image is None and depth_mask is None:
        return None
    if depth_image is not None:
        d = _check_image(depth_image, "depth").float()
        d = d[..., :3].mean(-1) if d.shape[-1] >= 3 else d[..., 0]
    else:
        if not isinstance(depth_mask, torch.Tensor) or depth_mask.dim() not in (2, 3):
            raise ShapeMismatchError("depth_mask must be a ComfyUI MASK (batch, height, width).")
        d = (depth_mask[None] if depth_mask.dim() == 2 else depth_mask).float()
    if batch is not None and len(d) != batch:
        what = "one depth map" if batch == 1 else f"{batch} depth maps (one per frame)"
        raise ShapeMismatchError(f"The depth input has {len(d)} maps but {what} is needed.")
    return d[0] if batch == 1 else d


def normalised_disparity(depth: torch.Tensor) -> torch.Tensor:
    """Depth (T,H,W) (0 = unknown) -> IMAGE of disparity normalised per frame (white = near), as depth nodes draw it."""
    inv = torch.where(depth > 0, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    top = inv.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    return (inv / top)[..., None].expand(*depth.shape, 3).contiguous().cpu()
