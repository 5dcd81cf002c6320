"""The example workflows: well-formed UI JSON that matches the nodes, converted to the API format
and run in dependency order, with outputs read back; and the UI -> API conversion rules."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import trimesh

from tests import comfy_pack
from tests.comfy_pack import WORKFLOWS

NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
FRONT_END_NODES = {"Note", "MarkdownNote"}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def test_there_are_three_workflows_with_thumbnails():
    assert NAMES == [
        "worldstereo_external_video_model_loop", "worldstereo_image_to_video_and_3d", "worldstereo_two_trajectories_shared_memory",
    ]  # fmt: skip
    for name in NAMES:
        thumb = WORKFLOWS / f"{name}.jpg"
        assert thumb.is_file() and 5_000 < thumb.stat().st_size < 200_000
        from PIL import Image

        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 256
            assert np.asarray(im).std() > 10  # a picture, not a blank


@pytest.mark.parametrize("name", NAMES)
def test_workflow_files_are_what_the_builder_writes(name):
    """The committed JSON equals the builder's output from the current node definitions (no drift)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_example_workflows", comfy_pack.ROOT / "scripts" / "build_example_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.WORKFLOWS[name]() == load(name)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_well_formed_ui_json(name):
    wf = load(name)
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    known = set(comfy_pack.all_nodes()) | FRONT_END_NODES
    assert all(n["type"] in known for n in nodes.values())
    assert any(n["type"] in FRONT_END_NODES for n in nodes.values()), "each workflow explains itself in a note"
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == max(link[0] for link in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_converts_to_a_complete_api_prompt(name):
    prompt = comfy_pack.ui_to_api(load(name))
    defs = comfy_pack.definitions()
    for node_id, node in prompt.items():
        spec = defs[node["class_type"]]["input"]
        missing = set(spec.get("required", {})) - set(node["inputs"])
        assert not missing, (node_id, node["class_type"], missing)
        for key, value in node["inputs"].items():
            entry = {**spec.get("required", {}), **spec.get("optional", {})}[key]
            if isinstance(value, list):
                assert value[0] in prompt  # a link to a node that runs
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list) and kind:
                assert value in kind, (key, value)
            if kind in ("INT", "FLOAT"):
                assert options.get("min", -np.inf) <= value <= options.get("max", np.inf), (key, value)


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_and_its_outputs_are_sane(name, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_example_workflows", comfy_pack.ROOT / "scripts" / "build_example_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    (tmp_path / "input").mkdir()
    builder.example_image(tmp_path / "input")
    comfy_pack.runtime().set_directories(input=tmp_path / "input", output=tmp_path / "output")
    prompt = comfy_pack.ui_to_api(load(name))
    results = comfy_pack.run_prompt(prompt)
    trajectories = {n["inputs"]["frames"] for n in prompt.values() if n["class_type"] == "WorldStereoCameraTrajectory"}
    videos = sorted((tmp_path / "output").rglob("*.mp4"))
    assert len(videos) == sum(n["class_type"] == "SaveVideo" for n in prompt.values()) >= 1
    for video in videos:
        frames = _frames(video)
        assert len(frames) in trajectories
        assert frames[0].shape[:2] == (384, 384)
        assert 20 < float(frames[-1].mean()) < 235 and float(frames[-1].std()) > 10
    (rec_id,) = [i for i, n in prompt.items() if n["class_type"] == "WorldStereoReconstruct"]
    path, metrics, model_file = results[rec_id]["result"]
    method = prompt[rec_id]["inputs"]["method"]
    loaded = trimesh.load(path, force="mesh") if method == "mesh" else trimesh.load(path)
    assert len(loaded.vertices) > 5_000 and json.loads(metrics)["num_points"] == len(loaded.vertices)
    colors = np.asarray(loaded.visual.vertex_colors if method == "mesh" else loaded.colors)[:, :3]
    assert colors.std() > 5
    assert (tmp_path / "output" / model_file).suffix == ".glb"
    (view_id,) = [i for i, n in prompt.items() if n["class_type"] == "Preview3D"]
    assert results[view_id]["ui"]["result"][0] == model_file


# ----------------------------------------------------------------------------------------------
# conversion rules
# ----------------------------------------------------------------------------------------------
DEFS = {
    "Sampler": {"input": {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 20}),
                                       "name": (["a", "b"],)}, "optional": {"extra": ("STRING", {"default": ""})}}, "output": ["IMAGE"]},
    "Source": {"input": {"required": {"value": ("FLOAT", {"default": 1.0})}}, "output": ["MODEL"]},
    "Filter": {"input": {"required": {"model": ("MODEL",)}}, "output": ["MODEL"]},
    "Load": {"input": {"required": {"image": (["x.png"], {"image_upload": True}), "strength": ("FLOAT", {"default": 1.0})}}, "output": ["IMAGE"]},
}  # fmt: skip


def _node(node_id, kind, widgets=(), inputs=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "widgets_values": list(widgets), "inputs": list(inputs), "outputs": []}


def test_widget_values_skip_seed_control_and_upload_button():
    wf = {"nodes": [_node(1, "Source", [2.5]), _node(2, "Sampler", [7, "randomize", 30, "b", "hi"], [{"name": "model", "type": "MODEL", "link": 1}]),
                    _node(3, "Load", ["x.png", "image", 0.5])],
          "links": [[1, 1, 0, 2, 0, "MODEL"]]}  # fmt: skip
    api = comfy_pack.workflow_format().ui_to_api(wf, DEFS)
    assert api["2"]["inputs"] == {"seed": 7, "steps": 30, "name": "b", "extra": "hi", "model": ["1", 0]}
    assert api["3"]["inputs"] == {"image": "x.png", "strength": 0.5}
    assert api["1"]["inputs"] == {"value": 2.5}


def test_bypassed_muted_reroute_primitive_and_notes():
    fmt = comfy_pack.workflow_format()
    wf = {"nodes": [_node(1, "Source", [1.0]), _node(2, "Filter", [], [{"name": "model", "type": "MODEL", "link": 1}], mode=4),
                    _node(3, "Reroute", [], [{"name": "", "type": "*", "link": 2}]),
                    _node(4, "Sampler", [0, "fixed", 5, "a"], [{"name": "model", "type": "MODEL", "link": 3}, {"name": "steps", "type": "INT", "link": 4, "widget": {"name": "steps"}}]),
                    _node(5, "PrimitiveNode", [12]), _node(6, "Note", ["hello"]), _node(7, "Source", [3.0], mode=2)],
          "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"], [4, 5, 0, 4, 2, "INT"]]}  # fmt: skip
    api = fmt.ui_to_api(wf, DEFS)
    assert set(api) == {"1", "4"}  # bypassed, reroute, primitive, note and muted nodes are gone
    assert api["4"]["inputs"]["model"] == ["1", 0]  # through the reroute and the bypassed filter
    assert api["4"]["inputs"]["steps"] == 12  # the primitive's value
    with pytest.raises(fmt.WorkflowError, match="install the pack"):
        fmt.ui_to_api({"nodes": [_node(1, "Unknown")], "links": []}, DEFS)
    with pytest.raises(fmt.WorkflowError, match="broken"):
        fmt.ui_to_api({"nodes": [_node(1, "Filter", [], [{"name": "model", "type": "MODEL", "link": 9}])], "links": []}, DEFS)
