"""Reconstruction speed: point_cloud, mesh and neural_field at default settings.

The analytic scene of tests/test_reconstruction.py (a box room seen from inside with a sphere,
exact depth by ray casting) seen by 16 cameras at 512x512. Each method runs once after a small
warm-up (imports, allocator); the time includes its quality metrics. Also prints the distance of
the result to the true surface.
Run: python bench/bench_reconstruction.py [--frames 16] [--size 512] [--methods point_cloud,mesh,neural_field]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_reconstruction import EXTENT, render_scene, room_cameras, surface_distance  # noqa: E402
from ws_engine.reconstruction import RECONSTRUCTION_METHODS, reconstruct  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--methods", default=",".join(RECONSTRUCTION_METHODS))
    args = ap.parse_args()
    traj = room_cameras(args.frames, args.size)
    frames, depth, _, _ = render_scene(traj)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.frames} frames at {args.size}x{args.size}")
    small = room_cameras(2, 64)
    warm_frames, warm_depth, _, _ = render_scene(small)
    for method in args.methods.split(","):
        warm = {"iterations": 2} if method == "neural_field" else {}
        reconstruct(warm_frames, warm_depth, small, method, **warm)
        tick = time.perf_counter()
        rec = reconstruct(frames, depth, traj, method)
        seconds = time.perf_counter() - tick
        m = rec.quality_metrics
        dist = surface_distance(rec.points) / EXTENT * 100
        extra = f", PSNR {m['psnr']:.1f} dB after {m['iterations']} iterations" if method == "neural_field" else ""
        print(
            f"{method:13s} {seconds:6.2f} s | {m['num_points']:>9,} points {m['num_faces']:>9,} faces | coverage "
            f"{m['coverage']:.3f}, reprojection {m['mean_reprojection_error']:.3f} px | surface error mean "
            f"{float(dist.mean()):.3f}% p95 {float(dist.quantile(0.95)):.3f}% of the extent{extra}"
        )


if __name__ == "__main__":
    main()
