"""The `worldstereo` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ws_engine.io import load_point_cloud, read_video


def run(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "ws_engine.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_demo_writes_every_file_and_reports_json_progress(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--frames", 4, "--size", 128, "--out", out, "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    steps = [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "generate"]
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["generate", "point_cloud", "mesh", "write"]
    assert steps == [1, 2, 3, 4]
    result = events[-1]
    assert result["event"] == "result"
    for name in ("video.mp4", "frames.png", "scene.ply", "mesh.glb", "trajectory.json", "metrics.json"):
        assert (out / name).is_file(), name
        assert Path(result["files"][name]) == out / name
    frames, fps = read_video(out / "video.mp4")
    assert frames.shape == (4, 3, 128, 128) and fps == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["frames"]) == 3 and metrics["psnr_seen"] > 30
    assert metrics["reconstruction"]["mesh"]["mean_distance_relative"] < 0.01
    cloud = load_point_cloud(out / "scene.ply")
    assert cloud["points"].shape[0] == metrics["reconstruction"]["point_cloud"]["num_points"]
    import trimesh

    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) == metrics["reconstruction"]["mesh"]["quality_metrics"]["num_faces"]


@pytest.fixture(scope="module")
def image_and_depth(tmp_path_factory):
    from ws_engine.scenes import ProceduralRoom

    folder = tmp_path_factory.mktemp("inputs")
    scene = ProceduralRoom()
    rgb, depth = scene.render(scene.camera(160, 128, fov=60.0))
    Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(folder / "image.png")
    np.save(folder / "depth.npy", depth[0].numpy())
    return folder / "image.png", folder / "depth.npy"


def test_generate_then_reconstruct(tmp_path, image_and_depth):
    image, depth = image_and_depth
    out = tmp_path / "gen"
    proc = run("generate", "--image", image, "--depth", depth, "--trajectory", "orbit_right", "--frames", 5, "--out", out, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    for name in ("video.mp4", "frames.png", "trajectory.json", "result.safetensors", "memory.safetensors", "scene.ply", "metrics.json"):
        assert (out / name).is_file(), name
    frames, _ = read_video(out / "video.mp4")
    assert frames.shape == (5, 3, 128, 160)
    # frame 0 is the input image (up to video compression)
    first = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1).float() / 255
    assert (frames[0] - first).abs().mean() < 0.02
    proc = run("reconstruct", "--run", out, "--method", "mesh", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert (out / "mesh.glb").is_file()


def test_trajectory_preset_to_file_and_plot(tmp_path):
    proc = run("trajectory", "orbit_left", "--frames", 8, "--out", tmp_path / "orbit.json", "--plot", tmp_path / "orbit.png")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "orbit.json").read_text())["format"] == "worldstereo-trajectory"
    assert np.array(Image.open(tmp_path / "orbit.png")).std() > 5


def test_trajectory_convert_and_plot(tmp_path, examples):
    src = examples[0] / "camera.json"
    proc = run("trajectory", src, "--to", "transforms_json", "--out", tmp_path / "transforms.json", "--plot", tmp_path / "plot.png")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "transforms.json").read_text())
    assert len(data["frames"]) == 81
    plot = np.array(Image.open(tmp_path / "plot.png"))
    assert plot.ndim == 3 and plot.std() > 5


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "--image", "missing.png"], "missing.png"),
        (["generate", "--image", "IMAGE", "--trajectory", "zigzag"], "zigzag"),
        (["trajectory", "orbit_left"], "Nothing to do"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, image_and_depth, args, words):
    args = [str(image_and_depth[0]) if a == "IMAGE" else a for a in args]
    proc = run(*args, "--out", tmp_path / "o") if args[0] != "trajectory" else run(*args)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_json_mode_reports_errors_as_events(tmp_path):
    proc = run("generate", "--image", tmp_path / "nope.png", "--progress", "json", "--out", tmp_path / "o")
    assert proc.returncode == 2
    event = json_lines(proc.stdout)[-1]
    assert event["event"] == "error" and event["type"] == "InputFileError"


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_ctrl_c_leaves_no_half_written_file(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ws_engine.cli", "demo", "--frames", "40", "--size", "192", "--out", str(out), "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:  # wait until generation is under way
        if json.loads(line).get("event") == "progress":
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in leftovers if n.startswith(".")], leftovers  # no temporary files


def test_generate_with_a_depth_model_folder(tmp_path, image_and_depth):
    from test_depth import save_tiny_depth_anything

    model = save_tiny_depth_anything(tmp_path / "tiny-depth", "metric")
    out = tmp_path / "gen"
    proc = run("generate", "--image", image_and_depth[0], "--depth-model", model, "--frames", 3, "--reconstruct", "none",
               "--out", out, "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stdout)[-1]["event"] == "result"
    assert read_video(out / "video.mp4")[0].shape[0] == 3


# ---- what the Blender add-on drives: several reconstructions, sampler settings, events for everything
def test_generate_several_reconstructions_reports_every_file(tmp_path, image_and_depth):
    image, depth = image_and_depth
    traj = tmp_path / "traj.json"
    assert run("trajectory", "orbit_left", "--frames", 4, "--size", "128x160", "--out", traj).returncode == 0
    out = tmp_path / "gen"
    proc = run("generate", "--image", image, "--depth", depth, "--trajectory", traj, "--size", "64x80", "--steps", 3, "--guidance", 2.5,
               "--reconstruct", "point_cloud", "mesh", "--device", "auto", "--out", out, "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    assert [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "generate"] == [1, 2, 3, 4]
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["generate", "reconstruct (point_cloud)", "reconstruct (mesh)", "write"]
    result = events[-1]
    assert result["event"] == "result" and result["frames"] == 4
    files = result["files"]
    assert Path(files["point_cloud"]) == out / "scene.ply" and Path(files["mesh"]) == out / "mesh.glb"
    for key in ("video", "frames", "trajectory", "point_cloud", "mesh", "metrics"):
        assert Path(files[key]).is_absolute() and Path(files[key]).is_file(), key
    assert read_video(out / "video.mp4")[0].shape == (4, 3, 64, 80)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["reconstructions"]) == {"point_cloud", "mesh"} and metrics["method"] == "point_cloud"
    cloud = load_point_cloud(out / "scene.ply")  # the fused memory, not the mesh's vertices
    assert cloud["points"].shape[0] == metrics["reconstructions"]["point_cloud"]["quality_metrics"]["num_points"]


def test_reconstruct_takes_a_comma_list_and_single_methods_keep_their_files(tmp_path, image_and_depth):
    image, depth = image_and_depth
    common = ["--image", image, "--depth", depth, "--trajectory", "forward", "--frames", 2, "--size", 64, "--progress", "json"]
    proc = run("generate", *common, "--reconstruct", "mesh,point_cloud", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert {"point_cloud", "mesh"} <= set(json_lines(proc.stdout)[-1]["files"])
    proc = run("generate", *common, "--reconstruct", "mesh", "--out", tmp_path / "b")  # as before: scene.ply = the mesh's vertices
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "scene.ply").is_file() and (tmp_path / "b" / "mesh.glb").is_file()
    proc = run("generate", *common, "--reconstruct", "none", "--out", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert not {"point_cloud", "mesh"} & set(json_lines(proc.stdout)[-1]["files"])


@pytest.mark.parametrize(
    "args, kind, words",
    [
        (["--reconstruct", "point_cloud", "bogus"], "ConfigError", "bogus"),
        (["--reconstruct", "none,mesh"], "ConfigError", "none"),
        (["--steps", "0"], "ConfigError", "--steps"),
        (["--steps", "many"], "ArgumentError", "--steps"),
        (["--frobnicate"], "ArgumentError", "--frobnicate"),
    ],
)
def test_json_mode_reports_bad_arguments_as_error_events(tmp_path, image_and_depth, args, kind, words):
    proc = run("generate", "--image", image_and_depth[0], *args, "--out", tmp_path / "o", "--progress", "json")
    assert proc.returncode == 2, proc.stderr
    event = json_lines(proc.stdout)[-1]
    assert event["event"] == "error" and event["type"] == kind and words in event["message"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
