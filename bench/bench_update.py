"""Benchmark GlobalGeometricMemory.update: 262,144 new points merged into 1,000,000 stored ones.

Scene: a bumpy wall ~3 units in front of a camera panning sideways; every frame is a 512x512 depth
map unprojected from its camera (60 degree fov) and overlaps the previous frame by about half.
The merge threshold is the point spacing at the wall (~0.0068). The memory is filled to exactly
1,000,000 points (max_points during the fill), snapshotted, and each timed run restores the
snapshot and merges the next frame. Prints the median (after warm-up) and the per-stage breakdown,
then the kNN query time of each index type.

    python bench/bench_update.py [--runs 7] [--threads N] [--malloc-cache]

``--malloc-cache`` asks glibc (mallopt) to keep freed memory instead of returning it to the OS: on
this VM a first touch of fresh memory costs ~0.45 ms/MB, which dominates allocation-heavy eager
torch code. Wall and CPU (process) time are both printed: other jobs on a shared 2-core machine
inflate wall time, and with 2 threads a descheduled worker stalls every parallel op.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import math
import statistics
import time

import torch

from ws_engine.cameras import CameraParameters
from ws_engine.geometry import unproject
from ws_engine.memory.global_memory import GlobalGeometricMemory

SIZE, FOV, WALL = 512, 60.0, 3.0


def wall_depth(camera: CameraParameters) -> torch.Tensor:
    """Depth (H,W) of the surface z = WALL + 0.3 sin(2x) cos(3y) seen by ``camera`` (fixed-point ray cast)."""
    ones = torch.ones(camera.height, camera.width)
    rays = unproject(ones, camera) - camera.position.float()  # world ray per pixel with camera-z = 1
    origin = camera.position.float()
    t = torch.full_like(ones, WALL)
    for _ in range(8):
        p = origin + t[..., None] * rays
        t = (WALL + 0.3 * torch.sin(2 * p[..., 0]) * torch.cos(3 * p[..., 1]) - origin[2]) / rays[..., 2]
    return t


def frame(i: int, shift: float = 1.7):
    """Points (H*W,3), colours (H*W,3) and camera of the i-th frame of the pan."""
    c2w = torch.eye(4)
    c2w[0, 3] = i * shift
    cam = CameraParameters.from_fov(FOV, SIZE, SIZE, c2w=c2w)
    pts = unproject(wall_depth(cam), cam).reshape(-1, 3)
    colors = (0.5 + 0.5 * torch.sin(pts * torch.tensor([5.0, 7.0, 3.0]))).clamp(0, 1)
    return pts, colors, cam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--malloc-cache", action="store_true", help="keep freed memory in the process (glibc mallopt)")
    args = ap.parse_args()
    if args.malloc_cache:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: big blocks from the heap, not fresh mmaps
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never give the heap top back
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    if args.threads:
        torch.set_num_threads(args.threads)
    spacing = WALL * 2 * math.tan(math.radians(FOV / 2)) / SIZE
    r = spacing
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; merge threshold {r:.5f} (point spacing at the wall)")

    memory = GlobalGeometricMemory(max_points=1_000_000, merge_threshold=r)
    i, t_fill = 0, time.perf_counter()
    while True:
        pts, col, cam = frame(i)
        memory.update(pts, cam, colors=col)
        i += 1
        if len(memory) == memory.max_points and i > 2:
            break
    print(f"filled to {len(memory):,} points with {i} frames in {time.perf_counter() - t_fill:.1f} s")
    memory.max_points = 2_000_000  # the timed update merges without evicting
    memory._ensure_hash(r)
    snapshot = copy.deepcopy(memory)
    new_pts, new_col, new_cam = frame(i)

    for strategy in ("incremental", "weighted", "replace"):
        times, cpu_times, breakdowns, result = [], [], [], None
        for run in range(args.runs + 2):
            mem = copy.deepcopy(snapshot)
            t, c = time.perf_counter(), time.process_time()
            result = mem.update(new_pts, new_cam, colors=new_col, merge_strategy=strategy)
            elapsed, cpu = time.perf_counter() - t, time.process_time() - c
            if run >= 2:  # warm-up
                times.append(elapsed)
                cpu_times.append(cpu)
                breakdowns.append(mem.last_timings)
        med = statistics.median(times) * 1e3
        print(f"\nupdate[{strategy}] {len(new_pts):,} new into {len(snapshot):,}: median {med:.1f} ms wall "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}), median {statistics.median(cpu_times) * 1e3:.1f} ms CPU; "
              f"{dict(result._asdict())}")
        for key in breakdowns[0]:
            print(f"    {key:13s} {statistics.median(b[key] for b in breakdowns) * 1e3:7.1f} ms")

    # eviction at capacity: the same update with max_points = 1,000,000
    mem = copy.deepcopy(snapshot)
    mem.max_points = 1_000_000
    t = time.perf_counter()
    mem.update(new_pts, new_cam, colors=new_col)
    print(f"\nupdate with eviction at max_points=1,000,000: {(time.perf_counter() - t) * 1e3:.1f} ms (single run)")

    print("\nkNN, k=32, 10,000 queries near the surface, index over 1,000,000 points:")
    queries = snapshot.points[torch.randperm(len(snapshot), generator=torch.Generator().manual_seed(0))[:10_000]]
    queries = queries + 0.01 * torch.randn(queries.shape, generator=torch.Generator().manual_seed(1))
    for index_type in ("kd_tree", "ball_tree", "cuda_knn"):
        mem = copy.deepcopy(snapshot)
        mem.index_type = index_type
        t = time.perf_counter()
        mem.knn(queries[:1], 32)
        build = time.perf_counter() - t
        n = 1_000 if index_type == "cuda_knn" else len(queries)
        t = time.perf_counter()
        mem.knn(queries[:n], 32)
        q = time.perf_counter() - t
        print(f"    {index_type:9s} build {build * 1e3:8.1f} ms, query {q / n * 1e6:8.2f} us/query ({n:,} queries)")


if __name__ == "__main__":
    main()
