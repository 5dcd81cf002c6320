"""The neural WorldStereo 2.0 backbone on tiny random checkpoints in the official layout (no downloads)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from worldstereo_fixtures import VARIANTS, make_tiny_repo, save_tiny_variant

from ws_engine import WorldStereo
from ws_engine.backbones.worldstereo import checkpoint, conditioning, training
from ws_engine.backbones.worldstereo.dmd import FlowDMDScheduler, dmd_timesteps
from ws_engine.backbones.worldstereo.neural import oom_guard
from ws_engine.cameras import CameraTrajectory
from ws_engine.errors import (
    ConfigError,
    MissingDependencyError,
    ModelLoadError,
    OutOfMemoryError,
    ShapeMismatchError,
)
from ws_engine.optimization import (
    apply_cpu_offload,
    enable_xformers_memory_efficient_attention,
    resolve_dtype,
)
from ws_engine.pipeline import generate_video

H, W = 32, 48


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_tiny_repo(tmp_path_factory.mktemp("tiny_worldstereo"))


@pytest.fixture(scope="module")
def models(repo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {v: WorldStereo.from_pretrained(repo, v, device="cpu") for v in VARIANTS}


def orbit(frames: int = 21) -> CameraTrajectory:
    return CameraTrajectory.orbit_left(angle=40.0, num_frames=frames, width=W, height=H, scene_depth=3.0)


def image() -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    return torch.stack([x, y, (x * y).sqrt()])


def there_and_back() -> CameraTrajectory:
    """41 frames: the orbit out (0..20) and back (19..0), so the second pass revisits the first's views."""
    return CameraTrajectory(orbit(21).cameras[torch.tensor([*range(21), *range(19, -1, -1)])])


def run(model, frames: int = 21, seed: int = 0, steps: int = 2, trajectory=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj = trajectory or orbit(frames)
        return generate_video(model, image(), traj, num_inference_steps=steps, seed=seed, depth=torch.full((H, W), 3.0), **kw)


def count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *a: calls.append(1))


# ---------------------------------------------------------------------------------------------- loading
def test_each_variant_loads_its_class_sampler_and_weights(repo, models):
    from safetensors.torch import load_file

    base = checkpoint.VARIANTS
    for v, model in models.items():
        parts = model.backbone.components
        assert type(parts.transformer).__name__ == base[v][0] and parts.sampler == base[v][1]
        assert model.transformer is parts.transformer
        saved = load_file(str(repo / v / "model.safetensors"))
        state = parts.transformer.state_dict()
        assert all(torch.equal(t, state[k]) for k, t in saved.items())  # the checkpoint's control branch
        base_tf = load_file(str(repo / "base" / "transformer" / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(t, state[k]) for k, t in base_tf.items())  # the backbone from base_model
        assert not any(p.requires_grad for n, p in parts.transformer.named_parameters() if not n.startswith(("controlnet.", "camera_embedding.")))
    assert type(models["worldstereo-memory-dmd"].backbone.components.scheduler).__name__ == "FlowDMDScheduler"
    assert type(models["worldstereo-camera"].backbone.components.scheduler).__name__ == "UniPCMultistepScheduler"


def test_load_report_is_one_line_and_half_precision_keeps_the_control_branch_fp32(repo, caplog):
    with caplog.at_level(logging.INFO, logger="ws_engine"):
        parts = checkpoint.load_components(repo / "worldstereo-memory", torch_dtype=torch.bfloat16)
    lines = [r.getMessage() for r in caplog.records if "tensors loaded" in r.getMessage()]
    assert len(lines) == 1 and "worldstereo-memory: 65 tensors loaded" in lines[0] and "backbone tensors kept from base_model" in lines[0]
    assert parts.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert parts.transformer.controlnet.proj_out[0].weight.dtype == torch.float32
    assert parts.image_processor.do_rescale is False  # the official quirk


def test_bad_folders_and_configs_raise_typed_errors(repo, tmp_path):
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub repo id"):
        checkpoint.load_components(tmp_path / "nope" / "deeper" / "still")
    empty = tmp_path / "worldstereo-camera"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        checkpoint.load_components(empty)
    (empty / "config.json").write_text(json.dumps({"base_model": "x", "controlnet_cfg": {}}))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        checkpoint.load_components(empty)
    (empty / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelLoadError, match="Pickle checkpoints are refused"):
        checkpoint.load_components(empty)
    (empty / "model.safetensors").write_bytes((repo / "worldstereo-camera" / "model.safetensors").read_bytes())
    (empty / "config.json").write_text(json.dumps({"controlnet_cfg": {}}))
    with pytest.raises(ModelLoadError, match="lacks base_model"):
        checkpoint.load_components(empty)
    (empty / "config.json").write_text(json.dumps({"base_model": str(repo / "base")}))
    with pytest.raises(ModelLoadError, match="lacks controlnet_cfg"):
        checkpoint.load_components(empty)
    odd = save_tiny_variant(tmp_path, "worldstereo-memory", repo / "base", extra_config={"nframe": 17})
    with pytest.raises(ModelLoadError, match="take 21 keyframes"):
        checkpoint.load_components(odd)
    renamed = tmp_path / "my-model"
    renamed.mkdir()
    for f in ("config.json", "model.safetensors"):
        (renamed / f).write_bytes((repo / "worldstereo-camera" / f).read_bytes())
    with pytest.raises(ModelLoadError, match="Unknown WorldStereo variant 'my-model'"):
        checkpoint.load_components(renamed)


def test_a_checkpoint_for_another_configuration_names_the_tensors(repo, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_tiny_variant(tmp_path, "worldstereo-camera", repo / "base")
    state = load_file(str(folder / "model.safetensors"))
    state["controlnet.proj_out.0.weight"] = torch.zeros(5120, 24)  # the 14B model's width
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"controlnet.proj_out.0.weight: checkpoint \(5120, 24\) vs model \(32, 24\).*another configuration"):
        checkpoint.load_components(folder)


def test_hub_ids_load_from_the_huggingface_cache_and_say_when_offline(repo, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="Could not get config.json of hanshanxue/WorldStereo/worldstereo-memory .local_files_only"):
        checkpoint.resolve_variant_folder("hanshanxue/WorldStereo", "worldstereo-memory", local_files_only=True)
    commit = "0123456789abcdef0123456789abcdef01234567"  # the hub cache layout: refs/main -> snapshots/<commit>/<subfolder>/
    cached = tmp_path / "cache" / "models--hanshanxue--WorldStereo"
    shutil.copytree(repo / "worldstereo-camera", cached / "snapshots" / commit / "worldstereo-camera")
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(commit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = WorldStereo.from_pretrained("hanshanxue/WorldStereo", "worldstereo-camera", local_files_only=True, device="cpu")
    assert model.backbone.variant == "worldstereo-camera" and type(model.transformer).__name__ == "WorldStereoModel"


# ---------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_generates_a_clip_and_the_seed_fixes_it(models, variant):
    model = models[variant]
    calls, hook = count_calls(model.transformer)
    try:
        a = run(model, seed=0)
    finally:
        hook.remove()
    assert a.shape == (21, 3, H, W) and torch.isfinite(a).all() and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a[0], image())  # frame 0 is the condition image
    assert len(calls) == (4 if variant.endswith("dmd") else 2 * 2)  # DMD: 4 steps, no CFG; UniPC: 2 steps x (cond + uncond)
    assert torch.equal(a, run(model, seed=0))
    assert not torch.equal(a[1:], run(model, seed=1)[1:])


def test_longer_trajectories_run_in_passes_and_memory_variants_retrieve_references(models):
    model = models["worldstereo-memory"]
    seen = []
    fill = model.backbone._references

    def spy(inputs, cams, anchor):
        out = fill(inputs, cams, anchor)
        seen.append(len(out[2]))
        return out

    model.backbone._references = spy
    try:
        video = run(model, steps=1, trajectory=there_and_back())
    finally:
        del model.backbone._references
    assert video.shape[0] == 41 and len(seen) == 2
    assert seen[0] >= 1 and 1 < seen[1] <= 8  # the second pass sees frames of the first through the Spatial memory


def test_frame_counts_and_switches_the_model_cannot_take(models):
    model = models["worldstereo-camera"]
    with pytest.raises(ShapeMismatchError, match=r"1 \+ 20k frames .*got 17; use 21 or 41"):
        run(model, frames=17)
    with pytest.raises(ShapeMismatchError, match="divisible by 16"):
        generate_video(model, image(), orbit().rescale(40, 24), seed=0, depth=torch.full((24, 40), 3.0))
    with pytest.raises(ConfigError, match="use_geometric_memory=True"):
        run(model, use_geometric_memory=False)
    official = CameraTrajectory.orbit_left(angle=40.0, num_frames=81, width=W, height=H, scene_depth=3.0)
    keyframes = model.backbone.prepare_trajectory(official, None)
    assert len(keyframes) == 21 and torch.equal(keyframes.cameras.c2wb, official.cameras.c2wb[::4])


def test_the_control_branch_reads_the_render(models):
    model = models["worldstereo-camera"]
    a = run(model, seed=0)
    b = run(model, seed=0, point_cloud={"points": torch.randn(500, 3) + torch.tensor([0, 0, 3.0]), "colors": torch.rand(500, 3)})
    assert (a[1:] - b[1:]).abs().max() > 1e-4


def test_cli_generates_with_a_local_checkpoint(repo, tmp_path):
    from ws_engine.io import read_video

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ws_engine.cli", "generate", "--image", str(tmp_path / "in.png"), "--model", str(repo), "--variant",
           "worldstereo-memory-dmd", "--size", f"{H}x{W}", "--out", str(tmp_path / "out"), "--progress", "none", "--reconstruct", "point_cloud"]  # fmt: skip
    from ws_engine.io import save_image

    save_image(tmp_path / "in.png", image())
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frames, _ = read_video(tmp_path / "out" / "video.mp4")
    assert frames.shape[0] == 21 and tuple(frames.shape[-2:]) == (H, W)


# ---------------------------------------------------------------------------------------------- conditioning
def test_plucker_embedding_matches_the_verified_value():
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]).repeat(2, 1, 1)
    emb = conditioning.plucker_embedding(K, torch.eye(4).repeat(2, 1, 1), 64, 64)
    assert emb.shape == (6, 2, 64, 64)
    assert torch.allclose(emb[:, 1, 0, 0], torch.tensor([-0.48189, -0.46706, 0.74137, 0, 0, 0]), atol=1e-5)


def test_camera_normalisation_and_quaternions():
    from scipy.spatial.transform import Rotation

    g = torch.Generator().manual_seed(0)
    N = 40
    R = torch.from_numpy(Rotation.random(N, random_state=1).as_matrix())
    c2w = torch.eye(4, dtype=torch.float64).repeat(N, 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R, torch.randn(N, 3, generator=g, dtype=torch.float64)
    c2w[-1, :3, 3] = 1e4  # an outlier camera is left out of the centring
    w2c = conditioning.camera_center_normalization(torch.linalg.inv(c2w))
    centres = torch.linalg.inv(w2c)[:, :3, 3]
    assert torch.allclose(w2c[0, :3, :3], torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(centres[:-1].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert abs(float(centres[0].norm()) - 2.0) < 1e-9
    tgt, ref = conditioning.unified_camera_normalization(torch.linalg.inv(c2w[:4]), torch.linalg.inv(c2w[4:6]))
    assert torch.allclose(tgt, conditioning.camera_center_normalization(torch.linalg.inv(c2w[:4])), atol=1e-9)
    qt = conditioning.camera_qt(tgt)
    assert qt.shape == (4, 7) and (qt[:, 0] >= 0).all()
    back = Rotation.from_quat(qt[:, [1, 2, 3, 0]].double().numpy()).as_matrix()
    assert torch.allclose(torch.from_numpy(back), tgt[:, :3, :3], atol=1e-5) and torch.allclose(qt[:, 4:].double(), tgt[:, :3, 3], atol=1e-5)


def test_dmd_schedule_keyframes_and_buckets():
    assert torch.allclose(dmd_timesteps(250, 1000, 5.0, 4), torch.tensor([1000.0, 937.5, 833.3333, 625.0]))
    s = FlowDMDScheduler(250, 1000, 5.0, 4)
    s.set_timesteps(40)
    x = torch.zeros(3)
    for t in s.timesteps:  # a constant velocity field integrates exactly from sigma 1 to 0
        x = s.step(torch.ones(3), t, x).prev_sample
    assert torch.allclose(x, -torch.ones(3))
    assert conditioning.keyframe_indices(81, 21).tolist() == list(range(0, 81, 4))
    assert conditioning.nearest_bucket(1080, 1920) == (480, 768) and conditioning.nearest_bucket(1000, 1000) == (608, 608)


# ---------------------------------------------------------------------------------------------- training
def test_random_models_from_the_seed_keys_and_their_errors():
    for cfg in ({"layers": 2, "dim": 32, "num_heads": 2}, {"layers": 3, "dim": 48, "num_heads": 4, "variant": "worldstereo-memory"}):
        m = WorldStereo(vdm_config={"backbone": "worldstereo", **cfg}, device="cpu")
        tf = m.transformer
        assert len(tf.blocks) == cfg["layers"] and tf.inner_dim == cfg["dim"] and tf.config.num_attention_heads == cfg["num_heads"]
        out = m(training.synthetic_batch(tf))
        assert out["prediction"].shape == (1, 16, 3, 4, 4) and len(out["memory_features"]) == cfg["layers"]
    with pytest.raises(ConfigError, match="head width"):
        training.seed_configs({"dim": 30, "num_heads": 4})
    with pytest.raises(ConfigError, match="control_layers=3 exceeds layers=2"):
        training.seed_configs({"layers": 2, "control_layers": 3})
    with pytest.raises(ConfigError, match="no VAE"):
        run(WorldStereo(vdm_config={"backbone": "worldstereo"}, device="cpu"))


def test_training_moves_only_the_control_branch_and_the_loss_falls():
    model = WorldStereo(vdm_config={"backbone": "worldstereo", "layers": 2, "dim": 32, "num_heads": 2}, device="cpu")
    tf = model.transformer
    batch = training.synthetic_batch(tf)
    before = {k: v.clone() for k, v in tf.state_dict().items()}
    params = [p for p in tf.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(batch["latents"].shape, generator=g), torch.tensor([600.0])
    losses = []
    for step in range(40):
        out = model(batch, timesteps=t, noise=noise)
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert tf.controlnet.proj_out[0].weight.grad.abs().sum() > 0  # zero-initialised outputs still learn
        opt.step()
        losses.append(float(out["loss"].detach()))
        if step == 0:
            changed = {k for k, v in tf.state_dict().items() if not torch.equal(v, before[k])}
            assert changed and all(k.startswith("controlnet.") for k in changed)
    assert losses[-1] < 0.8 * losses[0]
    feats = model.backbone.extract_features(batch, [0, 1])
    assert set(feats) == {0, 1} and feats[1].shape == (1, 3 * 2 * 2, 32)
    with pytest.raises(ConfigError, match="block indices in 0..1"):
        model.backbone.extract_features(batch, [5])


# ---------------------------------------------------------------------------------------------- speed and memory switches
def test_dtypes_offload_oom_and_xformers_messages(models):
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16 and resolve_dtype(None) is torch.float32
    with pytest.raises(ConfigError, match="torch_dtype must be one of"):
        resolve_dtype("int8")
    lin = torch.nn.Linear(3, 3)
    off = apply_cpu_offload({"lin": lin}, "cpu")
    with off.use(lin):
        y = lin(torch.ones(3))
    assert y.shape == (3,) and lin.weight.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no[ne]* .*CUDA|there is none"):
            apply_cpu_offload({"lin": lin}, "cuda")
    with pytest.raises(OutOfMemoryError, match="enable_model_cpu_offload.*smaller size.*fewer frames"):
        with oom_guard(608, 608, 21):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    with pytest.raises((MissingDependencyError, ConfigError), match="xformers"):
        enable_xformers_memory_efficient_attention(models["worldstereo-camera"])


def test_without_diffusers_the_neural_backbone_names_the_extra():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from ws_engine import WorldStereo\n"
            "assert WorldStereo(device='cpu').backbone.name == 'geometric'\n"
            "try:\n    WorldStereo(vdm_config={'backbone': 'worldstereo'}, device='cpu')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MissingDependencyError" in out.stdout and "comfyui-worldstereo[neural]" in out.stdout, out.stdout + out.stderr



# ---------------------------------------------------------------------------------------------- reference selection
def ring_of_views(n: int = 12) -> torch.Tensor:
    """c2w (n,4,4) of cameras on a circle of radius 2 looking outwards, evenly spaced."""
    a = torch.arange(n, dtype=torch.float64) * 2 * torch.pi / n
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = a.cos(), a.sin(), -a.sin(), a.cos()
    c2w[:, 0, 3], c2w[:, 2, 3] = 2 * a.sin(), 2 * a.cos()
    return c2w


def test_diverse_views_spread_out_and_prefer_sharp_images():
    from ws_engine.memory.view_selection import image_quality, select_diverse_views

    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 3, 32, 32, generator=g)
    blurred = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2, count_include_pad=False)
    assert image_quality(sharp) > image_quality(blurred)
    c2w = ring_of_views(12)
    images = torch.cat([sharp if i % 2 == 0 else blurred for i in range(12)])
    picked = select_diverse_views(c2w, images, 4).tolist()
    assert len(set(picked)) == 4
    angles = sorted(i * 30 for i in picked)  # 4 of 12 views around the ring: no two neighbours
    assert min((b - a) % 360 for a, b in zip(angles, angles[1:] + angles[:1])) >= 60
    twins = ring_of_views(2).repeat(2, 1, 1)  # two pairs of identical poses, one sharp and one blurred image each
    assert sorted(select_diverse_views(twins, torch.cat([sharp, sharp, blurred, blurred]), 2).tolist()) == [0, 1]


def test_dinov2_features_through_transformers(tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from ws_engine.memory.view_selection import dinov2_features, select_diverse_views

    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)
                ).save_pretrained(tmp_path)  # fmt: skip
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    images = torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    feats = dinov2_features(images, str(tmp_path), local_files_only=True)
    assert feats.shape == (5, 16) and torch.isfinite(feats).all()
    assert len(set(select_diverse_views(ring_of_views(5), images, 3, feats).tolist())) == 3


def test_many_stored_views_are_reduced_to_max_references(models, monkeypatch):
    from ws_engine.memory import view_selection

    model = models["worldstereo-memory"]
    seen, sampled = [], []
    fill = model.backbone._references
    model.backbone._references = lambda *a: seen.append(fill(*a)) or seen[-1]
    pick = view_selection.select_diverse_views
    monkeypatch.setattr(view_selection, "select_diverse_views", lambda *a: sampled.append(len(a[0])) or pick(*a))
    monkeypatch.setitem(model.backbone.config, "max_references", 3)
    try:  # 21 frames out and 20 back along a wide orbit: the second pass finds many distinct views
        wide = CameraTrajectory.orbit_left(angle=120.0, num_frames=21, width=W, height=H, scene_depth=3.0)
        run(model, steps=1, trajectory=CameraTrajectory(wide.cameras[torch.tensor([*range(21), *range(19, -1, -1)])]))
    finally:
        del model.backbone._references
    images, w2c, ref_index = seen[1]
    assert sampled and sampled[-1] > 3  # more distinct views than allowed went through the sampling
    assert 1 < len(ref_index) <= 3 and images.shape[0] == w2c.shape[0] == len(ref_index)
    assert ref_index.tolist() == sorted(ref_index.tolist()) and ref_index[0] == 0
