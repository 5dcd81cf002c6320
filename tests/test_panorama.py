"""Panoramas end to end on the analytic room: an exact equirectangular image explored with perspective cameras."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.demo import psnr
from ws_engine.errors import ConfigError, InputFileError, ShapeMismatchError
from ws_engine.geometry import project, unproject
from ws_engine.io import load_image, read_video, save_image
from ws_engine.model import WorldStereo
from ws_engine.panorama import crop_perspective, is_panorama, load_pano_bank, panorama_camera, render_panorama
from ws_engine.pipeline import generate_multi_view, generate_video, reconstruct_3d
from ws_engine.scenes import ProceduralRoom
from ws_engine.world_memory import WorldMemory, generate_with_memory

PW, PH, SIZE, FOV = 1024, 512, 128, 60.0


@pytest.fixture(scope="module")
def scene():
    """The room, the panorama's pose (at the demo camera's eye, world-aligned), the exact panorama and depth."""
    room = ProceduralRoom()
    c2w = torch.eye(4)
    c2w[:3, 3] = room.eye
    pano, depth = room.render(panorama_camera(c2w, PW, PH))
    return room, c2w, pano[0], depth[0]


def seen_by_panorama(scene, cam, depth):
    """(H,W) bool: pixels of ``cam`` whose surface point (exact ``depth``) the panorama sees."""
    _, c2w, _, pano_depth = scene
    P = unproject(depth, cam).reshape(-1, 3)
    uv, dist = project(P, panorama_camera(c2w, PW, PH))
    u, v = uv[:, 0].round().long() % PW, uv[:, 1].round().long().clamp(0, PH - 1)
    return ((pano_depth[v, u] - dist).abs() < 0.02 * dist).reshape(depth.shape)


def explore(scene, traj, **kw):
    room, _, pano, depth = scene
    model = WorldStereo(device="cpu")
    frames = generate_video(model, pano, traj, depth=depth, seed=0, **kw)
    exact, exact_depth = room.render(traj.cameras)
    scores = []
    for i in range(len(traj)):
        seen = seen_by_panorama(scene, traj.cameras[i], exact_depth[i])
        assert seen.float().mean() > 0.9
        scores.append(float(psnr(frames[i][:, seen], exact[i][:, seen])))
    return model, frames, scores


@pytest.mark.parametrize("motion", ["look_around", "walk_forward"])
def test_perspective_frames_match_exact_renders_where_the_panorama_saw(scene, motion):
    _, c2w, _, _ = scene
    if motion == "look_around":
        traj = CameraTrajectory.turn_left(angle=90.0, num_frames=9, width=SIZE, height=SIZE, fov=FOV, start=c2w)
    else:
        traj = CameraTrajectory.forward(distance=0.6, num_frames=9, width=SIZE, height=SIZE, fov=FOV, start=c2w)
    _, frames, scores = explore(scene, traj)
    assert frames.shape == (9, 3, SIZE, SIZE)
    assert min(scores) >= 35.0, [round(s, 1) for s in scores]


def test_frame_zero_is_the_crop_and_the_memory_reproduces_the_panorama(scene):
    room, c2w, pano, depth = scene
    first = CameraParameters.from_fov(FOV, SIZE, SIZE, c2w=c2w)
    crop, z = crop_perspective(pano, panorama_camera(c2w, PW, PH), first, depth)
    exact, exact_depth = room.render(first)
    assert psnr(crop, exact[0]) >= 35.0
    assert float((z - exact_depth[0]).abs().median()) < 0.01
    memory = WorldMemory.create(pano, first, depth, camera_model="equirectangular")
    image, pdepth, mask = render_panorama(memory, c2w[:3, 3], PW, rotation=c2w[:3, :3], radius=1)
    assert bool(mask.all()) and psnr(image, pano) >= 40.0
    assert float((pdepth - depth).abs().max()) < 1e-3


def test_wrong_shapes_and_off_centre_starts(scene):
    _, c2w, pano, depth = scene
    traj = CameraTrajectory.turn_left(angle=20.0, num_frames=3, width=64, height=64, fov=FOV, start=c2w)
    with pytest.raises(ConfigError, match=r"must be 2:1.*1024x600 \(ratio 1.707\).*Crop or pad it to 1200x600"):
        generate_video("geometric", torch.rand(3, 600, 1024), traj, camera_model="equirectangular")
    with pytest.raises(ShapeMismatchError, match=r"depth map is 300x200 .*panorama is 1024x512"):
        generate_video("geometric", pano, traj, depth=torch.ones(200, 300))
    moved = CameraTrajectory.forward(distance=0.3, num_frames=3, width=64, height=64, fov=FOV, start=c2w)
    off = CameraTrajectory(moved.cameras[torch.tensor([1, 2, 2])])
    with pytest.warns(UserWarning, match="not at the panorama's centre, so frame 0 is a render"):
        frames = generate_video("geometric", pano, off, depth=depth, panorama_pose=c2w, seed=0)
    assert frames.shape == (3, 3, 64, 64)
    with pytest.warns(UserWarning, match="flat layout prior"):
        generate_video("geometric", pano, traj, seed=0)  # no depth: the sphere-and-floor prior
    assert is_panorama(512, 1024) and not is_panorama(512, 1000)
    with pytest.raises(ConfigError, match="camera_model must be one of"):
        generate_video("geometric", pano, traj, camera_model="fisheye")


def test_stitched_depth_model_on_six_crops(scene, tmp_path):
    from test_depth import save_tiny_depth_anything

    from ws_engine.panorama import panorama_depth

    _, c2w, pano, _ = scene
    model = save_tiny_depth_anything(tmp_path / "tiny-depth", "metric")
    d = panorama_depth(pano[:, ::4, ::4], panorama_camera(c2w, PW // 4, PH // 4), depth_model=model)
    assert d.shape == (PH // 4, PW // 4) and bool((d > 0).all()) and torch.isfinite(d).all()


def test_multi_view_reconstruction_and_memories_as_values(scene):
    _, c2w, pano, depth = scene
    left = CameraTrajectory.turn_left(angle=60.0, num_frames=4, width=64, height=64, fov=FOV, start=c2w)
    right = CameraTrajectory.turn_right(angle=60.0, num_frames=4, width=64, height=64, fov=FOV, start=c2w)
    videos = generate_multi_view("geometric", pano, [left, right], depth=depth, seed=0)
    assert [v.shape[0] for v in videos] == [4, 4]
    _, rec = reconstruct_3d("geometric", pano, left, depth=depth, seed=0)
    assert len(rec["points"]) > 1000
    memory = WorldMemory.create(pano, left[0], depth, camera_model="equirectangular")
    assert len(memory) == PW * PH  # one point per panorama pixel (no merging within the panorama)
    result, grown = generate_with_memory("geometric", memory, pano, right, seed=0)
    assert result.frames.shape == (4, 3, 64, 64) and len(memory) == PW * PH and grown is not memory


def write_bank(room, folder, views: int = 6, size: int = 64):
    """An official-layout pano bank of the room: cameras.json (intrinsic, w2c extrinsic) + images/<id>.png."""
    traj = CameraTrajectory.turn_left(angle=300.0, num_frames=views, width=size, height=size, fov=FOV, start=room.camera(size, size).c2w)
    images, depths = room.render(traj.cameras)
    (folder / "images").mkdir(parents=True)
    cameras = {}
    for i in range(views):
        cameras[f"{i:04d}"] = {"intrinsic": traj.cameras.Kb[i].tolist(), "extrinsic": torch.linalg.inv(traj.cameras.c2wb[i]).tolist()}
        save_image(folder / "images" / f"{i:04d}.png", images[i])
    (folder / "cameras.json").write_text(json.dumps(cameras))
    return traj, images, depths


def test_pano_bank_initialises_the_memories(scene, tmp_path):
    room = scene[0]
    traj, images, depths = write_bank(room, tmp_path / "scene" / "pano_bank")
    loaded, cams, ids = load_pano_bank(tmp_path / "scene")
    assert ids == [f"{i:04d}" for i in range(6)] and cams.allclose(traj.cameras, atol=1e-4)
    assert float((loaded - images).abs().max()) <= 1 / 255 + 1e-6
    memory = WorldMemory.from_pano_bank(tmp_path / "scene", depths=depths)
    assert len(memory.spatial_memory.views) == 6
    out = memory.render(CameraTrajectory(traj.cameras[2:3]), radius=1)
    assert psnr(out.rgb[0, :3], images[2]) >= 35.0
    with pytest.warns(UserWarning, match="flat layout prior"):
        WorldMemory.from_pano_bank(tmp_path / "scene")  # no depth: the prior per view


def test_pano_bank_errors(scene, tmp_path):
    with pytest.raises(InputFileError, match="No cameras.json"):
        load_pano_bank(tmp_path)
    write_bank(scene[0], tmp_path / "bank", views=2)
    (tmp_path / "bank" / "images" / "0001.png").unlink()
    with pytest.raises(InputFileError, match="lists view '0001' but .*0001.png is missing"):
        load_pano_bank(tmp_path / "bank")
    (tmp_path / "bank" / "cameras.json").write_text(json.dumps({"0000": {"intrinsic": [[1, 0], [0, 1]], "extrinsic": np.eye(4).tolist()}}))
    with pytest.raises(InputFileError, match="intrinsic \\(2, 2\\).*need 3x3 and 4x4"):
        load_pano_bank(tmp_path / "bank")


def test_cli_generates_from_a_panorama_and_writes_the_explored_panorama(scene, tmp_path):
    _, _, pano, depth = scene
    save_image(tmp_path / "pano.png", pano[:, ::2, ::2])
    np.save(tmp_path / "pano_depth.npy", depth[::2, ::2].numpy())
    cmd = [sys.executable, "-m", "ws_engine.cli", "generate", "--image", str(tmp_path / "pano.png"), "--depth", str(tmp_path / "pano_depth.npy"),
           "--trajectory", "turn_left", "--frames", "5", "--size", "64", "--out", str(tmp_path / "run"), "--progress", "json",
           "--reconstruct", "point_cloud", "--panorama-out", "explored.png"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and set(result["files"]) >= {"video", "panorama", "point_cloud"}
    frames, _ = read_video(tmp_path / "run" / "video.mp4")
    assert frames.shape[0] == 5 and tuple(frames.shape[-2:]) == (64, 64)
    explored = load_image(tmp_path / "run" / "explored.png")
    assert tuple(explored.shape) == (3, PH // 2, PW // 2)
    assert psnr(explored, pano[:, ::2, ::2]) >= 25.0  # the memory seen from the centre again (grown by the frames)
    bad = subprocess.run([*cmd[:-1], "explored.jpg"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "must be a .png" in bad.stdout + bad.stderr


def test_comfy_nodes_take_a_panorama(scene):
    from comfy_pack import load_pack

    _, c2w, pano, depth = scene
    pack = load_pack()
    nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
    traj = CameraTrajectory.turn_left(angle=30.0, num_frames=4, width=64, height=64, fov=FOV, start=c2w)
    image = pano[:, ::2, ::2].permute(1, 2, 0)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory, render = nodes["WorldStereoGeometricMemory"].build(image, traj, "depth", 1.0, 2_000_000, 0.005, "kd_tree",
                                                                   depth_mask=depth[None, ::2, ::2], camera_model="equirectangular")  # fmt: skip
    assert render.shape == (1, 64, 64, 3) and len(memory) > 100_000
    pano_out, holes, pdepth = nodes["WorldStereoRenderPanorama"].render(memory, 512, 0.0, 0.0, 0.0)
    assert pano_out.shape == (1, 256, 512, 3) and holes.shape == (1, 256, 512) and float(holes.mean()) < 0.01
    assert psnr(pano_out[0].permute(2, 0, 1), pano[:, ::2, ::2]) >= 30.0
    with pytest.raises(ConfigError, match="must be 2:1"):
        nodes["WorldStereoGeometricMemory"].build(image[:, :, :300], traj, "depth", 1.0, 2_000_000, 0.005, "kd_tree", camera_model="equirectangular")
