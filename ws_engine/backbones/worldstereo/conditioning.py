"""Camera conditioning of the WorldStereo 2.0 model, keyframes and aspect buckets.

- :func:`plucker_embedding`: per-pixel rays ``[d, o x d]`` of the (normalised) cameras, the control
  branch's camera input.
- :func:`camera_center_normalization` / :func:`unified_camera_normalization`: the official reset to the
  first camera, centring on the valid camera centres and scaling so the first centre is 2 away.
- :func:`camera_qt`: quaternion (w, x, y, z; w >= 0) + translation of w2c, the memory model's camera input.
- :func:`keyframe_indices`, :func:`nearest_bucket`, :data:`ASPECT_BUCKETS`.

All cameras are OpenCV (x right, y down, z forward), w2c 4x4, K 3x3 in pixels. Computed in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...cameras import CameraParameters

__all__ = [
    "ASPECT_BUCKETS",
    "NUM_KEYFRAMES",
    "camera_center_normalization",
    "camera_qt",
    "keyframe_indices",
    "matrix_to_quaternion",
    "nearest_bucket",
    "plucker_embedding",
    "unified_camera_normalization",
    "w2c_from_cameras",
]

#: latent frames of one model call (81 video frames -> 21 keyframes)
NUM_KEYFRAMES = 21
#: (height, width) the released models were trained at
ASPECT_BUCKETS = ((480, 768), (512, 720), (576, 640), (608, 608), (640, 576), (720, 512), (768, 480))


def w2c_from_cameras(cameras: CameraParameters) -> torch.Tensor:
    """World-to-camera matrices [F,4,4] (float64) of a batch of pinhole cameras."""
    return torch.linalg.inv(cameras.c2wb.double())


def _center_and_scale(c2w: torch.Tensor, num_target: int, scale: float) -> torch.Tensor:
    """Subtract the mean of the valid target centres, then scale translations so ||c_0|| = ``scale``.

    Valid centres lie within 10x the 97th percentile of the distances to the median centre.
    """
    c2w = c2w.clone()
    centres = c2w[:num_target, :3, 3]
    dist = (centres - centres.median(0, keepdim=True).values).norm(dim=-1)
    valid = dist <= torch.clamp(torch.quantile(dist, 0.97) * 10, max=1e6)
    c2w[:, :3, 3] -= centres[valid].mean(0, keepdim=True)
    first = c2w[0, :3, 3].norm()
    factor = scale if bool(first <= 1e-5) else scale / first
    c2w[:, :3, 3] *= factor
    return c2w


def camera_center_normalization(w2c: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    """w2c [F,4,4] reset so frame 0 is the identity, centred and scaled (see module doc); float64."""
    w2c = w2c.double()
    w2c = w2c @ torch.linalg.inv(w2c[0])
    return torch.linalg.inv(_center_and_scale(torch.linalg.inv(w2c), len(w2c), scale))


def unified_camera_normalization(w2c_target: torch.Tensor, w2c_ref: torch.Tensor, scale: float = 2.0):
    """Targets [F,4,4] and references [R,4,4] in one frame: reset to the first target, centring and
    scale from the targets only, applied to both. Returns (targets, references), float64 w2c."""
    both = torch.cat([w2c_target.double(), w2c_ref.double()])
    both = both @ torch.linalg.inv(both[0])
    both = torch.linalg.inv(_center_and_scale(torch.linalg.inv(both), len(w2c_target), scale))
    return both[: len(w2c_target)], both[len(w2c_target) :]


def plucker_embedding(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int, normalize: bool = True) -> torch.Tensor:
    """Plücker rays [6,F,H,W] = (d, o x d) per pixel; the model takes them batched as [B,6,F,H,W].

    K [F,3,3] in pixels of (height, width); w2c [F,4,4]. Pixel (row h, col w) casts the ray through
    (w - 0.5, h + 0.5): the official code's offset (not the pixel centre), kept because the released
    weights were trained with it.
    """
    w2c = camera_center_normalization(w2c) if normalize else w2c.double()
    c2w = torch.linalg.inv(w2c).float()  # normalised in float64, rays in float32 (as the official code)
    dev = c2w.device
    K_inv = torch.linalg.inv(K.double()).float().to(dev)
    u = torch.arange(width, dtype=torch.float32, device=dev) - 0.5
    v = torch.arange(height, dtype=torch.float32, device=dev) + 0.5
    pix = torch.stack([*torch.meshgrid(u, v, indexing="xy"), torch.ones(height, width, device=dev)], -1)  # [H,W,3]
    d = F.normalize(torch.einsum("fij,hwj->fhwi", c2w[:, :3, :3] @ K_inv, pix), dim=-1)  # [F,H,W,3]
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return torch.cat([d, torch.cross(o, d, dim=-1)], -1).permute(3, 0, 1, 2).contiguous()  # [6,F,H,W]


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [...,3,3] to unit quaternions [...,4] (w, x, y, z) with w >= 0."""
    from scipy.spatial.transform import Rotation

    flat = R.detach().double().cpu().reshape(-1, 3, 3).numpy()
    xyzw = torch.from_numpy(Rotation.from_matrix(flat).as_quat()).to(R.device)
    q = torch.cat([xyzw[:, 3:], xyzw[:, :3]], -1)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def camera_qt(w2c: torch.Tensor) -> torch.Tensor:
    """[N,7] = quaternion (w, x, y, z; w >= 0) of R_w2c followed by t_w2c (float32)."""
    return torch.cat([matrix_to_quaternion(w2c[:, :3, :3]), w2c[:, :3, 3].double()], -1).float()


def keyframe_indices(num_frames: int = 81, num_keyframes: int = NUM_KEYFRAMES) -> torch.Tensor:
    """Frame indices [num_keyframes] (long) spread evenly over 0..num_frames-1 (81 -> every 4th)."""
    return torch.linspace(0, num_frames - 1, num_keyframes).round().long()


def nearest_bucket(height: int, width: int, buckets=ASPECT_BUCKETS) -> tuple[int, int]:
    """The (h, w) bucket whose aspect ratio h/w is nearest the image's."""
    ratio = height / width
    return min(buckets, key=lambda hw: abs(hw[0] / hw[1] - ratio))
