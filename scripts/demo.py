"""The engine-core demo: lift a scene into the Global-Geometric Memory and fly a camera through it.

A procedural room (an analytic box with a checkerboard texture) is seen by a first camera; its image
and exact depth are lifted into a GlobalGeometricMemory, which is then rendered along an
elliptical loop. Writes PNG frames, the memory (safetensors) and the trajectory in every format.
Usage: python scripts/demo.py [--out output/demo] [--frames 24] [--size 384]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ws_engine import CameraParameters, CameraTrajectory, GlobalGeometricMemory, SpatialStereoMemory
from ws_engine.geometry import camera_rays, unproject
from ws_engine.io import atomic_path
from ws_engine.trajectory_io import TRAJECTORY_FORMATS, save_trajectory

ROOM_MIN = torch.tensor([-2.0, -1.5, -2.0])
ROOM_MAX = torch.tensor([2.0, 1.5, 4.0])


def room_view(cam: CameraParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact image (3,H,W) and depth (H,W) of the inside of a textured box seen by ``cam``."""
    rays = camera_rays(cam)[0]  # (H,W,3), z = 1
    R, origin = cam.R, cam.position
    d = rays @ R.T  # world directions
    safe = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t_exit = torch.maximum((ROOM_MIN - origin) / safe, (ROOM_MAX - origin) / safe).amin(-1)  # leave the box
    hit = origin + t_exit[..., None] * d
    checker = ((hit * 2).floor().sum(-1) % 2)[..., None]
    wall = (hit - ROOM_MIN) / (ROOM_MAX - ROOM_MIN)
    image = (0.35 + 0.5 * wall) * (0.6 + 0.4 * checker)
    return image.permute(2, 0, 1).clamp(0, 1), t_exit  # rays have z = 1, so t is the depth


def save_png(path: Path, chw: torch.Tensor) -> None:
    array = (chw.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="output/demo")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()
    out = Path(args.out)
    first = CameraParameters.from_fov(70.0, args.size, args.size)
    image, depth = room_view(first)
    memory = GlobalGeometricMemory(max_points=2_000_000)
    memory.initialize(unproject(depth, first).reshape(-1, 3), colors=image.reshape(3, -1).T)
    traj = CameraTrajectory.eloop(0.8, args.frames, radius_z=0.6, focus_depth=3.0, width=args.size, height=args.size, fov=70.0)
    render = memory.render(traj)
    bank = SpatialStereoMemory(memory_size=4096, feature_dim=3)
    for i, cam in enumerate(traj):
        save_png(out / "frames" / f"{i:04d}.png", render.rgb[i])
        save_png(out / "holes" / f"{i:04d}.png", (~render.mask[i]).float().expand(3, -1, -1))
        bank.add_view(cam)
    refs = bank.select_reference_frames(traj[len(traj) // 2 : len(traj) // 2 + 1], k=4)
    save_png(out / "condition.png", image)
    memory.save(out / "memory.safetensors")
    for fmt in TRAJECTORY_FORMATS:
        name = {"re10k": "trajectory_re10k.txt", "colmap": "colmap"}.get(fmt, f"trajectory_{fmt}.json")
        save_trajectory(traj, out / name, format=fmt)
    holes = (~render.mask).float().mean().item()
    print(f"{len(memory):,} points in memory; {len(traj)} frames rendered to {out / 'frames'} "
          f"({holes * 100:.1f}% holes for a generator to fill); reference views for the middle frame: {refs.tolist()}")


if __name__ == "__main__":
    main()
