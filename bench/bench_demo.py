"""Time the demo's stages, the cost per frame, and memory on a long trajectory (prints figures).

Goal on a 2-core CPU: the demo (16 frames at 512x512, point cloud and mesh) in <= 20 s; cost
linear in the number of frames; memory bounded by ``max_points`` on a 500-frame trajectory.
Usage: python bench/bench_demo.py [--long-frames 500] [--skip-long]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from ws_engine.demo import run_demo
from ws_engine.model import WorldStereo
from ws_engine.scenes import ProceduralRoom


MAXP = 12_000  # below one 128x128 frame plus what the loop adds: the bound is exercised


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long-frames", type=int, default=500)
    ap.add_argument("--skip-long", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as out:
        run_demo(out, num_frames=4, size=128)  # warm-up (imports, allocator)
        tick = time.perf_counter()
        metrics = run_demo(out, num_frames=16, size=512)
        total = time.perf_counter() - tick
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in metrics["timings_s"].items())
    print(f"demo 16 frames 512x512: {total:.1f} s in all ({stages}); PSNR seen {metrics['psnr_seen']} dB, overall {metrics['psnr']} dB")

    scene = ProceduralRoom()
    for n in (8, 16, 32):
        traj = scene.trajectory(num_frames=n, width=256, height=256, kind="eloop")
        rgb, depth = scene.render(traj[0])
        model = WorldStereo(device="cpu")
        tick = time.perf_counter()
        model.generate(rgb[0], traj, depth=depth[0])
        dt = time.perf_counter() - tick
        print(f"generate {n:3d} frames at 256x256: {dt:6.2f} s, {dt / (n - 1) * 1000:6.1f} ms per generated frame")

    if args.skip_long:
        return
    n = args.long_frames
    base = scene.trajectory(num_frames=50, width=128, height=128, kind="eloop")
    traj = base
    while len(traj) < n:
        traj = traj.concat(base)
    traj = traj[:n]
    rgb, depth = scene.render(traj[0])
    model = WorldStereo(global_memory_config={"max_points": MAXP}, device="cpu")
    sizes = []

    def watch(step, total, latent):
        if step % 100 == 0 or step == total:
            sizes.append((step, len(model.global_memory), len(model.spatial_memory), rss_mb()))

    tick = time.perf_counter()
    model.generate(rgb[0], traj, depth=depth[0], progress_callback=watch)
    dt = time.perf_counter() - tick
    print(f"{n} frames at 128x128 with max_points={MAXP:,}: {dt:.1f} s ({dt / (n - 1) * 1000:.1f} ms per frame)")
    for step, points, entries, rss in sizes:
        print(f"  frame {step:4d}: {points:7d} points, {entries:6d} SSM entries, peak RSS {rss:7.0f} MB")


if __name__ == "__main__":
    main()
