"""The WorldStereo 2.0 transformers on tiny configurations: official keys, zero-init, forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import WanTransformer3DModel

from ws_engine.backbones.worldstereo.controlnet import MaskCamEmbed
from ws_engine.backbones.worldstereo.transformer import (
    WorldStereoModel,
    WorldStereoRefSModel,
)
from ws_engine.errors import ConfigError, MissingDependencyError, ShapeMismatchError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WORLDSTEREO_SHARED", ROOT.parent / "shared"))
KEYS = SHARED / "reference" / "worldstereo-keys"
# The tiny configuration of worldstereo-keys/README.md (also in tiny_forward_report.json).
WAN = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 36, "out_channels": 16,
           "text_dim": 32, "freq_dim": 16, "ffn_dim": 64, "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
           "eps": 1e-6, "image_dim": 24, "added_kv_proj_dim": 32, "rope_max_seq_len": 1024, "pos_embed_seq_len": None}
CN = {"dim": 24, "num_heads": 2, "ffn_dim": 48, "num_layers": 2, "time_embed_dim": 32, "conv_out_dim": 32, "add_channels": 7,
          "mid_channels": 16, "mask_downsample": 1, "interp": False, "ref_embedding": True, "main_camera_embedding": True,
          "camera_embedding_dim": 7, "update_ref": True}
CLASSES = {"WorldStereoModel": WorldStereoModel, "WorldStereoRefSModel": WorldStereoRefSModel}


def read_keys(name: str) -> dict[str, tuple[tuple[int, ...], bool, bool]]:
    """keys_<name>.txt as {key: (shape, zero, new)}."""
    path = KEYS / f"keys_{name}.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found (set WORLDSTEREO_SHARED)")
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, rest = line.split(" ", 1)
        shape = tuple(int(s) for s in rest[rest.index("(") + 1: rest.index(")")].split(",") if s.strip())
        flags = rest[rest.index(")") + 1:].split()
        out[key] = (shape, "ZERO" in flags, "NEW" in flags)
    return out


def build(cls, seed=0, **cn):
    torch.manual_seed(seed)
    return cls.from_configs(WAN, {**CN, **cn}).eval()


def inputs(seed=0, refs=False):
    """Inputs of tiny_forward_report.json: 3 latent frames of 8x8, pixel mask/Plücker 64x64."""
    g = torch.Generator().manual_seed(seed)
    x = {"hidden_states": torch.randn(1, 36, 3, 8, 8, generator=g), "timestep": torch.tensor([500.0]),
             "encoder_hidden_states": torch.randn(1, 512, 32, generator=g),
             "encoder_hidden_states_image": torch.randn(1, 5, 24, generator=g),
             "render_latent": torch.randn(1, 16, 3, 8, 8, generator=g),
             "render_mask": (torch.rand(1, 1, 3, 64, 64, generator=g) > 0.5).float(),
             "camera_embedding": torch.randn(1, 6, 3, 64, 64, generator=g)}
    if refs:
        x.update(reference_latent=torch.randn(1, 36, 2, 8, 8, generator=g), ref_index=[0, 1],
                 camera_qt=torch.randn(1, 3, 7, generator=g), camera_qt_ref=torch.randn(1, 2, 7, generator=g))
    return x


def run(model, **kw):
    with torch.no_grad():
        return model(**kw).sample


@pytest.mark.parametrize("name", list(CLASSES))
def test_state_dict_equals_official_keys(name):
    ref = read_keys(name)
    # proj_out_dim=5120 reproduces the official hard-coded control output width exactly
    sd = build(CLASSES[name], proj_out_dim=5120).state_dict()
    assert set(sd) == set(ref)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: v[0] for k, v in ref.items()}
    assert {k for k, v in sd.items() if not v.any()} == {k for k, v in ref.items() if v[1]}
    plain = set(WanTransformer3DModel(**WAN).state_dict())
    assert set(sd) - plain == {k for k, v in ref.items() if v[2]}
    assert plain <= set(sd)


@pytest.mark.parametrize("name", list(CLASSES))
def test_readme_config_takes_control_width_from_backbone(name):
    ref = read_keys(name)
    sd = build(CLASSES[name]).state_dict()  # the README config verbatim
    assert set(sd) == set(ref)
    differ = {k for k, v in sd.items() if tuple(v.shape) != ref[k][0]}
    assert differ == {f"controlnet.proj_out.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    assert sd["controlnet.proj_out.0.weight"].shape == (32, 24)  # backbone width, not 5120


def test_build_copies_patch_embedding_and_freezes_backbone():
    m = build(WorldStereoRefSModel)
    assert torch.equal(m.controlnet.controlnet_patch_embedding.weight, m.patch_embedding.weight)
    assert torch.equal(m.controlnet.controlnet_patch_embedding.bias, m.patch_embedding.bias)
    trainable = {k.split(".")[0] for k, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"controlnet"}  # as the official build_controlnet(freeze_backbone=True)
    m2 = WorldStereoModel(**WAN, controlnet_cfg=CN).build_controlnet(freeze_backbone=False)
    assert all(p.requires_grad for p in m2.parameters())


@pytest.mark.parametrize("name", list(CLASSES))
def test_forward_shapes_and_determinism(name):
    report = json.loads((KEYS / "tiny_forward_report.json").read_text()) if (KEYS / "tiny_forward_report.json").is_file() else None
    refs = name == "WorldStereoRefSModel"
    x = inputs(refs=refs)
    if report is not None:
        rec = report[f"{name}_forward"]
        for key in ("hidden_states", "render_latent", "render_mask", "camera_embedding", "reference_latent", "camera_qt"):
            if key in rec["inputs"]:
                assert list(x[key].shape) == rec["inputs"][key]
    out = run(build(CLASSES[name]), **x)
    assert list(out.shape) == [1, 16, 3, 8, 8] == (report[f"{name}_forward"]["output"] if report else [1, 16, 3, 8, 8])
    assert torch.isfinite(out).all()
    assert torch.equal(out, run(build(CLASSES[name]), **inputs(refs=refs)))
    assert not torch.equal(out, run(build(CLASSES[name], seed=1), **x))
    m = build(CLASSES[name])
    states = m._control(x["hidden_states"], x["render_latent"], x["render_mask"], x["camera_embedding"],
                        m._conditions(x["timestep"], x["encoder_hidden_states"], x["encoder_hidden_states_image"])[0])
    assert [list(s.shape) for s in states] == [[1, 48, 32]] * 2  # report: [1, 48, 5120] at width 5120


def test_zero_init_control_equals_plain_backbone():
    m = build(WorldStereoModel)
    plain = WanTransformer3DModel(**WAN).eval()
    missing, unexpected = plain.load_state_dict(m.state_dict(), strict=False)
    assert not missing and all(k.startswith("controlnet.") for k in unexpected)
    x = inputs()
    out = run(m, **x)
    with torch.no_grad():
        base = plain(x["hidden_states"], x["timestep"], x["encoder_hidden_states"], x["encoder_hidden_states_image"]).sample
    assert torch.equal(out, base)  # bit-identical, as the official model
    # extrinsics / intrinsics are accepted and unused
    assert torch.equal(out, run(m, **x, extrinsics=torch.eye(4).expand(3, 4, 4), intrinsics=torch.eye(3).expand(3, 3, 3)))
    # once the zero layers are trained the control branch (render, mask, Plücker) does steer the output
    with torch.no_grad():
        for p in [*m.controlnet.proj_out.parameters(), *m.controlnet.controlnet_mask_embedding.mask_zero_proj.parameters()]:
            p.normal_(0, 0.1)
    steered = run(m, **x)
    assert (steered - base).abs().max() > 1e-3
    other = {**x, "camera_embedding": -x["camera_embedding"]}
    assert (run(m, **other) - steered).abs().max() > 1e-4


def test_refs_zero_init_control_and_camera_add_nothing():
    m = build(WorldStereoRefSModel)
    x = inputs(refs=True)
    out = run(m, **x)
    changed = {**x, "render_latent": torch.randn(1, 16, 3, 8, 8), "render_mask": 1 - x["render_mask"],
               "camera_embedding": torch.randn(1, 6, 3, 64, 64), "camera_qt": torch.randn(1, 3, 7),
               "camera_qt_ref": torch.randn(1, 2, 7)}
    assert torch.equal(out, run(m, **changed))
    assert torch.equal(out, run(m, **{**x, "camera_qt": None, "camera_qt_ref": None}))
    # the references are attended to; their rotary placement matters
    assert (run(m, **{**x, "reference_latent": torch.randn(1, 36, 2, 8, 8)}) - out).abs().max() > 1e-5
    assert (run(m, **{**x, "ref_index": [1, 0]}) - out).abs().max() > 1e-6
    with torch.no_grad():
        m.camera_embedding[4].weight.normal_(0, 0.1)
    assert (run(m, **changed) - run(m, **x)).abs().max() > 1e-5


def test_refs_stitched_rope_positions():
    m = build(WorldStereoRefSModel)
    f, h, w = 3, 4, 4
    target, ref = m.stereo_rope((f, h, w), torch.tensor([0, 1]))
    std = m.rope(torch.zeros(1, 36, f, 2 * h, 2 * w))  # standard Wan rotary of the target grid
    assert all(torch.equal(a, b) for a, b in zip(target, std))
    wide = m.rope(torch.zeros(1, 36, f, 2 * h, 4 * w))  # double-width grid (F, h, 2w)
    for t in (0, 1):
        wide_grid = wide[t].reshape(f, h, 2 * w, -1)
        want = torch.stack([wide_grid[j + 1, :, w:] for j in (0, 1)]).reshape(1, 2 * h * w, 1, -1)
        assert torch.equal(ref[t], want)  # reference j at frame ref_index[j]+1, right half


def test_update_ref_carries_reference_states():
    x = inputs(refs=True)
    one = {"num_layers": 1}
    wan1 = {**WAN, "num_layers": 1}
    outs = {}
    for layers in (1, 2):
        for upd in (True, False):
            torch.manual_seed(0)
            wan = wan1 if layers == 1 else WAN
            m = WorldStereoRefSModel.from_configs(wan, {**CN, **(one if layers == 1 else {}), "update_ref": upd}).eval()
            outs[layers, upd] = run(m, **x)
    assert torch.equal(outs[1, True], outs[1, False])  # one block: the carried states are never read
    assert (outs[2, True] - outs[2, False]).abs().max() > 1e-6


def test_training_step_touches_only_the_control_branch():
    m = build(WorldStereoRefSModel).train()
    m.enable_gradient_checkpointing()
    x = inputs(refs=True)
    m(**x).sample.square().mean().backward()
    grads = {k for k, p in m.named_parameters() if p.grad is not None}
    assert grads and all(k.startswith("controlnet.") for k in grads)
    assert m.controlnet.proj_out[1].weight.grad.abs().sum() > 0


def test_base_weights_then_build(tmp_path):
    """The official order: backbone weights from a Wan folder (keys are Wan's), then build_controlnet."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    base = WanTransformer3DModel(**WAN)
    base.save_pretrained(tmp_path / "transformer")
    config = WorldStereoRefSModel.load_config(tmp_path / "transformer")
    m = WorldStereoRefSModel.from_config(config, controlnet_cfg=CN)
    weights = load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    assert m.load_state_dict(weights, strict=True) is not None  # before the build: exactly Wan's keys
    m.build_controlnet()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in base.state_dict().items())
    assert m.config.controlnet_cfg == CN
    assert list(run(m.eval(), **inputs(refs=True)).shape) == [1, 16, 3, 8, 8]


def test_from_pretrained_base_then_build(tmp_path):
    pytest.importorskip("accelerate")  # diffusers loads Wan (fp32-kept modules) only with accelerate
    torch.manual_seed(0)
    WanTransformer3DModel(**WAN).save_pretrained(tmp_path / "transformer")
    m = WorldStereoRefSModel.from_pretrained(tmp_path, subfolder="transformer", controlnet_cfg=CN).build_controlnet()
    base = WanTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer")
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in base.state_dict().items())
    assert list(run(m.eval(), **inputs(refs=True)).shape) == [1, 16, 3, 8, 8]


def test_mask_embedding_downsampling():
    emb = MaskCamEmbed(7, 16, 32, downsample=4)
    assert emb(torch.randn(1, 7, 81, 64, 64)).shape == (1, 336, 32)
    assert MaskCamEmbed(7, 16, 32, downsample=1)(torch.randn(1, 7, 21, 64, 64)).shape == (1, 336, 32)


def test_bad_configs_and_inputs_raise_typed_errors():
    with pytest.raises(ConfigError, match="update_ref"):
        WorldStereoRefSModel(**WAN, controlnet_cfg={k: v for k, v in CN.items() if k != "update_ref"})
    with pytest.raises(ConfigError, match="conv_out_dim"):
        WorldStereoModel(**WAN, controlnet_cfg={**CN, "conv_out_dim": 24})
    with pytest.raises(ConfigError, match="num_layers"):
        WorldStereoModel(**WAN, controlnet_cfg={**CN, "num_layers": 3})
    with pytest.raises(ConfigError, match="controlnet_cfg"):
        WorldStereoModel(**WAN)
    with pytest.raises(ConfigError, match="build_controlnet"):
        WorldStereoModel(**WAN, controlnet_cfg=CN)(**inputs())
    with pytest.raises(ConfigError, match="proj_out_dim"):
        build(WorldStereoModel, proj_out_dim=5120)(**inputs())
    m, r = build(WorldStereoModel), build(WorldStereoRefSModel)
    with pytest.raises(ShapeMismatchError, match="render_mask"):
        m(**{**inputs(), "render_mask": torch.zeros(1, 1, 3, 32, 32)})
    with pytest.raises(ShapeMismatchError, match="render_latent"):
        m(**{**inputs(), "render_latent": torch.zeros(1, 16, 2, 8, 8)})
    with pytest.raises(ShapeMismatchError, match="512"):
        m(**{**inputs(), "encoder_hidden_states": torch.zeros(1, 77, 32)})
    with pytest.raises(ConfigError, match="reference_latent"):
        r(**inputs())
    with pytest.raises(ShapeMismatchError, match="ref_index"):
        r(**{**inputs(refs=True), "ref_index": [0, 2]})
    with pytest.raises(ShapeMismatchError, match="camera_qt"):
        r(**{**inputs(refs=True), "camera_qt": torch.zeros(1, 2, 7)})


def test_without_diffusers_names_the_neural_extra():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from ws_engine.errors import MissingDependencyError\n"
            "try:\n    import ws_engine.backbones.worldstereo.transformer\n"
            "except MissingDependencyError as e:\n    print('OK', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.startswith("OK") and "[neural]" in out.stdout, out.stderr
    assert issubclass(MissingDependencyError, ImportError)
