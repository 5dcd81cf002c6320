"""Benchmark: SpatialStereoMemory.constrained_attention (sparse) vs dense scaled_dot_product_attention.

Setting: B=1, N=4096 queries (a 64x64 token grid, stride 8, on a 512x512 image), M=16384 entries
with K=4 correspondences each, D=64 feature channels, attention_window=16 px, and k=64 = the
candidate cap ``max_candidates``: each query attends at most its 64 nearest allowed entries
(nearest = closest usable correspondence in pixels; k is not a top-k of scores). Geometry: a floor plane and
a bumpy back wall seen by a 60-degree camera; each entry is a random image pixel lifted to the scene,
its 4 correspondences are the scene points of the pixels +-2 around it, confidences uniform in
[0.2, 1] (about 62% usable); about 56 entries per query pass the window (the cap binds for ~1/4 of
the queries). Prints the median wall-clock and CPU (process) time of several interleaved runs after
a warm-up, the ratio dense/sparse of each measured in this process, and checks the sparse result
against a dense masked reference (same cap, same tie rule) on 512 queries. On a shared machine trust
the CPU-time ratio (or --threads 1); wall clock only when the load average is low.

Run: python bench/bench_attention.py [--runs 7] [--threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ws_engine import CameraParameters, SpatialStereoMemory
from ws_engine.geometry import project, unproject

SIZE, N_GRID, M, K, D, WINDOW, CAP = 512, 64, 16384, 4, 64, 16.0, 64


def scene_depth(camera: CameraParameters) -> torch.Tensor:
    """Depth (H,W): a floor 1 below the camera, a back wall at z=8 with bumps."""
    from ws_engine.geometry import camera_rays

    rays = camera_rays(camera)[0]  # (H,W,3), z = 1
    wall = 8.0 + 0.5 * torch.sin(rays[..., 0] * 9) * torch.cos(rays[..., 1] * 7)
    floor = torch.where(rays[..., 1] > 1e-3, 1.0 / rays[..., 1].clamp(min=1e-3), torch.full_like(wall, math.inf))
    return torch.minimum(wall, floor)


def build(generator: torch.Generator):
    camera = CameraParameters.from_fov(60.0, SIZE, SIZE)
    points = unproject(scene_depth(camera), camera)  # (H,W,3)
    # entries: a random pixel each, correspondences = scene points at the 4 diagonal neighbours +-2 px
    centre = torch.randint(2, SIZE - 2, (M, 2), generator=generator)
    offsets = torch.tensor([[-2, -2], [2, -2], [-2, 2], [2, 2]])
    pix = centre[:, None, :] + offsets[None]  # (M,K,2) as (u,v)
    correspondences = points[pix[..., 1], pix[..., 0]]
    confidences = 0.2 + 0.8 * torch.rand(M, K, generator=generator)
    features = torch.randn(M, D, generator=generator)
    memory = SpatialStereoMemory(M, D, K, attention_window=WINDOW, confidence_threshold=0.5, max_candidates=CAP)
    memory.add_to_memory(features, correspondences, confidences)
    # queries: a 64x64 token grid (stride 8) lifted to the scene
    stride = SIZE // N_GRID
    grid = torch.arange(N_GRID) * stride + stride // 2
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    positions = points[v.flatten(), u.flatten()][None]  # (1,N,3)
    queries = torch.randn(1, len(positions[0]), D, generator=generator)
    return memory, camera, queries, positions


def timed(functions, runs: int) -> tuple[list[float], list[float]]:
    """Median wall and CPU (process, all threads) times (ms) of each function; runs interleave so
    load spikes hit all alike."""
    for fn in functions:
        fn()
        fn()
    wall, cpu = [[] for _ in functions], [[] for _ in functions]
    for _ in range(runs):
        for i, fn in enumerate(functions):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    median = lambda ts: [statistics.median(t) * 1e3 for t in ts]  # noqa: E731
    return median(wall), median(cpu)


def dense_masked_reference(memory, camera, queries, positions, subset):
    """Output (n,D) for queries ``subset`` by a dense masked softmax with the same cap."""
    q_uv, q_depth = project(positions[0, subset], camera)
    e_uv, e_depth = project(memory.correspondences.reshape(-1, 3), camera)
    e_uv, e_depth = e_uv.reshape(M, K, 2), e_depth.reshape(M, K)
    usable = (e_depth > 0) & (memory.confidences >= memory.confidence_threshold)
    du = q_uv[:, None, None, 0] - e_uv[None, ..., 0]
    dv = q_uv[:, None, None, 1] - e_uv[None, ..., 1]
    d2 = (du * du + dv * dv).masked_fill(~usable[None], math.inf).amin(-1)  # (n,M)
    d2 = d2.masked_fill((d2 > WINDOW**2) | (q_depth <= 0)[:, None], math.inf)
    order = torch.sort(d2, dim=1, stable=True)  # nearest first, ties to the lower entry index
    allow = torch.zeros_like(d2, dtype=torch.bool).scatter_(1, order.indices[:, :CAP], torch.isfinite(order.values[:, :CAP]))
    scores = (queries[0, subset] @ memory.features.T / math.sqrt(D)).masked_fill(~allow, -math.inf)
    return torch.softmax(scores, -1).nan_to_num(0.0) @ memory.features, allow.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    memory, camera, queries, positions = build(torch.Generator().manual_seed(0))
    keys = memory.features[None]
    print(f"B=1 N={queries.shape[1]} M={M} K={K} D={D} window={WINDOW}px k=max_candidates={CAP} "
          f"(each query attends at most its {CAP} nearest allowed entries) threads={torch.get_num_threads()}")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} before the run; other processes share the CPU, so timings are noisy "
              "(many small parallel ops suffer more than one big matmul; try --threads 1)")

    sparse = lambda: memory.constrained_attention(queries, positions, camera, return_weights=False)  # noqa: E731
    dense = lambda: F.scaled_dot_product_attention(queries, keys, keys)  # noqa: E731
    (w_sparse, w_dense), (c_sparse, c_dense) = timed([sparse, dense], args.runs)
    print(f"median of {args.runs} runs       wall ms    CPU ms")
    print(f"constrained (sparse): {w_sparse:9.2f} {c_sparse:9.2f}")
    print(f"dense SDPA:           {w_dense:9.2f} {c_dense:9.2f}")
    print(f"ratio dense/sparse:   {w_dense / w_sparse:9.1f}x {c_dense / c_sparse:8.1f}x  (goal >= 10x; same process)")

    out, _ = sparse()
    subset = torch.randperm(queries.shape[1], generator=torch.Generator().manual_seed(1))[:512]
    ref, allowed = dense_masked_reference(memory, camera, queries, positions, subset)
    err = (out[0, subset] - ref).abs().max().item()
    print(f"check on {len(subset)} queries: max |sparse - dense masked| = {err:.2e}; "
          f"allowed entries per query: mean {allowed.float().mean():.1f}, max {int(allowed.max())}, none {int((allowed == 0).sum())}")
    assert err < 1e-4, "sparse attention disagrees with the dense masked reference"

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sparse()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
