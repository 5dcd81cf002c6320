"""Render speed: 1M points into 512x512, ws_engine.render_points vs a naive scatter splat.

The naive reference projects with ``geometry.project``, expands every point to all pixels of its
splat disk, resolves depth with one ``scatter_reduce(amin)`` on float depth and writes the colours
of the fragments that match the z-buffer: one straightforward pass, measured in the same process.
Run: python bench/bench_render.py [--points 1000000] [--size 512] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.geometry import project, render_points, splat_offsets


def naive_splat(points, colors, cam, radius):
    H, W = cam.height, cam.width
    uv, z = project(points, cam)
    base = torch.round(uv).long()
    offs = torch.tensor(splat_offsets(radius))  # (k,2) as (dy,dx)
    u = (base[:, 0:1] + offs[None, :, 1]).reshape(-1)
    v = (base[:, 1:2] + offs[None, :, 0]).reshape(-1)
    zz = z[:, None].expand(-1, len(offs)).reshape(-1)
    ok = (zz > 1e-4) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    pix = torch.where(ok, v * W + u, H * W)
    zbuf = torch.full((H * W + 1,), float("inf")).scatter_reduce_(0, pix, zz, "amin")
    win = ok & (zz == zbuf[pix])
    rgb = torch.zeros(H * W + 1, colors.shape[1])
    rgb[pix[win]] = colors.repeat_interleave(len(offs), 0)[win]
    return rgb[:-1].view(H, W, -1), zbuf[:-1].view(H, W)


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    # a scene seen by the camera: points on a wavy surface 2-6 units away, most of them in view
    n, s = args.points, args.size
    uvz = torch.rand(n, 3, generator=g)
    cam = CameraParameters.from_fov(60.0, s, s)
    z = 2 + 4 * uvz[:, 2]
    x = (uvz[:, 0] * 1.2 - 0.6) * z * 1.1
    y = (uvz[:, 1] * 1.2 - 0.6) * z * 1.1
    pts = torch.stack([x, y, z], 1)
    cols = torch.rand(n, 3, generator=g)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {n:,} points, {s}x{s}")
    for radius in (1, 2):
        fast = timeit(lambda: render_points(pts, cols, cam, radius=radius), args.repeats)
        naive = timeit(lambda: naive_splat(pts, cols, cam, radius), args.repeats)
        ref_rgb, ref_depth = naive_splat(pts, cols, cam, radius)
        out = render_points(pts, cols, cam, radius=radius)
        agree = (out.depth[0] == ref_depth.where(torch.isfinite(ref_depth), 0.0)).float().mean().item()
        print(f"radius {radius}: render_points {fast:7.2f} ms/frame | naive splat {naive:7.2f} ms | "
              f"speed-up {naive / fast:5.2f}x | same depth on {agree * 100:.2f}% of pixels")
    traj = CameraTrajectory.orbit_left(20, 8, width=s, height=s, pivot_depth=4.0)
    batched = timeit(lambda: render_points(pts, cols, traj, radius=2), max(2, args.repeats // 4))
    print(f"batched 8 cameras, radius 2: {batched / 8:7.2f} ms/frame ({batched:.1f} ms total)")


if __name__ == "__main__":
    main()
