"""The depth prior as a coloured point cloud in world coordinates (for backends that take points, such as
ComfyUI's Geometric Memory node), and the condition image's pixels without the engine (PNG reader;
bpy inside Blender). Pure Python + numpy."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import AddonError


# ----------------------------------------------------------------------------------------------
# the depth prior as a point cloud
# ----------------------------------------------------------------------------------------------
def first_camera(trajectory: dict, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K (3,3) with integer pixel centres, c2w (4,4) OpenCV) of a project-format trajectory's first
    frame, K rescaled to ``size`` (H, W) when given."""
    frames = trajectory.get("frames") or []
    if not frames:
        raise AddonError("The trajectory has no frames.")
    K = np.array(frames[0].get("K", trajectory.get("K")), dtype=np.float64)
    c2w = np.array(frames[0]["c2w"], dtype=np.float64)
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise AddonError("The trajectory's first frame needs a 3x3 K and a 4x4 c2w.")
    if trajectory.get("pixel_center", "integer") == "half":
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
    if size is not None:
        sx, sy = size[1] / float(trajectory["width"]), size[0] / float(trajectory["height"])
        K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
        K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return K, c2w


def depth_to_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, colors: np.ndarray | None = None):
    """Lift a z-depth map (H,W) with K (3,3) and OpenCV c2w (4,4) to world points.

    Returns (points (N,3) float32, colors (N,3) uint8) of the pixels with a finite depth > 0;
    ``colors`` (H,W,3) uint8 (None: grey).
    """
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    pix = np.stack([u[valid], v[valid], np.ones(int(valid.sum()))], axis=0)  # (3,N)
    cam = (np.linalg.inv(K) @ pix) * depth[valid][None]
    world = (c2w[:3, :3] @ cam + c2w[:3, 3:4]).T
    rgb = np.full((len(world), 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)[valid]
    return world.astype(np.float32), rgb


def _png_rgb(path) -> np.ndarray | None:
    """(H,W,3) uint8 of a non-interlaced 8/16-bit PNG (grey, RGB, palette, with or without alpha); None otherwise."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, chunks, idat = 8, {}, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        else:
            chunks[kind] = body
    W, H, bits, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None or interlace or bits not in (8, 16) and not (ctype == 3 and bits == 8):
        return None
    bpp = channels * bits // 8
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(H, 1 + W * bpp)
    out = np.zeros((H, W * bpp), np.int32)
    prev = np.zeros(W * bpp, np.int32)
    for y in range(H):  # undo the per-row filters
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            cur = row
        elif kind == 2:
            cur = (row + prev) & 255
        elif kind == 1:  # each byte adds the one bpp before it: a running sum per channel
            cur = np.cumsum(row.reshape(W, bpp), axis=0).reshape(-1) & 255
        elif kind in (3, 4):
            cur = np.zeros_like(row)
            for x in range(W * bpp):  # left-dependent filters go byte by byte
                a = cur[x - bpp] if x >= bpp else 0
                if kind == 3:
                    pred = (a + prev[x]) // 2
                else:
                    b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (row[x] + pred) & 255
        else:
            return None
        out[y], prev = cur, cur
    pix = out.astype(np.uint8).reshape(H, W, channels * bits // 8)
    if bits == 16:
        pix = pix[..., 0::2]  # high bytes
    if ctype == 3:
        palette = np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)
        return palette[pix[..., 0]]
    if channels in (1, 2):
        return np.repeat(pix[..., :1], 3, axis=2)
    return pix[..., :3].copy()


def _bpy_rgb(path) -> np.ndarray | None:
    """(H,W,3) uint8 of any image Blender reads (None without bpy or on failure); bpy.data is left as it was."""
    try:
        import bpy
    except ImportError:
        return None
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError:
        return None
    try:
        w, h = image.size
        px = np.empty(w * h * image.channels, np.float32)
        image.pixels.foreach_get(px)
        rgb = px.reshape(h, w, image.channels)[::-1, :, :3]  # Blender stores rows bottom-up
        if image.is_float:  # linear float data: to sRGB-ish 8 bit for the point colours
            rgb = np.clip(rgb, 0, 1) ** (1 / 2.2)
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    finally:
        bpy.data.images.remove(image)


def read_image_rgb(path, size: tuple[int, int]) -> np.ndarray | None:
    """The image at ``size`` (H, W) as (H,W,3) uint8 (nearest-neighbour resize), or None if unreadable."""
    rgb = _bpy_rgb(path)  # inside Blender: any format, decoded in C
    if rgb is None:
        try:
            rgb = _png_rgb(path)
        except (OSError, KeyError, ValueError, zlib.error, struct.error):
            rgb = None
    if rgb is None:
        return None
    h, w = rgb.shape[:2]
    H, W = size
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return rgb[rows][:, cols]
