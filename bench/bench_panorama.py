"""Panorama timings on the CPU: frame 0's crop, starting the memories from a 2048x1024 panorama, an
equirectangular render of the memory, and a 16-frame look-around. Run: python bench/bench_panorama.py"""

from __future__ import annotations

import warnings

import torch

from ws_engine import CameraTrajectory, WorldStereo, generate_video
from ws_engine.panorama import crop_perspective, panorama_camera, render_panorama
from ws_engine.pipeline import _start_from_panorama
from ws_engine.scenes import ProceduralRoom

from _timing import timed

warnings.filterwarnings("ignore")


def main() -> None:
    room = ProceduralRoom()
    start = torch.eye(4)
    start[:3, 3] = room.eye
    t, (pano, dist) = timed(lambda: room.render(panorama_camera(start, 2048, 1024)), 1)
    pano, dist = pano[0], dist[0]
    print(f"exact 2048x1024 panorama of the room: {t:.2f} s")
    first = CameraTrajectory.turn_left(angle=90.0, num_frames=16, width=512, height=512, fov=60.0, start=start)
    cam = panorama_camera(start, 2048, 1024)
    t, _ = timed(lambda: crop_perspective(pano, cam, first[0], dist), 2)
    print(f"frame 0 cut from the panorama at 512x512: {t * 1000:.0f} ms")
    model = WorldStereo(device="cpu")
    t, _ = timed(lambda: _start_from_panorama(model, pano, first[0], dist, "depth", 1.0, None, 3.0, None, True, None), 2)
    print(f"memories started from 2048x1024 ({len(model.global_memory):,} points, {len(model.spatial_memory.views)} views): {t:.2f} s")
    t, _ = timed(lambda: render_panorama(model, room.eye, 2048), 2)
    print(f"equirectangular render of the memory at 2048x1024 from the panorama's centre: {t:.2f} s")
    off = room.eye + torch.tensor([0.1, 0.0, 0.2])
    t, _ = timed(lambda: render_panorama(model, off, 2048), 2)
    print(f"equirectangular render of the memory at 2048x1024 from 0.22 m off the centre: {t:.2f} s")
    small = CameraTrajectory.turn_left(angle=90.0, num_frames=16, width=256, height=256, fov=60.0, start=start)
    t, _ = timed(lambda: generate_video(WorldStereo(device="cpu"), pano, small, depth=dist, seed=0), 1)
    print(f"16-frame look-around at 256x256 from the 2048x1024 panorama: {t:.2f} s ({t / 16 * 1000:.0f} ms per frame)")


if __name__ == "__main__":
    main()
