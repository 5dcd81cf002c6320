"""Pieces of the geometric backbone on hand-made geometry."""

from __future__ import annotations

import torch

from ws_engine import CameraParameters, GlobalGeometricMemory
from ws_engine.backbones.geometric import _footprint_cover, inpaint_background, pixel_centre_depth
from ws_engine.geometry import unproject


def plane(depth: float, cam: CameraParameters, step: int = 1):
    """Points of a fronto-parallel plane sampled every ``step`` pixels, and their footprints."""
    d = torch.full((cam.height, cam.width), depth)
    pts = unproject(d, cam)[::step, ::step].reshape(-1, 3)
    return pts, torch.full((len(pts),), depth / float(cam.fx) * step)


def test_pixel_centre_depth_is_exact_on_a_slanted_plane():
    cam = CameraParameters.from_fov(60.0, 64, 48)
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    inv = 0.5 + 0.004 * xs - 0.003 * ys  # a plane: inverse depth affine in the image
    # points at sub-pixel offsets (as after a merge), lying on that plane
    jitter = torch.rand(48, 64, 2) - 0.5
    u, v = xs + jitter[..., 0], ys + jitter[..., 1]
    z = 1 / (0.5 + 0.004 * u - 0.003 * v)
    K = cam.K
    pts = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)
    index = torch.arange(48 * 64).reshape(48, 64)
    depth, rows = pixel_centre_depth(pts, index, cam)
    inner = (slice(2, -2), slice(2, -2))
    err = ((depth - 1 / inv).abs() * inv)[inner]
    assert err.quantile(0.9) < 1e-4 and err.max() < 5e-3  # relative; the fallback is the point's own depth
    assert (rows >= 0).all()


def test_a_sparse_near_surface_hides_the_far_one_behind_its_gaps():
    cam = CameraParameters.from_fov(60.0, 96, 96)
    far, far_fp = plane(4.0, cam)
    near, near_fp = plane(1.0, cam, step=6)  # seen before from far away: one point every 6 pixels
    near = near[(near[:, 0].abs() < 0.25) & (near[:, 1].abs() < 0.25)]
    near_fp = near_fp[: len(near)]
    memory = GlobalGeometricMemory(feature_dim=2, merge_threshold=0)
    pts = torch.cat([far, near])
    memory.initialize(pts, colors=torch.rand(len(pts), 3), features=torch.stack([torch.ones(len(pts)), torch.cat([far_fp, near_fp])], 1))
    render = memory.render(cam, radius=1)
    patch = (slice(40, 56), slice(40, 56))  # inside the near patch
    plain, _ = pixel_centre_depth(memory.points, render.index[0], cam)
    assert (plain[patch] > 3).float().mean() > 0.5  # without footprints the far plane shows through
    cover = _footprint_cover(memory, cam)
    covered, _ = pixel_centre_depth(memory.points, render.index[0], cam, occluder_depth=cover)
    seen = covered[patch][covered[patch] > 0]
    assert (seen < 1.5).all()  # only the near surface is left; its gaps are filled later


def test_inpainting_continues_the_background_not_the_foreground():
    H, W = 40, 60
    rgb = torch.zeros(3, H, W)
    rgb[0] = 1.0  # red background
    depth = torch.full((H, W), 5.0)
    rgb[:, :, 30:] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # a blue foreground on the right
    depth[:, 30:] = 1.0
    hole = torch.zeros(H, W, dtype=torch.bool)
    hole[:, 24:30] = True  # a disocclusion between them, with background depth
    depth[hole] = 5.0
    out = inpaint_background(rgb, hole, depth)
    filled = out[:, hole]
    assert filled[0].mean() > 0.9 and filled[2].mean() < 0.1
    assert torch.equal(out[:, ~hole], rgb[:, ~hole])
