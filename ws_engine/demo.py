"""The embedded default: generate and reconstruct the procedural room, with no input and no weights.

Because the scene is known exactly, the run scores itself: PSNR of every generated frame against
the exact render (overall and where the memories saw the scene), and the distance of the
reconstruction to the true surface.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .model import WorldStereo
from .pipeline import generate_video
from .scenes import ProceduralRoom

__all__ = ["run_demo", "psnr", "DEMO_FILES"]

DEMO_FILES = ("video.mp4", "frames.png", "scene.ply", "mesh.glb", "trajectory.json", "metrics.json")


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images (3,H,W) in [0,1] over ``mask`` (H,W) bool (all pixels if None); inf if
    equal, nan for an empty mask."""
    err = (a - b) ** 2 if mask is None else ((a - b) ** 2)[:, mask]
    if err.numel() == 0:
        return float("nan")
    mse = float(err.mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _finite(x: float):
    return round(x, 3) if math.isfinite(x) else None


def run_demo(
    out="output/demo", num_frames: int = 16, size: int = 512, seed: int = 0, mesh: bool = True, device="cpu", progress_callback=None, on_stage=None
) -> dict:
    """Run the demo into the folder ``out``; returns the metrics (also written to ``metrics.json``).

    Files: ``video.mp4``, ``frames.png`` (grid), ``scene.ply`` (point cloud), ``mesh.glb``
    (TSDF mesh, if ``mesh``), ``trajectory.json``, ``metrics.json``. ``on_stage(name, total)`` is
    called as each stage starts (generate, point_cloud, mesh, write); ``progress_callback(step,
    total, info)`` reports within the generation and reconstruction stages.
    """
    stage = on_stage or (lambda name, total=None: None)
    from .io import atomic_write_text, save_frame_grid, save_ply, save_video
    from .reconstruction import reconstruct
    from .trajectory_io import save_trajectory

    out = Path(out)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    scene = ProceduralRoom()
    trajectory = scene.trajectory(num_frames=num_frames, width=size, height=size)
    truth_rgb, truth_depth = scene.render(trajectory)
    timings["scene"] = time.perf_counter() - tick

    tick = time.perf_counter()
    stage("generate", num_frames)
    model = WorldStereo(vdm_config={"backbone": "geometric"}, device=device)
    video, result = generate_video(
        model, truth_rgb[0], trajectory, seed=seed, depth=truth_depth[0], progress_callback=progress_callback, return_result=True
    )
    timings["generate"] = time.perf_counter() - tick

    tick = time.perf_counter()
    stage("point_cloud")
    cloud = reconstruct(result.frames, result.depth, trajectory, "point_cloud", memory=model.global_memory, confidences=result.confidence,
                        progress_callback=progress_callback)  # fmt: skip
    timings["point_cloud"] = time.perf_counter() - tick
    surface = None
    if mesh:
        tick = time.perf_counter()
        stage("mesh")
        surface = reconstruct(result.frames, result.depth, trajectory, "mesh", confidences=result.confidence, progress_callback=progress_callback)
        timings["mesh"] = time.perf_counter() - tick

    frames = []
    for t in range(1, num_frames):
        seen = result.seen[t]
        frames.append({"frame": t, "psnr": _finite(psnr(video[t], truth_rgb[t])), "psnr_seen": _finite(psnr(video[t], truth_rgb[t], seen)),
                       "seen_fraction": round(float(seen.float().mean()), 4)})  # fmt: skip
    all_err = ((video[1:] - truth_rgb[1:]) ** 2).mean(1)  # (T-1,H,W)
    seen = result.seen[1:]
    extent = scene.extent
    metrics = {
        "scene": "procedural_room",
        "num_frames": num_frames,
        "size": [size, size],
        "seed": seed,
        "psnr": _finite(-10 * math.log10(float(all_err.mean()))),
        "psnr_seen": _finite(-10 * math.log10(float(all_err[seen].mean()))),
        "seen_fraction": round(float(seen.float().mean()), 4),
        "frames": frames,
        "scene_extent": round(extent, 4),
        "reconstruction": {"point_cloud": _surface_metrics(scene, cloud.points, extent, cloud.quality_metrics)},
    }
    if surface is not None:
        metrics["reconstruction"]["mesh"] = _surface_metrics(scene, surface.mesh.vertices, extent, surface.quality_metrics)

    tick = time.perf_counter()
    stage("write")
    save_video(out / "video.mp4", video, fps=trajectory.fps)
    save_frame_grid(out / "frames.png", video)
    save_ply(out / "scene.ply", cloud.points, cloud.colors, cloud.normals)
    if surface is not None:
        surface.mesh.save(out / "mesh.glb")
    save_trajectory(trajectory, out / "trajectory.json")
    timings["write"] = time.perf_counter() - tick
    metrics["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _surface_metrics(scene: ProceduralRoom, points: torch.Tensor, extent: float, quality: dict) -> dict:
    """Distance of points (N,3) to the true surface, absolute and relative to the scene extent."""
    d = scene.distance_to_surface(points.float().cpu())
    return {
        "num_points": int(points.shape[0]),
        "mean_distance": round(float(d.mean()), 5),
        "p95_distance": round(float(d.quantile(0.95) if len(d) < 2**24 else d[:: len(d) // 2**20 + 1].quantile(0.95)), 5),
        "mean_distance_relative": round(float(d.mean()) / extent, 6),
        "quality_metrics": quality,
    }
