"""The ComfyUI node pack without ComfyUI: loading as a package, node definitions, every node run on
the CPU through its FUNCTION, the errors users see, cancel, and memories that never change under a node."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from tests.comfy_pack import ROOT, load_pack, runtime
from ws_engine.errors import (
    EmptyMemoryError,
    GenerationCancelled,
    InputFileError,
    ModelLoadError,
    OutputPathError,
    ShapeMismatchError,
    WorldStereoError,
)
from ws_engine.io import save_ply
from ws_engine.scenes import ProceduralRoom
from ws_engine.trajectory_io import load_trajectory, save_trajectory

SIZE = 96
FRAMES = 5
KNOWN_TYPES = {"IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN", "WS_MODEL", "WS_TRAJECTORY", "WS_MEMORY", "VIDEO"}


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture
def nodes(pack, tmp_path):
    rt = runtime()
    for name in ("input", "output", "models"):
        (tmp_path / name).mkdir()
    rt.set_directories(input=tmp_path / "input", output=tmp_path / "output", models=tmp_path / "models")
    rt.request_interrupt(False)
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def scene():
    """The procedural room seen from a node trajectory's first camera: IMAGE (1,H,W,3), its depth (H,W)."""
    from tests.comfy_pack import load_pack as _load

    _load()
    from ws_engine.cameras import CameraTrajectory

    cam = CameraTrajectory.static(1, width=SIZE, height=SIZE)
    rgb, depth = ProceduralRoom().render(cam)
    return rgb.permute(0, 2, 3, 1).contiguous(), depth[0]


def trajectory(nodes, preset="orbit_left", frames=FRAMES, **kw):
    args = dict(preset=preset, frames=frames, distance=0.3, angle=10.0, focus_distance=2.0, fov=60.0, width=SIZE, height=SIZE)
    args.update(kw)
    return nodes["WorldStereoCameraTrajectory"].build(**args)


def disparity_image(depth):
    inv = 1.0 / depth
    return (inv / inv.max())[None, ..., None].expand(1, *depth.shape, 3).contiguous()


def memory(nodes, scene, traj, **kw):
    image, depth = scene
    args = dict(image=image, trajectory=traj, depth_kind="depth", depth_scale=1.0, max_points=200_000, merge_threshold=0.005, index="kd_tree")
    args.update(kw)
    if "depth" not in kw and "depth_mask" not in kw:
        args["depth"] = depth[None, ..., None].expand(1, SIZE, SIZE, 3).contiguous()
    return nodes["WorldStereoGeometricMemory"].build(**args)


def geometric(nodes):
    return nodes["WorldStereoLoadModel"].load("geometric", "cpu", "auto", "sdpa", False)[0]


def generate(nodes, scene, traj, mem=None, seed=0, **kw):
    args = dict(model=geometric(nodes), image=scene[0], trajectory=traj, steps=4, guidance=1.0, seed=seed, use_geometric_memory=True, use_spatial_memory=True, memory=mem)
    args.update(kw)
    return nodes["WorldStereoGenerate"].generate(**args)


# ----------------------------------------------------------------------------------------------
# loading and definitions
# ----------------------------------------------------------------------------------------------
def test_root_imports_as_a_package_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('WS', {str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['WS'] = m; spec.loader.exec_module(m)\n"
        "assert len(m.NODE_CLASS_MAPPINGS) == 9, m.NODE_CLASS_MAPPINGS\n"
        "bad = [n for n in sys.modules if n == 'comfy' or n.startswith('comfy.') or n in ('folder_paths', 'bpy')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_mappings_and_display_names(pack):
    classes, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(classes) == set(names)
    assert {
        "WorldStereoLoadModel", "WorldStereoCameraTrajectory", "WorldStereoGeometricMemory", "WorldStereoGenerate",
        "WorldStereoRenderMemory", "WorldStereoUpdateMemory", "WorldStereoReconstruct", "WorldStereoSaveTrajectory",
        "WorldStereoRenderPanorama",
    } == set(classes)  # fmt: skip
    for key, cls in classes.items():
        assert names[key].startswith("WorldStereo ")
        assert cls.CATEGORY == "WorldStereo"
        assert callable(getattr(cls, cls.FUNCTION))
        assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
        assert set(cls.RETURN_TYPES) <= KNOWN_TYPES
        assert cls.DESCRIPTION


@pytest.mark.parametrize("key", sorted(load_pack().NODE_CLASS_MAPPINGS))
def test_input_types_are_valid(pack, key):
    spec = pack.NODE_CLASS_MAPPINGS[key].INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list):
                assert kind and all(isinstance(c, str) for c in kind), name
                assert options.get("default", kind[0]) in kind, name
                continue
            assert kind in KNOWN_TYPES, (key, name, kind)
            if kind in ("INT", "FLOAT"):
                lo, hi, default = options["min"], options["max"], options["default"]
                assert lo <= default <= hi, (key, name)
                assert isinstance(default, int) if kind == "INT" else isinstance(default, float), (key, name)
            if kind == "BOOLEAN":
                assert isinstance(options["default"], bool)
            if kind == "STRING":
                assert isinstance(options.get("default", ""), str)


def test_seed_widget_takes_64_bit_seeds(nodes, scene):
    traj, _ = trajectory(nodes, frames=2)
    top = nodes["WorldStereoGenerate"].INPUT_TYPES()["required"]["seed"][1]["max"]
    frames, *_ = generate(nodes, scene, traj, seed=top)
    assert frames.shape == (2, SIZE, SIZE, 3)


# ----------------------------------------------------------------------------------------------
# each node through its FUNCTION
# ----------------------------------------------------------------------------------------------
def test_load_model_lists_folders_and_loads_the_geometric_model(nodes, tmp_path, pack):
    from ws_engine import WorldStereo

    WorldStereo.from_pretrained("geometric", device="cpu").save_pretrained(tmp_path / "models" / "my-geometric")
    (tmp_path / "models" / "hub" / "worldstereo-memory").mkdir(parents=True)
    (tmp_path / "models" / "hub" / "worldstereo-memory" / "config.json").write_text(json.dumps({"base_model": "Wan-AI/x", "controlnet_cfg": {}}))
    choices = pack.NODE_CLASS_MAPPINGS["WorldStereoLoadModel"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["geometric", "hub/worldstereo-memory", "my-geometric"]
    model = nodes["WorldStereoLoadModel"].load("my-geometric", "cpu", "float32", "sdpa", False)[0]
    assert model.model.backbone.name == "geometric"
    with pytest.raises(ModelLoadError, match="hub/worldstereo-memory has no model.safetensors"):
        nodes["WorldStereoLoadModel"].load("hub/worldstereo-memory", "cpu", "auto", "sdpa", False)
    with pytest.raises(ModelLoadError, match="not found"):
        nodes["WorldStereoLoadModel"].load("gone", "cpu", "auto", "sdpa", False)


@pytest.mark.parametrize("preset", ["static", "forward", "turn_left", "orbit_right", "zoom_in", "spiral", "eloop"])
def test_trajectory_presets_and_plot(nodes, preset):
    traj, plot = trajectory(nodes, preset=preset, frames=7)
    assert len(traj) == 7 and (traj.width, traj.height) == (SIZE, SIZE)
    assert torch.allclose(traj[0].c2w.reshape(4, 4), torch.eye(4), atol=1e-6)
    assert plot.shape == (1, 512, 1024, 3) and 0 <= float(plot.min()) and float(plot.max()) <= 1
    assert float(plot.std()) > 0.01  # a drawing, not a blank image


def test_trajectory_from_json_text_and_file(nodes, tmp_path):
    source, _ = trajectory(nodes, preset="eloop", frames=9)
    path = save_trajectory(source, tmp_path / "input" / "paths" / "camera.json", "camera_json")
    text = (save_trajectory(source, tmp_path / "t.json", "worldstereo")).read_text()
    from_text, _ = trajectory(nodes, frames=9, trajectory_json=text)
    assert torch.allclose(from_text.c2w, source.c2w, atol=1e-5)
    from_file, _ = trajectory(nodes, frames=9, trajectory_file="paths/camera.json")
    assert torch.allclose(from_file.c2w, source.c2w, atol=1e-4)
    resampled, _ = trajectory(nodes, frames=4, trajectory_file=str(path))  # absolute inside input: fine
    assert len(resampled) == 4
    assert torch.allclose(resampled.c2w[-1], source.c2w[-1], atol=1e-4)
    bigger, _ = trajectory(nodes, frames=9, trajectory_json=text, width=2 * SIZE, height=2 * SIZE)
    assert (bigger.width, bigger.height) == (2 * SIZE, 2 * SIZE)


def test_trajectory_errors_in_plain_words(nodes, tmp_path):
    with pytest.raises(InputFileError, match="not valid JSON.*line 1"):
        trajectory(nodes, trajectory_json="{frames: [")
    with pytest.raises(WorldStereoError):
        trajectory(nodes, trajectory_json='{"frames": 3}')
    with pytest.raises(InputFileError, match="outside ComfyUI's input folder"):
        trajectory(nodes, trajectory_file="../secret.json")
    (tmp_path / "outside.json").write_text("{}")
    with pytest.raises(InputFileError, match="outside ComfyUI's input folder"):
        trajectory(nodes, trajectory_file=str(tmp_path / "outside.json"))
    with pytest.raises(InputFileError, match="not found in ComfyUI's input folder"):
        trajectory(nodes, trajectory_file="nope.json")
    (tmp_path / "input" / "a.json").write_text("{}")
    with pytest.raises(InputFileError, match="not both"):
        trajectory(nodes, trajectory_file="a.json", trajectory_json='{"a": 1}')
    (tmp_path / "input" / "garbage.json").write_text("not json at all")
    with pytest.raises(WorldStereoError):
        trajectory(nodes, trajectory_file="garbage.json")


def test_save_trajectory_writes_both_formats_under_output(nodes, tmp_path):
    traj, _ = trajectory(nodes, preset="spiral", frames=6)
    out = nodes["WorldStereoSaveTrajectory"].save(traj, "WorldStereo/path")
    project, official = (tmp_path / "output" / "WorldStereo" / n for n in ("path_00001_.json", "path_00001_camera.json"))
    assert out["result"] == (str(project), str(official))
    for path in (project, official):
        back = load_trajectory(path, relative_to_first=False)
        assert len(back) == 6
        assert torch.allclose(back.c2w, traj.c2w, atol=1e-4)
    again = nodes["WorldStereoSaveTrajectory"].save(traj, "WorldStereo/path")
    assert again["result"][0].endswith("path_00002_.json")
    with pytest.raises(OutputPathError, match="leaves ComfyUI's output folder"):
        nodes["WorldStereoSaveTrajectory"].save(traj, "../escape")


def test_geometric_memory_from_depth_image_mask_point_cloud_or_nothing(nodes, scene, tmp_path):
    traj, _ = trajectory(nodes)
    image, depth = scene
    mem, render = memory(nodes, scene, traj)
    assert len(mem) > 1000 and render.shape == (1, SIZE, SIZE, 3)
    assert float((render - image).abs().mean()) < 0.02  # the first camera sees the image back
    from_disparity, _ = memory(nodes, scene, traj, depth=disparity_image(depth), depth_kind="disparity", depth_scale=float(depth.min()))
    from_mask, _ = memory(nodes, scene, traj, depth_mask=disparity_image(depth)[..., 0], depth_kind="disparity", depth_scale=float(depth.min()))
    assert torch.allclose(from_disparity.global_memory.points, from_mask.global_memory.points, atol=1e-4)
    save_ply(tmp_path / "input" / "cloud.ply", mem.global_memory.points, mem.global_memory.colors)
    from_cloud, _ = nodes["WorldStereoGeometricMemory"].build(image, traj, "depth", 1.0, 200_000, 0.005, "kd_tree", point_cloud_file="cloud.ply")
    assert len(from_cloud) > 0.9 * len(mem)
    with pytest.warns(UserWarning, match="depth"):
        rough, _ = nodes["WorldStereoGeometricMemory"].build(image, traj, "disparity", 1.0, 200_000, 0.005, "kd_tree")
    assert len(rough) > 1000


def test_memory_errors_in_plain_words(nodes, scene):
    traj, _ = trajectory(nodes)
    image, depth = scene
    with pytest.raises(ShapeMismatchError, match="batch of 2 images.*Image From Batch"):
        memory(nodes, (torch.cat([image, image]), depth), traj)
    small = depth[::2, ::2]
    with pytest.raises(ShapeMismatchError, match="depth map is 48x48 but the image is 96x96"):
        memory(nodes, scene, traj, depth=small[None, ..., None].expand(1, 48, 48, 3))
    with pytest.raises(ShapeMismatchError, match="not both"):
        memory(nodes, scene, traj, depth=disparity_image(depth), depth_mask=disparity_image(depth)[..., 0])
    with pytest.raises(InputFileError, match="outside ComfyUI's input folder"):
        memory(nodes, scene, traj, point_cloud_file="/etc/passwd")


def test_generate_with_memory_and_outputs(nodes, scene):
    traj, _ = trajectory(nodes)
    mem, _ = memory(nodes, scene, traj)
    before = (len(mem), mem.global_memory.points.clone(), len(mem.spatial_memory.views))
    frames, new_mem, renders, holes = generate(nodes, scene, traj, mem)
    assert frames.shape == renders.shape == (FRAMES, SIZE, SIZE, 3) and holes.shape == (FRAMES, SIZE, SIZE)
    assert frames.dtype == torch.float32 and 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert torch.allclose(frames[0], scene[0][0])
    assert float(holes[0].max()) == 0 and 0 < float(holes.mean()) < 0.5
    assert len(new_mem.spatial_memory.views) == FRAMES and len(new_mem) >= len(mem)
    # the input memory is a value: unchanged, so other nodes holding it see what they had
    assert (len(mem), len(mem.spatial_memory.views)) == (before[0], before[2])
    assert torch.equal(mem.global_memory.points, before[1])
    again, *_ = generate(nodes, scene, traj, mem)
    assert torch.equal(again, frames)  # same seed, same frames


def test_generate_without_memory_warns_and_runs(nodes, scene):
    traj, _ = trajectory(nodes, frames=3)
    with pytest.warns(UserWarning, match="depth"):
        frames, mem, _, _ = generate(nodes, scene, traj, None)
    assert frames.shape[0] == 3 and len(mem) > 0


def test_generate_refuses_a_trajectory_that_starts_elsewhere(nodes, scene):
    traj, _ = trajectory(nodes)
    mem, _ = memory(nodes, scene, traj)
    other, _ = trajectory(nodes, fov=40.0)
    with pytest.raises(ShapeMismatchError, match="does not start at the camera the memory was built from"):
        generate(nodes, scene, other, mem)
    with pytest.raises(ShapeMismatchError, match="batch of 3 images"):
        generate(nodes, (scene[0].expand(3, -1, -1, -1), scene[1]), traj, mem)


def test_two_trajectories_share_one_memory(nodes, scene):
    left, _ = trajectory(nodes, preset="orbit_left")
    right, _ = trajectory(nodes, preset="orbit_right")
    mem, _ = memory(nodes, scene, left)
    _, after_left, _, _ = generate(nodes, scene, left, mem)
    _, both, _, _ = generate(nodes, scene, right, after_left)
    assert len(both.spatial_memory.views) == 2 * FRAMES - 1
    assert len(after_left.spatial_memory.views) == FRAMES


def test_cancel_stops_between_frames_and_keeps_the_memory(nodes, scene):
    traj, _ = trajectory(nodes)
    mem, _ = memory(nodes, scene, traj)
    n = len(mem)
    runtime().request_interrupt()
    with pytest.raises(GenerationCancelled):
        generate(nodes, scene, traj, mem)
    assert len(mem) == n and len(mem.spatial_memory.views) == 1
    frames, *_ = generate(nodes, scene, traj, mem)  # the next run is not cancelled
    assert len(frames) == FRAMES


def test_render_and_update_memory_close_the_external_loop(nodes, scene):
    traj, _ = trajectory(nodes, preset="left", distance=0.4)
    mem, _ = memory(nodes, scene, traj)
    renders, holes, depth = nodes["WorldStereoRenderMemory"].render(mem, traj)
    assert renders.shape == depth.shape == (FRAMES, SIZE, SIZE, 3) and holes.shape == (FRAMES, SIZE, SIZE)
    assert float(holes[0].mean()) < 0.05 < float(holes[-1].mean())  # moving left uncovers the unseen
    assert float(depth.max()) == pytest.approx(1.0)
    # "any video model": here the exact scene, with the depth of a depth node (disparity)
    truth, true_depth = ProceduralRoom().render(traj)
    inv = 1.0 / true_depth
    disp = (inv / inv.flatten(1).amax(1)[:, None, None])[..., None].expand(-1, -1, -1, 3)
    (updated,) = nodes["WorldStereoUpdateMemory"].update(mem, truth.permute(0, 2, 3, 1), traj, "disparity", depth=disp)
    assert len(updated) > len(mem) and len(mem.spatial_memory.views) == 1
    _, holes_after, _ = nodes["WorldStereoRenderMemory"].render(updated, traj)
    assert float(holes_after.mean()) < 0.2 * float(holes.mean())
    recovered = updated.frame_depth(traj)
    assert float(((recovered - true_depth).abs() / true_depth).median()) < 0.02
    (no_depth,) = nodes["WorldStereoUpdateMemory"].update(mem, truth.permute(0, 2, 3, 1), traj, "disparity")
    assert len(no_depth) > len(mem)
    with pytest.raises(ShapeMismatchError, match="4 frames but the trajectory has 5 cameras"):
        nodes["WorldStereoUpdateMemory"].update(mem, truth.permute(0, 2, 3, 1)[:4], traj, "disparity")
    with pytest.raises(ShapeMismatchError, match="2 maps but 5 depth maps"):
        nodes["WorldStereoUpdateMemory"].update(mem, truth.permute(0, 2, 3, 1), traj, "disparity", depth=disp[:2])


@pytest.mark.parametrize("method,suffix", [("point_cloud", ".ply"), ("mesh", ".glb")])
def test_reconstruct_saves_a_readable_file_and_metrics(nodes, scene, tmp_path, method, suffix):
    traj, _ = trajectory(nodes)
    mem, _ = memory(nodes, scene, traj)
    frames, mem2, _, _ = generate(nodes, scene, traj, mem)
    out = nodes["WorldStereoReconstruct"].reconstruct(mem2, frames, traj, method, "WorldStereo/scene")
    path, metrics, model_file = out["result"]
    assert path == str(tmp_path / "output" / "WorldStereo" / f"scene_00001_{suffix}")
    assert model_file == "WorldStereo/scene_00001_.glb"  # what the core Preview 3D node loads from the output folder
    assert out["ui"]["3d"] == [{"filename": "scene_00001_.glb", "subfolder": "WorldStereo", "type": "output"}]
    view = trimesh.load(tmp_path / "output" / model_file)
    view_points = np.concatenate([np.asarray(g.vertices) for g in view.geometry.values()])
    from ws_engine.io import load_point_cloud

    back = load_point_cloud(tmp_path / "output" / model_file)["points"]
    assert np.allclose(view_points * [1, -1, -1], back.numpy(), atol=1e-5)  # the GLB is y-up (glTF)
    loaded = trimesh.load(path, force="mesh") if method == "mesh" else trimesh.load(path)
    count = len(loaded.vertices)
    assert count > 500
    figures = json.loads(metrics)
    assert figures["num_points"] == count and math.isfinite(figures["mean_reprojection_error"]) and 0 < figures["coverage"] <= 1
    colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert colors.std() > 5  # coloured, not a flat default


def test_reconstruct_errors(nodes, scene):
    traj, _ = trajectory(nodes)
    mem, _ = memory(nodes, scene, traj)
    frames, mem2, _, _ = generate(nodes, scene, traj, mem)
    with pytest.raises(ShapeMismatchError, match="4 frames but the trajectory has 5 cameras"):
        nodes["WorldStereoReconstruct"].reconstruct(mem2, frames[:4], traj, "point_cloud", "x")
    with pytest.raises(OutputPathError):
        nodes["WorldStereoReconstruct"].reconstruct(mem2, frames, traj, "point_cloud", "../../x")
    away, _ = trajectory(nodes, preset="turn_left", angle=180.0)
    with pytest.raises(EmptyMemoryError, match="sees nothing"):
        nodes["WorldStereoReconstruct"].reconstruct(mem2, frames, away, "point_cloud", "x")


def test_released_inputs_and_outputs_never_change(pack):
    """Saved workflows keep loading: released inputs/outputs keep their names, types and order. A
    saved workflow's widgets_values follow required then optional widgets, so a new input may only
    be appended to "optional" (a new required one would shift the optional widgets' values)."""
    released = json.loads((ROOT / "tests" / "data" / "comfy_nodes_released.json").read_text())
    released.pop("_about")
    for name, before in released.items():
        assert name in pack.NODE_CLASS_MAPPINGS, f"released node {name} was removed or renamed"
        cls = pack.NODE_CLASS_MAPPINGS[name]
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            now = [[k, v[0] if isinstance(v[0], str) else "COMBO"] for k, v in spec.get(section, {}).items()]
            assert now[: len(before["inputs"][section])] == before["inputs"][section], (name, section)
            if section == "required":
                assert len(now) == len(before["inputs"][section]), f"{name}: add new inputs at the end of 'optional', not 'required'"
        outputs = [list(p) for p in zip(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES), cls.RETURN_TYPES)]
        assert outputs[: len(before["outputs"])] == before["outputs"], name
