"""Generation out of process, for real: the CLI backend (the engine's interpreter, WORLDSTEREO_PYTHON)
and the ComfyUI backend (a real server when COMFYUI_PATH and COMFYUI_PYTHON are set). Runs in
Blender's Python; the engine only ever runs as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from blender_addon import comfyui_backend, depth_points, jobs, ply
from blender_addon.errors import AddonError

ROOT = Path(__file__).resolve().parents[2]

ROOM = """
import sys, json
from pathlib import Path
import numpy as np
from PIL import Image
from ws_engine.scenes import ProceduralRoom
from ws_engine.trajectory_io import save_trajectory

out, frames, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
scene = ProceduralRoom()
traj = scene.trajectory(num_frames=frames, width=size, height=size)
rgb, depth = scene.render(traj)
Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(out / "image.png")
np.save(out / "depth.npy", depth[0].numpy())
save_trajectory(traj, out / "trajectory.json")
print(json.dumps({"frames": len(traj)}))
"""


@pytest.fixture(scope="module")
def room(tmp_path_factory, run_engine_json):
    """The procedural room at 64x64: image.png, depth.npy (first camera) and a 4-frame trajectory.json."""
    folder = tmp_path_factory.mktemp("room")
    assert run_engine_json(ROOM, folder, 4, 64) == {"frames": 4}
    return folder


@pytest.fixture
def placeholders(tmp_path):
    """Input files that exist (for checks that come before any file is read); no engine needed."""
    folder = tmp_path / "placeholders"
    folder.mkdir()
    for name in ("image.png", "depth.npy", "trajectory.json"):
        (folder / name).write_bytes(b"")
    return folder


def inputs(room: Path, out: Path, **kw) -> jobs.JobInputs:
    kw = {"depth": str(room / "depth.npy"), "size": (64, 64), "reconstruct": ["point_cloud", "mesh"], **kw}
    return jobs.JobInputs(image=str(room / "image.png"), trajectory=str(room / "trajectory.json"), out_dir=str(out), **kw)


def run_until(job, state_is=lambda s: s != "running", timeout=120.0, event=None):
    """Poll like the modal timer does; returns the events (stops early at the first event matching ``event``)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = job.poll()
        seen += new
        if event is not None and any(event(e) for e in new):
            return seen
        if state_is(job.state):
            return seen
        time.sleep(0.05)
    pytest.fail(f"the job did not finish within {timeout} s (state {job.state}, {job.message})")


# ----------------------------------------------------------------------------------------------
# CLI backend
# ----------------------------------------------------------------------------------------------
def test_cli_job_generates_and_reports_every_file(tmp_path, room, engine_python):
    jobs.check_interpreter(engine_python)
    job = jobs.CliJob(engine_python, inputs(room, tmp_path / "out"), device="cpu").start()
    assert job.state == "running"
    progress = []
    deadline = time.monotonic() + 120
    while job.state == "running" and time.monotonic() < deadline:
        if job.poll():
            progress.append(job.progress)
        time.sleep(0.05)
    assert job.state == "done", job.message
    assert progress == sorted(progress) and job.progress == 1.0
    files = job.result_files
    assert Path(files["point_cloud"]) == tmp_path / "out" / "scene.ply" and Path(files["mesh"]) == tmp_path / "out" / "mesh.glb"
    for key in ("video", "trajectory", "point_cloud", "mesh", "metrics"):
        assert Path(files[key]).is_file(), key
    cloud = ply.read_ply(files["point_cloud"])
    assert len(cloud["points"]) > 100 and cloud["colors"] is not None and cloud["colors"].std() > 0.01
    assert Path(files["mesh"]).read_bytes()[:4] == b"glTF"


def test_cancel_interrupts_the_process_and_leaves_no_result(tmp_path, room, engine_python):
    out = tmp_path / "out"
    job = jobs.CliJob(engine_python, inputs(room, out, frames=200), device="cpu").start()
    run_until(job, event=lambda e: e.get("event") == "progress")
    assert job.state == "running"
    started = time.monotonic()
    job.cancel()
    assert job.state == "cancelled"
    assert job.wait(timeout=10), "the engine process is still there 10 s after cancel"
    assert time.monotonic() - started < 10
    assert job.process.returncode == 130  # SIGINT: the CLI stopped cleanly, nothing half-written
    assert not [p.name for p in out.iterdir()] if out.exists() else True
    assert job.result_files == {}


def test_a_process_that_dies_fails_with_its_last_words(tmp_path, room, engine_python):
    job = jobs.CliJob(engine_python, inputs(room, tmp_path / "out", frames=200), device="cpu").start()
    run_until(job, event=lambda e: e.get("event") == "progress")
    os.kill(job.process.pid, signal.SIGKILL)
    run_until(job, timeout=20)
    assert job.state == "failed"
    assert "died" in job.message and "signal 9" in job.message


def test_a_missing_result_file_fails_the_job(tmp_path, room, engine_python):
    job = jobs.CliJob(engine_python, inputs(room, tmp_path / "out", reconstruct=["point_cloud"]), device="cpu").start()
    job.process.wait(120)  # finished, not polled yet: the result event waits in the queue
    (tmp_path / "out" / "scene.ply").unlink()
    run_until(job, timeout=20)
    assert job.state == "failed"
    assert "scene.ply is missing" in job.message and job.result_files == {}


def test_bad_input_is_reported_by_the_engine(tmp_path, room, engine_python):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = jobs.JobInputs(image=str(broken), trajectory=str(room / "trajectory.json"), out_dir=str(tmp_path / "out"))
    job = jobs.CliJob(engine_python, bad, device="cpu").start()
    run_until(job, timeout=60)
    assert job.state == "failed" and job.message.startswith("The engine stopped:") and "broken.png" in job.message
    assert job.returncode == 2


def test_missing_inputs_and_bad_settings_raise_before_anything_starts(tmp_path, placeholders):
    with pytest.raises(AddonError, match="does not exist"):
        jobs.CliJob(sys.executable, inputs(placeholders, tmp_path / "out", depth=str(tmp_path / "nope.npy"))).start()
    with pytest.raises(AddonError, match="Unknown reconstruction method 'voxels'"):
        jobs.CliJob(sys.executable, inputs(placeholders, tmp_path / "out", reconstruct=["voxels"])).start()
    with pytest.raises(AddonError, match="at least 2 frames"):
        comfyui_backend.ComfyJob("127.0.0.1:1", inputs(placeholders, tmp_path / "out", frames=1)).start()
    assert not (tmp_path / "out").exists()


def test_interpreters_without_the_engine_are_refused(tmp_path):
    with pytest.raises(AddonError, match="does not exist"):
        jobs.check_interpreter(str(tmp_path / "no" / "python"))
    with pytest.raises(AddonError, match="is a folder"):
        jobs.check_interpreter(str(tmp_path))
    plain = tmp_path / "python"
    plain.write_text("not a program")
    with pytest.raises(AddonError, match="not executable"):
        jobs.check_interpreter(str(plain))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    bare = tmp_path / "venv" / "bin" / "python"
    with pytest.raises(AddonError, match="lacks the WorldStereo engine.*pip install"):
        jobs.check_interpreter(str(bare))


def test_write_inputs_puts_the_trajectory_and_depth_in_a_job_folder(tmp_path):
    traj, depth = jobs.write_inputs({"format": "worldstereo-trajectory", "frames": []}, np.ones((4, 6)), folder=tmp_path / "job")
    assert json.loads(Path(traj).read_text())["format"] == "worldstereo-trajectory"
    assert np.load(depth).shape == (4, 6) and np.load(depth).dtype == np.float32


# ----------------------------------------------------------------------------------------------
# ComfyUI backend: what needs no server
# ----------------------------------------------------------------------------------------------
def test_a_dead_url_fails_fast_with_the_timeout(tmp_path, placeholders):
    room = placeholders
    with socket.socket() as s:  # a port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(AddonError, match=r"ComfyUI at http://127.0.0.1:\d+ does not answer \(timeout 2 s.*start it or fix the URL"):
        comfyui_backend.ComfyJob(f"127.0.0.1:{port}", inputs(room, tmp_path / "out"), timeout=2).start()
    silent = socket.socket()  # accepts connections and never answers: the timeout has to fire
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        with pytest.raises(AddonError, match=r"does not answer \(timeout 1 s"):
            comfyui_backend.ComfyJob(f"http://127.0.0.1:{silent.getsockname()[1]}/", inputs(room, tmp_path / "out"), timeout=1).start()
    finally:
        silent.close()
    assert time.monotonic() - started < 6


def test_online_access_off_refuses_remote_servers_only(tmp_path, placeholders):
    import bpy

    room = placeholders
    assert not bpy.app.online_access  # bpy as a module starts with online access off
    with pytest.raises(AddonError, match="Allow Online Access"):
        comfyui_backend.ComfyJob("http://192.0.2.7:8188", inputs(room, tmp_path / "out"), timeout=1).start()
    for url in ("http://127.0.0.1:8188", "localhost:8188", "http://[::1]:8188"):
        comfyui_backend.check_online_access(comfyui_backend.normalise_url(url))


def test_depth_prior_lifts_to_the_engines_world_points(tmp_path, room, run_engine_json):
    trajectory = json.loads((room / "trajectory.json").read_text())
    depth = np.load(room / "depth.npy")
    K, c2w = depth_points.first_camera(trajectory, depth.shape)
    colors = depth_points.read_image_rgb(room / "image.png", depth.shape)
    points, rgb = depth_points.depth_to_points(depth, K, c2w, colors)
    ply.write_ply(tmp_path / "prior.ply", points, rgb)
    engine = run_engine_json("""
import sys, json, numpy as np, torch
from PIL import Image
from ws_engine.geometry import unproject
from ws_engine.io import load_point_cloud
from ws_engine.trajectory_io import load_trajectory
traj = load_trajectory(sys.argv[1]); depth = torch.from_numpy(np.load(sys.argv[2]))
truth = unproject(depth, traj[0])[depth > 0]
image = np.array(Image.open(sys.argv[4]))[depth.numpy() > 0]
cloud = load_point_cloud(sys.argv[3])
print(json.dumps({"dist": float((cloud["points"] - truth).norm(dim=-1).max()),
                  "color": float(np.abs(cloud["colors"].numpy() * 255 - image).max())}))
""", room / "trajectory.json", room / "depth.npy", tmp_path / "prior.ply", room / "image.png")  # fmt: skip
    assert engine["dist"] < 1e-4 and engine["color"] < 1.0


def test_the_stdlib_png_reader_agrees_with_blender(room):
    import bpy  # noqa: F401 - read_image_rgb prefers bpy; the fallback must give the same pixels

    via_bpy = depth_points.read_image_rgb(room / "image.png", (64, 64))
    assert np.array_equal(depth_points._png_rgb(room / "image.png"), via_bpy)


# ----------------------------------------------------------------------------------------------
# ComfyUI backend: a real server (COMFYUI_PATH, COMFYUI_PYTHON)
# ----------------------------------------------------------------------------------------------
COMFYUI, COMFYUI_PYTHON = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
needs_comfyui = pytest.mark.skipif(not (COMFYUI and COMFYUI_PYTHON), reason="set COMFYUI_PATH and COMFYUI_PYTHON to run the ComfyUI tests")


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """A ComfyUI on the CPU with only this pack (custom_nodes/ComfyUI-WorldStereo -> the repository); yields its URL."""
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-WorldStereo").symlink_to(ROOT, target_is_directory=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(base / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
                             "--disable-all-custom-nodes", "--whitelist-custom-nodes", "ComfyUI-WorldStereo"],
                            cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ComfyUI did not start:\n{(base / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/object_info/WorldStereoGenerate", timeout=5) as r:
                    if json.loads(r.read()):
                        break
            except OSError:
                time.sleep(0.5)
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@needs_comfyui
def test_comfyui_job_runs_the_workflow_with_the_scene_inputs(tmp_path, room, comfyui):
    url, base = comfyui
    job = comfyui_backend.ComfyJob(url, inputs(room, tmp_path / "out"), timeout=10).start()
    events = run_until(job, timeout=300)
    assert job.state == "done", job.message
    assert any(e.get("fraction", 0) > 0.1 for e in events if e["event"] == "progress")  # progress came over the websocket
    files = job.result_files
    assert {Path(files[k]).name for k in ("video", "point_cloud", "mesh", "trajectory")} == {"video.mp4", "scene.ply", "mesh.glb", "trajectory.json"}
    assert Path(files["mesh"]).read_bytes()[:4] == b"glTF"
    cloud = ply.read_ply(files["point_cloud"])
    assert len(cloud["points"]) > 100
    # the inputs reached the nodes: the uploaded depth prior, the scene's trajectory, the size
    uploaded = sorted(p.name for p in (base / "input").iterdir())
    assert any(n.endswith("_depth.ply") for n in uploaded) and any(n.endswith(".png") for n in uploaded)
    with urllib.request.urlopen(f"{url}/history/{job.prompt_id}", timeout=10) as r:
        prompt = json.loads(r.read())[job.prompt_id]["prompt"][2]
    (traj,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "WorldStereoCameraTrajectory"]
    assert json.loads(traj["trajectory_json"]) == json.loads((room / "trajectory.json").read_text())
    assert (traj["frames"], traj["width"], traj["height"]) == (4, 64, 64)
    assert sorted(n["inputs"]["method"] for n in prompt.values() if n["class_type"] == "WorldStereoReconstruct") == ["mesh", "point_cloud"]


@needs_comfyui
def test_comfyui_cancel_interrupts_the_prompt(tmp_path, room, comfyui):
    url, _ = comfyui
    job = comfyui_backend.ComfyJob(url, inputs(room, tmp_path / "out", frames=400, size=(256, 256)), timeout=10).start()
    run_until(job, event=lambda e: "generating" in e.get("message", ""), timeout=120)
    job.cancel()
    assert job.state == "cancelled"
    deadline = time.time() + 60
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/history/{job.prompt_id}", timeout=10) as r:
            entry = json.loads(r.read()).get(job.prompt_id)
        if entry is not None:
            assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]
            break
        time.sleep(0.5)
    else:
        pytest.fail("the prompt was still running 60 s after cancel")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
