"""Panoramas: an equirectangular condition image explored with perspective cameras.

Convention: the panorama is the view of an equirectangular camera whose c2w is the first trajectory
camera's (same centre and rotation), with the engine's mapping (``ws_engine.geometry``): the centre
column looks along the camera's +z, +y (down) is the bottom row, longitude spans the width. Its depth
is the distance along each ray. Frame 0 is the perspective view cut from the panorama in the first
camera's direction; the Global memory starts from the whole sphere.

Also: :func:`render_panorama` (the memory seen from any point as an equirectangular image) and
:func:`load_pano_bank` (the official multi-view ``pano_bank`` folder).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .cameras import CameraParameters
from .errors import ConfigError, InputFileError, ShapeMismatchError
from .geometry import camera_rays

__all__ = [
    "CAMERA_MODELS",
    "crop_perspective",
    "fill_small_holes",
    "fit_to_memory",
    "is_panorama",
    "load_pano_bank",
    "panorama_camera",
    "panorama_depth",
    "panorama_views",
    "render_panorama",
    "resolve_camera_model",
]

CAMERA_MODELS = ("auto", "perspective", "equirectangular")
ASPECT_TOLERANCE = 0.01  # relative deviation of width/height from 2 still taken as 2:1


def is_panorama(height: int, width: int) -> bool:
    """Whether an image of (height, width) is 2:1 (an equirectangular panorama)."""
    return abs(width / height - 2.0) <= 2.0 * ASPECT_TOLERANCE


def resolve_camera_model(camera_model: str, height: int, width: int) -> str:
    """``"perspective"`` or ``"equirectangular"`` for an image of (height, width); ``auto`` detects 2:1."""
    if camera_model not in CAMERA_MODELS:
        raise ConfigError(f"camera_model must be one of {', '.join(CAMERA_MODELS)}, got {camera_model!r}.")
    if camera_model == "auto":
        return "equirectangular" if is_panorama(height, width) else "perspective"
    if camera_model == "equirectangular" and not is_panorama(height, width):
        raise ConfigError(
            f"An equirectangular panorama must be 2:1 (360 x 180 degrees); this image is {width}x{height} (ratio {width / height:.3f}). "
            f"Crop or pad it to {2 * height}x{height} or {width}x{width // 2}, or use camera_model='perspective'."
        )
    return camera_model


def panorama_camera(c2w: torch.Tensor, width: int, height: int) -> CameraParameters:
    """The equirectangular camera (1) of a width x height panorama taken with pose ``c2w`` (4,4)."""
    return CameraParameters.equirectangular(width, height, c2w=c2w.reshape(4, 4))


def _sample_equirect(pano: torch.Tensor, pano_cam: CameraParameters, directions: torch.Tensor, mode: str) -> torch.Tensor:
    """Values (C,...) of ``pano`` (C,Hp,Wp) along world directions (...,3), longitude wrapping around."""
    R = pano_cam.c2wb[0, :3, :3].to(directions)
    d = directions @ R  # world -> panorama camera frame (R^T d)
    lon = torch.atan2(d[..., 0], d[..., 2])
    lat = torch.asin(F.normalize(d, dim=-1)[..., 1].clamp(-1, 1))
    Hp, Wp = pano.shape[-2:]
    u = (lon / (2 * math.pi) + 0.5) * Wp - 0.5  # pixel coordinates, centres at integers
    v = (lat / math.pi + 0.5) * Hp - 0.5
    padded = torch.cat([pano[..., -2:], pano, pano[..., :2]], -1)  # two columns of wrap on each side
    gx = (u + 2 + 0.5) / (Wp + 4) * 2 - 1
    gy = (v + 0.5) / Hp * 2 - 1
    grid = torch.stack([gx, gy], -1).reshape(1, -1, 1, 2).to(pano.dtype)
    out = F.grid_sample(padded[None], grid, mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, :, 0].reshape(pano.shape[0], *directions.shape[:-1])


def crop_perspective(pano: torch.Tensor, pano_cam: CameraParameters, camera: CameraParameters, depth: torch.Tensor | None = None,
                     supersample: int | None = None):  # fmt: skip
    """The perspective view (3,H,W) of ``camera`` cut from the panorama (3,Hp,Wp), and its z-depth (H,W)
    from the panorama's ray-distance ``depth`` (Hp,Wp) when given.

    Exact resampling (bilinear, antialiased by ``supersample`` x ``supersample`` rays per pixel, by
    default enough to match the panorama's resolution). Valid for a camera at the panorama's centre;
    elsewhere the view would need the scene's depth (see :func:`ws_engine.model.WorldStereo` renders).
    """
    cam = camera[0] if len(camera) > 1 else camera
    H, W = cam.height, cam.width
    if supersample is None:
        pano_px_per_rad = pano.shape[-1] / (2 * math.pi)
        crop_px_per_rad = float(cam.Kb[0, 0, 0])
        supersample = max(1, min(4, math.ceil(pano_px_per_rad / crop_px_per_rad)))
    s = int(supersample)
    fine = cam.rescale(W * s, H * s)
    rays = camera_rays(fine, torch.float64)[0]  # (Hs,Ws,3), z = 1
    world = rays @ fine.c2wb[0, :3, :3].double().T
    rgb = _sample_equirect(pano.double(), pano_cam, world, "bilinear")
    rgb = F.avg_pool2d(rgb[None], s)[0].float() if s > 1 else rgb.float()
    if depth is None:
        return rgb, None
    dist = _sample_equirect(depth.double()[None], pano_cam, world, "nearest")[0]
    z = dist / rays.norm(dim=-1)  # ray distance -> z of the perspective camera
    z = F.avg_pool2d(z[None, None], s)[0, 0] if s > 1 else z
    return rgb, z.float()


def panorama_depth(pano: torch.Tensor, pano_cam: CameraParameters, *, depth=None, depth_kind: str = "depth", depth_scale: float = 1.0,
                   depth_model=None, scene_depth: float = 3.0, device="cpu") -> torch.Tensor:  # fmt: skip
    """The panorama's ray-distance depth (Hp,Wp): given (same aspect; resized to the panorama), from a
    transformers depth model run on six 100-degree perspective crops and stitched, or the fallback
    prior (a room-sized sphere of radius ``scene_depth`` with a floor plane) with a warning."""
    from .depth import depth_from_input, fallback_depth

    Hp, Wp = pano.shape[-2:]
    if depth is not None:
        d = depth_from_input(depth, kind=depth_kind, scale=depth_scale).to(pano.device)
        h, w = d.shape
        if abs(w / h - Wp / Hp) > 0.01 * Wp / Hp:
            raise ShapeMismatchError(
                f"The panorama's depth map is {w}x{h} (ratio {w / h:.3f}) but the panorama is {Wp}x{Hp} (2:1): give the equirectangular "
                "depth of this panorama (distance along each ray), at any 2:1 size."
            )
        if (h, w) != (Hp, Wp):
            d = F.interpolate(d[None, None], size=(Hp, Wp), mode="nearest")[0, 0]
        return d
    if depth_model is not None:
        return _stitched_model_depth(pano, pano_cam, depth_model, scene_depth, device)
    return fallback_depth(pano, pano_cam, scene_depth=scene_depth)


def _cube_cameras(pano_cam: CameraParameters, size: int, fov: float = 100.0) -> list[CameraParameters]:
    """Six perspective cameras at the panorama's centre: front, right, back, left, up, down."""
    c2w0 = pano_cam.c2wb[0].double()
    turns = []
    for yaw in (0, 90, 180, 270):
        a = math.radians(yaw)
        turns.append(torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64))
    for pitch in (-90, 90):  # up (-y) and down (+y)
        a = math.radians(pitch)
        turns.append(torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64))
    cams = []
    for R in turns:
        c2w = c2w0.clone()
        c2w[:3, :3] = c2w0[:3, :3] @ R
        cams.append(CameraParameters.from_fov(fov, size, size, c2w=c2w.float()))
    return cams


def _stitched_model_depth(pano, pano_cam, depth_model, scene_depth, device) -> torch.Tensor:
    """Ray-distance depth (Hp,Wp) from a depth model on six crops, scales aligned on their overlaps."""
    from .depth import resolve_depth

    Hp, Wp = pano.shape[-2:]
    size = max(64, min(518, Hp // 2) // 16 * 16)
    cams = _cube_cameras(pano_cam, size)
    dirs = camera_rays(pano_cam, torch.float64)[0] @ pano_cam.c2wb[0, :3, :3].double().T  # (Hp,Wp,3) world
    dist, weight = [], []
    for cam in cams:
        crop, _ = crop_perspective(pano, pano_cam, cam)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = resolve_depth(crop.to(device), cam.to(device), depth_model=depth_model, device=device, scene_depth=scene_depth).double().cpu()
        rays = camera_rays(cam, torch.float64)[0]
        dist_crop = z * rays.norm(dim=-1)  # z -> ray distance
        local = dirs @ cam.c2wb[0, :3, :3].double()  # directions in the crop camera's frame
        front = local[..., 2]
        K = cam.Kb[0].double()
        u = K[0, 0] * local[..., 0] / front.clamp(min=1e-9) + K[0, 2]
        v = K[1, 1] * local[..., 1] / front.clamp(min=1e-9) + K[1, 2]
        inside = (front > 1e-6) & (u >= 0) & (u <= size) & (v >= 0) & (v <= size)
        grid = torch.stack([u / size * 2 - 1, v / size * 2 - 1], -1)[None]
        d = F.grid_sample(dist_crop[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        dist.append(torch.where(inside, d, torch.zeros_like(d)))
        weight.append(torch.where(inside, front.clamp(min=0) ** 4, torch.zeros_like(front)))  # favour each crop's centre
    dist, weight = torch.stack(dist), torch.stack(weight)
    for i in range(1, len(dist)):  # align each crop's scale to the ones before it on their overlap
        both = (weight[i] > 0) & (weight[:i].sum(0) > 0) & (dist[i] > 0)
        if both.sum() > 16:
            ref = (dist[:i] * weight[:i]).sum(0) / weight[:i].sum(0).clamp(min=1e-12)
            dist[i] = dist[i] * (ref[both] / dist[i][both]).median()
    return ((dist * weight).sum(0) / weight.sum(0).clamp(min=1e-12)).float()


def render_panorama(source, position=(0.0, 0.0, 0.0), width: int = 2048, height: int | None = None, rotation: torch.Tensor | None = None,
                    radius: float | None = None, max_gap: int = 8):  # fmt: skip
    """The Global memory seen from ``position`` as an equirectangular image.

    ``source``: a WorldStereo, a WorldMemory or a GlobalGeometricMemory. ``rotation`` (3,3) is the
    panorama camera's c2w rotation (default identity: the centre column looks along world +z, +y is
    down). Gaps of up to ``max_gap`` pixels between points are closed (:func:`fill_small_holes`).
    Returns image (3,H,W) in [0,1], depth (H,W) (ray distance, 0 = nothing) and mask (H,W) bool.
    """
    memory = getattr(source, "global_memory", source)
    height = width // 2 if height is None else height
    if width != 2 * height:
        raise ConfigError(f"An equirectangular render is 2:1; got {width}x{height}. Use width = 2 x height.")
    c2w = torch.eye(4)
    if rotation is not None:
        c2w[:3, :3] = torch.as_tensor(rotation, dtype=torch.float32).reshape(3, 3)
    c2w[:3, 3] = torch.as_tensor(position, dtype=torch.float32).reshape(3)
    cam = panorama_camera(c2w, width, height).to(getattr(memory, "device", "cpu"))
    out = memory.render(cam, radius=radius)
    return fill_small_holes(out.rgb[0, :3].clamp(0, 1), out.depth[0], out.mask[0], max_gap)


def fill_small_holes(rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, max_gap: int = 8):
    """Close gaps of up to ``max_gap`` pixels between rendered points (rgb (3,H,W), depth (H,W), mask (H,W)):
    each pass gives an empty pixel beside rendered ones their mean (longitude wraps around). Points spread
    thinner than the render's pixels (near the poles, or a memory thinned by merging) leave such gaps."""
    rgb, depth, mask = rgb.clone(), depth.clone(), mask.clone()
    kernel = torch.ones(1, 1, 3, 3, dtype=rgb.dtype, device=rgb.device)

    def box(x):  # (C,H,W) -> 3x3 sums, wrapping columns, clamping rows
        x = torch.cat([x[..., -1:], x, x[..., :1]], -1)
        x = F.pad(x[None], (0, 0, 1, 1), mode="replicate")[0]
        return F.conv2d(x[:, None], kernel)[:, 0]

    for _ in range(max_gap):
        empty = ~mask
        if not bool(empty.any()):
            break
        m = mask.to(rgb.dtype)[None]
        count = box(m)[0]
        grow = empty & (count > 0)
        if not bool(grow.any()):
            break
        rgb = torch.where(grow[None], box(rgb * m) / count.clamp(min=1), rgb)
        depth = torch.where(grow, box((depth * m[0])[None])[0] / count.clamp(min=1), depth)
        mask = mask | grow
    return rgb, depth, mask


def load_pano_bank(folder) -> tuple[torch.Tensor, CameraParameters, list[str]]:
    """The official multi-view panorama bank: ``<folder>/cameras.json`` ({"0000": {"intrinsic": 3x3,
    "extrinsic": 4x4 w2c}, ...}, OpenCV) and ``<folder>/images/<id>.png``. Returns images (V,3,H,W) in
    [0,1], their pinhole cameras (V) and the ids. ``folder`` may be the scene folder holding ``pano_bank``."""
    from .io import load_image

    folder = Path(folder)
    if (folder / "pano_bank").is_dir():
        folder = folder / "pano_bank"
    path = folder / "cameras.json"
    if not path.is_file():
        raise InputFileError(f"No cameras.json in {folder}: a pano bank holds cameras.json and images/<id>.png.")
    try:
        cameras = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{path} is not readable JSON ({e}).") from None
    if not isinstance(cameras, dict) or not cameras:
        raise InputFileError(f"{path} must map view ids to {{'intrinsic': 3x3, 'extrinsic': 4x4 w2c}}.")
    images, Ks, c2ws, ids = [], [], [], sorted(cameras)
    for vid in ids:
        entry = cameras[vid]
        try:
            K = torch.tensor(entry["intrinsic"], dtype=torch.float64)
            w2c = torch.tensor(entry["extrinsic"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise InputFileError(f"{path}: view {vid!r} needs 'intrinsic' (3x3) and 'extrinsic' (4x4 w2c) numbers ({e}).") from None
        if K.shape != (3, 3) or w2c.shape != (4, 4):
            raise InputFileError(f"{path}: view {vid!r} has intrinsic {tuple(K.shape)} and extrinsic {tuple(w2c.shape)}; need 3x3 and 4x4.")
        image_path = folder / "images" / f"{vid}.png"
        if not image_path.is_file():
            raise InputFileError(f"{path} lists view {vid!r} but {image_path} is missing.")
        images.append(load_image(image_path))
        Ks.append(K)
        c2ws.append(torch.linalg.inv(w2c))
    H, W = images[0].shape[-2:]
    if any(tuple(im.shape[-2:]) != (H, W) for im in images):
        raise InputFileError(f"The images of {folder} differ in size; a pano bank's views share one size.")
    cams = CameraParameters(torch.stack(Ks).float(), torch.stack(c2ws).float(), width=W, height=H)
    return torch.stack(images), cams, ids


def panorama_views(pano_cam: CameraParameters, camera: CameraParameters, yaws: int = 8) -> list[CameraParameters]:
    """Perspective cameras at the panorama's centre with ``camera``'s intrinsics: ``yaws`` directions
    around the panorama camera's y axis, plus straight up and down (its -y and +y)."""
    c2w0 = pano_cam.c2wb[0].double()
    turns = []
    for k in range(yaws):
        a = 2 * math.pi * k / yaws
        turns.append(torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64))
    for a in (-math.pi / 2, math.pi / 2):
        turns.append(torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64))
    cams = []
    for R in turns:
        c2w = c2w0.clone()
        c2w[:3, :3] = c2w0[:3, :3] @ R
        cams.append(CameraParameters(camera.Kb[0].float(), c2w.float(), width=camera.width, height=camera.height).to(camera.device))
    return cams


def fit_to_memory(pano: torch.Tensor, depth: torch.Tensor, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The panorama (3,Hp,Wp) and its depth (Hp,Wp) area-downsampled (2:1 kept) to at most ``max_pixels``
    pixels, the share of the Global memory it may fill (one point per pixel); unchanged if it fits."""
    Hp, Wp = pano.shape[-2:]
    if Hp * Wp <= max_pixels:
        return pano, depth
    H = max(8, int(math.sqrt(max_pixels / 2)))
    small = F.interpolate(pano[None], size=(H, 2 * H), mode="area")[0]
    valid = (depth > 0).float()
    num = F.interpolate((depth * valid)[None, None], size=(H, 2 * H), mode="area")[0, 0]
    den = F.interpolate(valid[None, None], size=(H, 2 * H), mode="area")[0, 0]
    return small, torch.where(den > 0.5, num / den.clamp(min=1e-12), torch.zeros_like(num))
