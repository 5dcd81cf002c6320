"""A real ComfyUI server with only this pack: every example workflow through POST /prompt.

Runs when COMFYUI_PATH points at a ComfyUI checkout (skipped otherwise). COMFYUI_PYTHON names the
interpreter of ComfyUI's environment (default: this one); this pack's dependencies must be
installed there, as a user would. The server runs on the CPU with a temporary base directory whose
custom_nodes/ holds a link to this repository.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import av
import pytest
import trimesh

from tests import comfy_pack

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the real-server tests")
PACK_DIR = "ComfyUI-WorldStereo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.log = open(base / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(base),
             "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR],
            cwd=COMFYUI, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{(base / 'server.log').read_text()[-3000:]}")
            try:
                self.get("/object_info/WorldStereoGenerate")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError("ComfyUI did not answer within 180 s")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:  # an entry appears when the prompt has finished (or failed)
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR).symlink_to(comfy_pack.ROOT, target_is_directory=True)
    (base / "input").mkdir()
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_example_workflows", comfy_pack.ROOT / "scripts" / "build_example_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.example_image(base / "input")
    srv = Server(base)
    yield srv
    srv.stop()


def test_server_lists_every_node_with_our_inputs(server):
    info = server.get("/object_info")
    for name, cls in comfy_pack.load_pack().NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} missing; see {server.base / 'server.log'}"
        assert info[name]["category"] == "WorldStereo"
        ours = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(info[name]["input"].get(section, {})) == list(ours.get(section, {}))
        assert info[name]["output"] == list(cls.RETURN_TYPES)


def _frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("name", sorted(p.stem for p in comfy_pack.WORKFLOWS.glob("*.json")))
def test_example_workflow_runs_in_comfyui(server, name):
    workflow = json.loads((comfy_pack.WORKFLOWS / f"{name}.json").read_text())
    fmt = comfy_pack.workflow_format()
    prompt = fmt.ui_to_api(workflow, server.get("/object_info"))
    before = set((server.base / "output").rglob("*")) if (server.base / "output").exists() else set()
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    new = sorted(set((server.base / "output").rglob("*")) - before)
    videos = [p for p in new if p.suffix == ".mp4"]
    frames = {n["inputs"]["frames"] for n in prompt.values() if n["class_type"] == "WorldStereoCameraTrajectory"}
    assert videos and all(_frames(v) in frames for v in videos)
    (rec_id,) = [i for i, n in prompt.items() if n["class_type"] == "WorldStereoReconstruct"]
    outputs = entry["outputs"][rec_id]
    model = outputs["3d"][0]
    glb = server.base / "output" / model["subfolder"] / model["filename"]
    assert glb in new and glb.suffix == ".glb"
    scene = trimesh.load(glb)
    assert sum(len(g.vertices) for g in scene.geometry.values()) > 5_000


def test_errors_show_on_the_node_in_plain_words(server):
    prompt = {
        "1": {"class_type": "WorldStereoCameraTrajectory", "inputs": {
            "preset": "forward", "frames": 4, "distance": 0.3, "angle": 10.0, "focus_distance": 2.0, "fov": 60.0, "width": 64, "height": 64,
            "trajectory_file": "../../etc/passwd"}},
        "2": {"class_type": "WorldStereoSaveTrajectory", "inputs": {"trajectory": ["1", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "WorldStereoCameraTrajectory"
    assert "outside ComfyUI's input folder" in error["exception_message"]
    assert error["exception_type"].endswith("InputFileError")


def test_cancel_interrupts_a_running_generation(server):
    prompt = comfy_pack.workflow_format().ui_to_api(
        json.loads((comfy_pack.WORKFLOWS / "worldstereo_image_to_video_and_3d.json").read_text()), server.get("/object_info")
    )
    for node in prompt.values():
        if node["class_type"] == "WorldStereoCameraTrajectory":
            node["inputs"].update(frames=400, width=512, height=512)
    status, answer = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200, answer
    prompt_id = answer["prompt_id"]
    time.sleep(8)
    server.post("/interrupt", {})
    started = time.time()
    while time.time() - started < 60:
        history = server.get(f"/history/{prompt_id}")
        if prompt_id in history:
            messages = [m[0] for m in history[prompt_id]["status"]["messages"]]
            assert "execution_interrupted" in messages, messages
            return
        time.sleep(0.5)
    pytest.fail("the interrupted prompt did not end within 60 s of POST /interrupt")


def test_models_folder_is_registered(server):
    folder = server.base / "models" / "worldstereo" / "my-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"vdm_config": {"backbone": "geometric"}}))
    info = server.get("/object_info/WorldStereoLoadModel")
    assert "my-model" in info["WorldStereoLoadModel"]["input"]["required"]["model"][0]
