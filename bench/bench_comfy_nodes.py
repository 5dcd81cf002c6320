"""What the ComfyUI nodes cost on top of the engine, in one process.

    python bench/bench_comfy_nodes.py [--frames 16] [--size 384]

Runs the first example workflow's chain (memory -> generate -> reconstruct) through the nodes, and
the same generation through ``generate_video`` directly, and prints per-node times, the overhead
ratio, and the size of a memory (what ComfyUI's cache holds per WS_MEMORY output) and its clone time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import comfy_pack  # noqa: E402
from ws_engine import generate_video  # noqa: E402
from ws_engine.scenes import ProceduralRoom  # noqa: E402


def _bytes(memory) -> int:
    """Bytes of every tensor a WorldMemory holds (points, colours, features, the bank, view pixels)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.untyped_storage().nbytes()

    for obj in (memory.global_memory, memory.spatial_memory):
        for value in vars(obj).values():
            add(value)
    for view in memory.spatial_memory.views:
        for key in ("image", "depth", "confidence"):
            add(view.get(key))
    return total


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pack = comfy_pack.load_pack()
    nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        comfy_pack.runtime().set_directories(input=tmp, output=tmp)
        room = ProceduralRoom()
        cam = room.camera(args.size, args.size, fov=60.0)
        rgb, depth = room.render(cam)
        image = rgb.permute(0, 2, 3, 1).contiguous()
        depth_image = depth[0][None, ..., None].expand(1, args.size, args.size, 3).contiguous()
        (model,), t_model = timed(lambda: nodes["WorldStereoLoadModel"].load("geometric", "cpu", "auto", "sdpa", False))
        (traj, _), t_traj = timed(lambda: nodes["WorldStereoCameraTrajectory"].build("orbit_left", args.frames, 0.3, 15.0, 3.0, 60.0, args.size, args.size))
        (memory, _), t_mem = timed(lambda: nodes["WorldStereoGeometricMemory"].build(image, traj, "depth", 1.0, 2_000_000, 0.005, "kd_tree", depth=depth_image))
        outs, t_gen = timed(lambda: nodes["WorldStereoGenerate"].generate(model, image, traj, 50, 7.5, 0, True, True, memory=memory))
        frames, grown = outs[0], outs[1]
        _, t_rec = timed(lambda: nodes["WorldStereoReconstruct"].reconstruct(grown, frames, traj, "mesh", "bench/scene"))
        _, t_direct = timed(lambda: generate_video(model, rgb[0], traj, depth=depth[0], seed=0))
        _, t_clone = timed(grown.clone)
        print(f"{args.frames} frames at {args.size}x{args.size}, geometric model, CPU ({torch.get_num_threads()} threads)")
        for name, t in (("Load Model", t_model), ("Camera Trajectory (with plot)", t_traj), ("Geometric Memory", t_mem),
                        ("Generate", t_gen), ("Reconstruct (mesh)", t_rec)):  # fmt: skip
            print(f"  {name:32s} {t:7.2f} s")
        print(f"  generate_video directly          {t_direct:7.2f} s   -> node / engine = {t_gen / t_direct:4.2f}x")
        print(f"  memory after generation: {len(grown):,} points, {len(grown.spatial_memory.views)} views, "
              f"{_bytes(grown) / 2**20:.0f} MiB; clone {t_clone * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
