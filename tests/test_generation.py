"""Generation end to end: the geometric backbone on the procedural room, the seed API, its errors."""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ws_engine import CameraTrajectory
from ws_engine.demo import psnr
from ws_engine.errors import (
    ConfigError,
    GenerationCancelled,
    InputFileError,
    InvalidDepthError,
    MissingDependencyError,
    ModelLoadError,
    OutputPathError,
    ShapeMismatchError,
    UnknownNameError,
)
from ws_engine.model import WorldStereo
from ws_engine.pipeline import WorldStereoPipeline, generate_multi_view, generate_video, reconstruct_3d
from ws_engine.scenes import ProceduralRoom

SIZE = 192


@pytest.fixture(scope="module")
def room():
    scene = ProceduralRoom()
    traj = scene.trajectory(num_frames=8, width=SIZE, height=SIZE)
    rgb, depth = scene.render(traj)
    return scene, traj, rgb, depth


@pytest.fixture(scope="module")
def run(room):
    scene, traj, rgb, depth = room
    model = WorldStereo(device="cpu")
    video, result = generate_video(model, rgb[0], traj, depth=depth[0], seed=3, return_result=True)
    return model, video, result


def test_frames_match_the_exact_scene_where_the_memory_saw_it(room, run):
    _, traj, rgb, depth = room
    _, video, result = run
    assert video.shape == (len(traj), 3, SIZE, SIZE)
    assert torch.equal(video[0], rgb[0])  # frame 0 is the condition image
    for t in range(1, len(traj)):
        seen = result.seen[t]
        assert seen.float().mean() > 0.6
        assert psnr(video[t], rgb[t], seen) >= 35.0, t
        # depth of the seen pixels is the scene's
        rel = ((result.depth[t] - depth[t]).abs() / depth[t])[seen]
        assert rel.median() < 0.01


def test_holes_are_filled_and_new_pixels_reach_the_memory(room, run):
    _, traj, _, _ = room
    model, video, result = run
    assert result.holes[1:].any(), "the demo trajectory must reveal something new"
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    filled = video[:, :, result.holes.any(0)]
    assert filled.std() > 0.01  # inpainted, not left black
    # every view was remembered, the global memory grew beyond frame 0's points
    assert len(model.spatial_memory.views) == len(traj)
    assert len(model.global_memory) > 0


def test_same_seed_same_frames_and_other_outputs(room, run, tmp_path):
    _, traj, rgb, depth = room
    _, video, _ = run
    again = generate_video("geometric", rgb[0], traj, depth=depth[0], seed=3)
    assert torch.equal(again, video)
    arr = generate_video("geometric", rgb[0], traj[:3], depth=depth[0], output_format="numpy")
    assert arr.shape == (3, SIZE, SIZE, 3) and arr.dtype == np.float32
    pil = generate_video("geometric", rgb[0], traj[:3], depth=depth[0], output_format="pil")
    assert len(pil) == 3 and pil[0].size == (SIZE, SIZE)
    path = generate_video("geometric", rgb[0], traj[:3], depth=depth[0], output_format="video", save_path=tmp_path / "v.mp4")
    assert path == str(tmp_path / "v.mp4")
    from ws_engine.io import read_video

    frames, fps = read_video(path)
    assert frames.shape == (3, 3, SIZE, SIZE) and fps == pytest.approx(traj.fps)


def test_condition_image_as_file_pil_and_numpy(room, tmp_path):
    _, traj, rgb, depth = room
    arr = (rgb[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "image.png")
    short = traj[:2]
    a = generate_video("geometric", tmp_path / "image.png", short, depth=depth[0])
    b = generate_video("geometric", Image.fromarray(arr), short, depth=depth[0])
    c = generate_video("geometric", arr, short, depth=depth[0])
    assert torch.equal(a, b) and torch.equal(b, c)
    assert (a[0] - rgb[0]).abs().max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"num_frames": 5}, ShapeMismatchError, "num_frames=5"),
        ({"height": 191, "width": 192}, ShapeMismatchError, "divisible by 2"),
        ({"output_format": "video"}, OutputPathError, "save_path"),
        ({"output_format": "gif"}, UnknownNameError, "output format"),
        ({"save_path": "/nonexistent-folder/x.mp4"}, OutputPathError, "does not exist"),
        ({"save_path": "out.avi"}, OutputPathError, ".mp4"),
        ({"seed": 1.5}, ConfigError, "seed"),
    ],
)
def test_bad_arguments_fail_before_work(room, kwargs, error, words):
    _, traj, rgb, depth = room
    model = WorldStereo(device="cpu")
    with pytest.raises(error, match=words):
        generate_video(model, rgb[0], traj, depth=depth[0], **kwargs)
    assert len(model.global_memory) == 0 and not model.spatial_memory.views


def test_bad_images_and_depths(room, tmp_path):
    _, traj, rgb, depth = room
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(InputFileError):
        generate_video("geometric", tmp_path / "broken.png", traj, depth=depth[0])
    with pytest.raises(InputFileError):
        generate_video("geometric", tmp_path / "missing.png", traj, depth=depth[0])
    with pytest.raises(InvalidDepthError):
        generate_video("geometric", rgb[0], traj, depth=torch.zeros(SIZE, SIZE))
    small = torch.nn.functional.interpolate(depth[0][None, None], size=(96, 96), mode="nearest")[0, 0]
    with pytest.warns(UserWarning, match="96"):
        video = generate_video("geometric", rgb[0], traj[:2], depth=small)
    assert video.shape == (2, 3, SIZE, SIZE)


def test_fallback_depth_warns_and_names_better_options(room):
    _, traj, rgb, _ = room
    with pytest.warns(UserWarning, match="depth"):
        video = generate_video("geometric", rgb[0], traj[:3])
    assert video.shape == (3, 3, SIZE, SIZE)


def test_cancel_leaves_memories_consistent(room):
    _, traj, rgb, depth = room
    model = WorldStereo(device="cpu")

    def stop_after_three(step, total, latent):
        assert latent.dim() == 4 and total == len(traj)
        if step == 3:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        generate_video(model, rgb[0], traj, depth=depth[0], progress_callback=stop_after_three)
    assert len(model.spatial_memory.views) == 3  # frames 0, 1, 2 and nothing half-added
    state = model.memory_state
    assert state["num_points"] == len(model.global_memory) > 0
    # the memories go on from there
    video = generate_video(model, rgb[0], traj, depth=depth[0], reset_memory=False)
    assert video.shape[0] == len(traj)


def test_memory_switches(room):
    _, traj, rgb, depth = room
    short = traj[:4]
    only_ssm = WorldStereo(device="cpu")
    v1 = generate_video(only_ssm, rgb[0], short, depth=depth[0], use_geometric_memory=False)
    only_ggm = generate_video("geometric", rgb[0], short, depth=depth[0], use_spatial_memory=False)
    full = generate_video("geometric", rgb[0], short, depth=depth[0])
    assert v1.shape == only_ggm.shape == full.shape
    assert not torch.equal(only_ggm, full)
    with pytest.raises(ConfigError, match="at least one memory"):
        generate_video("geometric", rgb[0], short, depth=depth[0], use_geometric_memory=False, use_spatial_memory=False)


def test_multi_view_shared_and_separate_memories(room):
    scene, traj, rgb, depth = room
    other = scene.trajectory(num_frames=5, width=SIZE, height=SIZE, kind="orbit_right")
    shared = WorldStereo(device="cpu")
    videos = generate_multi_view(shared, rgb[0], [traj[:5], other], depth=depth[0])
    assert [v.shape[0] for v in videos] == [5, 5]
    assert len(shared.spatial_memory.views) == 9  # frame 0 (the condition view) is stored once
    separate = WorldStereo(device="cpu")
    generate_multi_view(separate, rgb[0], [traj[:5], other], shared_memory=False, depth=depth[0])
    assert len(separate.spatial_memory.views) == 5  # the last trajectory started afresh


def test_reconstruct_3d_returns_the_seed_keys(room):
    scene, traj, rgb, depth = room
    video, rec = reconstruct_3d("geometric", rgb[0], traj[:4], "mesh", depth=depth[0])
    assert video.shape[0] == 4
    for key in ("points", "colors", "normals", "mesh", "quality_metrics"):
        assert rec[key] is not None
    assert rec["quality_metrics"]["num_faces"] > 0
    d = scene.distance_to_surface(rec.mesh.vertices)
    assert float(d.mean()) < 0.01 * scene.extent


def test_model_config_round_trip_and_forward(tmp_path):
    model = WorldStereo(vdm_config={"backbone": "geometric", "num_references": 3}, spatial_memory_config={"memory_size": 1024}, device="cpu")
    model.save_pretrained(tmp_path / "m")
    again = WorldStereo.from_pretrained(tmp_path / "m", device="cpu")
    assert again.config == model.config
    assert WorldStereo.from_pretrained("geometric", device="cpu").backbone.name == "geometric"
    with pytest.raises(ConfigError, match="training-free"):
        model(torch.zeros(1))
    with pytest.raises(ModelLoadError, match="config.json"):
        WorldStereo.from_pretrained(tmp_path / "empty", device="cpu")
    with pytest.raises(ConfigError, match="Unknown option"):
        WorldStereo(vdm_config={"backbone": "geometric", "steps": 3}, device="cpu")
    if importlib.util.find_spec("diffusers") is None:
        with pytest.raises(MissingDependencyError, match="neural"):
            WorldStereo(vdm_config={"backbone": "worldstereo"}, device="cpu")
    else:  # a randomly initialised neural model (training); tests/test_worldstereo_neural.py covers it
        assert WorldStereo(vdm_config={"backbone": "worldstereo", "layers": 1}, device="cpu").backbone.trainable


def test_pipeline_class_and_cuda_fallback(room):
    _, traj, rgb, depth = room
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        pipe = WorldStereoPipeline("geometric", device="cuda" if not torch.cuda.is_available() else "cpu")
    assert pipe.device.type == "cpu"
    video = pipe.generate_video(rgb[0], traj[:2], depth=depth[0])
    assert video.shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ConfigError, match="torch_dtype"):
        WorldStereoPipeline("geometric", device="cpu", torch_dtype=torch.int8)


def test_seed_example_trajectory_runs(room):
    _, _, rgb, depth = room
    traj = CameraTrajectory.forward(distance=2.0, num_frames=16, width=SIZE, height=SIZE, scene_depth=float(depth[0].median()) / 4)
    video = generate_video("geometric", rgb[0], traj, num_frames=16, depth=depth[0])
    assert video.shape == (16, 3, SIZE, SIZE)


def test_official_example_at_480x768_frame0_is_the_input(examples, tmp_path):
    from ws_engine.trajectory_io import load_trajectory

    scene = examples[0] if isinstance(examples, (list, tuple)) else next(iter(examples))
    traj = load_trajectory(scene / "camera.json")
    assert len(traj) == 81
    image = Image.open(scene / "image.png").convert("RGB").resize((768, 480), Image.BICUBIC)
    # a given depth: a tilted plane in millimetres as a 16-bit PNG
    rows = np.linspace(4000, 1500, 480, dtype=np.float32)[:, None].repeat(768, 1)
    Image.fromarray(rows.astype(np.uint16)).save(tmp_path / "depth.png")
    # the official 480x768 bucket: intrinsics rescaled from the file's image size
    video = generate_video("geometric", image, traj[::16], height=480, width=768, depth=tmp_path / "depth.png", depth_scale=0.001)
    assert video.shape == (len(traj[::16]), 3, 480, 768)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert (video[0] - expected).abs().max() < 1e-6


def test_optimization_switches_say_what_they_do():
    import importlib.util

    with pytest.warns(UserWarning, match="no weights"):
        pipe = WorldStereoPipeline("geometric", device="cpu", enable_cpu_offload=True)
    assert pipe.model.backbone.name == "geometric"
    if importlib.util.find_spec("xformers") is None:
        from ws_engine.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match=r"comfyui-worldstereo\[xformers\]"):
            WorldStereoPipeline("geometric", device="cpu", enable_xformers=True)


def test_official_camera_json_scales_the_fallback_depth_to_its_pivot(examples):
    from ws_engine.trajectory_io import load_trajectory

    scene = examples[0]
    pivot = float(torch.as_tensor(load_trajectory(scene / "camera.json", return_meta=True)[1]["world_from_first"])[:3, 3].norm())
    image = Image.open(scene / "image.png").convert("RGB")
    with pytest.warns(UserWarning) as caught:
        video, result = generate_video("geometric", image, scene / "camera.json", height=96, width=160, return_result=True)
    said = [float(m) for w in caught for m in re.findall(r"backdrop at ([0-9.]+)", str(w.message))]
    assert said and abs(said[0] - pivot) < 1e-3
    assert video.shape == (81, 3, 96, 160)
    assert abs(float(result.depth[0][result.depth[0] > 0].max()) - pivot) / pivot < 0.05  # the backdrop sits at the pivot
