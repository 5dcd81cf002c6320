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

from ws_engine.cameras import CameraTrajectory
from ws_engine.geometry import project, render_points, splat_offsets, unproject
from ws_engine.memory import GlobalGeometricMemory


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


def timeit(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000, help="at most 4 x size^2")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    n, s = args.points, args.size
    # A memory as the engine grows it: depth maps of a wavy surface unprojected from 4 views along an
    # orbit, in scanline order (so winning points are coherent in memory), rendered from a new view.
    views = CameraTrajectory.orbit_left(30, 4, width=s, height=s, pivot_depth=4.0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    depth = 3.5 + 0.5 * torch.sin(9 * xx) * torch.cos(7 * yy)
    pts = unproject(depth.expand(4, s, s), views).reshape(-1, 3)[:n]
    cols = torch.rand(len(pts), 3, generator=g)
    cam = CameraTrajectory.orbit_left(12, 2, width=s, height=s, pivot_depth=4.0)[1]
    # The worst case: the same number of points in random order.
    shuffled = pts[torch.randperm(len(pts), generator=g)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(pts):,} points, {s}x{s}")
    for label, p in (("depth-map points (N,3)", pts), ("random order (N,3)", shuffled)):
        print(f"-- {label}")
        run(p, cols, cam, args.repeats)
    memory = GlobalGeometricMemory(merge_threshold=0.0, max_points=len(pts))
    memory.initialize(pts, colors=cols)
    print("-- GlobalGeometricMemory.render (the same points, held column-major by the memory)")
    for radius in (1, 2):
        ms = timeit(lambda: memory.render(cam, radius=radius), args.repeats)
        naive = timeit(lambda: naive_splat(pts, cols, cam, radius), args.repeats)
        print(f"radius {radius}: memory.render {ms:7.2f} ms/frame | naive splat {naive:7.2f} ms | speed-up {naive / ms:5.2f}x")
    traj = CameraTrajectory.orbit_left(20, 8, width=s, height=s, pivot_depth=4.0)
    batched = timeit(lambda: render_points(pts, cols, traj, radius=2), max(2, args.repeats // 4))
    print(f"batched 8 cameras, radius 2: {batched / 8:7.2f} ms/frame ({batched:.1f} ms total)")


def run(pts, cols, cam, repeats):
    for radius in (1, 2):
        fast = timeit(lambda: render_points(pts, cols, cam, radius=radius), repeats)
        naive = timeit(lambda: naive_splat(pts, cols, cam, radius), repeats)
        ref_rgb, ref_depth = naive_splat(pts, cols, cam, radius)
        out = render_points(pts, cols, cam, radius=radius)
        ref = ref_depth.where(torch.isfinite(ref_depth), 0.0)
        agree = torch.isclose(out.depth[0], ref, rtol=1e-5, atol=0).float().mean().item()
        print(f"radius {radius}: render_points {fast:7.2f} ms/frame | naive splat {naive:7.2f} ms | "
              f"speed-up {naive / fast:5.2f}x | same depth (1e-5) on {agree * 100:.2f}% of pixels")


if __name__ == "__main__":
    main()
