"""Timings of the neural WorldStereo 2.0 backbone on tiny random checkpoints (CPU; no downloads).

Prints: loading each variant, a 21-frame clip per variant, Plücker rays at the 480x768 bucket, and
keyframe VAE encoding batched (ours) against one frame per call (the official loop) in the same
process. Run: python bench/bench_worldstereo_neural.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")


def main() -> None:
    from worldstereo_fixtures import VARIANTS, make_tiny_repo

    from ws_engine import WorldStereo
    from ws_engine.backbones.worldstereo import sampling
    from ws_engine.backbones.worldstereo.conditioning import plucker_embedding
    from ws_engine.cameras import CameraTrajectory
    from ws_engine.pipeline import generate_video

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        t, repo = timed(lambda: make_tiny_repo(tmp))
        print(f"tiny repo written (base + 3 variants): {t:.2f} s")
        H, W = 64, 96
        traj = CameraTrajectory.orbit_left(angle=40.0, num_frames=21, width=W, height=H, scene_depth=3.0)
        image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
        for v in VARIANTS:
            t_load, model = timed(lambda v=v: WorldStereo.from_pretrained(repo, v, device="cpu"))
            t_gen, _ = timed(lambda m=model: generate_video(m, image, traj, num_inference_steps=4, seed=0, depth=torch.full((H, W), 3.0)), 2)
            print(f"{v:24s} load {t_load:5.2f} s   21 frames at {W}x{H}, 4 steps: {t_gen:5.2f} s")
        vae = model.backbone.components.vae
        frames = torch.rand(21, 3, H, W)
        t_batch, a = timed(lambda: sampling.encode_keyframes(vae, frames), 3)
        t_loop, b = timed(lambda: torch.cat([sampling.encode_keyframes(vae, f[None]) for f in frames], dim=2), 3)
        print(f"keyframe VAE encode of 21 frames: batched {t_batch:.3f} s, one per call {t_loop:.3f} s "
              f"(ratio {t_loop / t_batch:.2f}x; max |diff| {float((a - b).abs().max()):.1e})")
        K = torch.tensor([[600.0, 0, 384], [0, 600.0, 240], [0, 0, 1]]).repeat(21, 1, 1)
        big = CameraTrajectory.orbit_left(angle=40.0, num_frames=21, width=768, height=480, scene_depth=3.0)
        w2c = torch.linalg.inv(big.cameras.c2wb.double())
        t_pl, emb = timed(lambda: plucker_embedding(K, w2c, 480, 768), 3)
        print(f"Plücker rays 21 x 480x768: {t_pl:.3f} s -> {tuple(emb.shape)}")


if __name__ == "__main__":
    main()
