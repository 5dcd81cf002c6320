"""Tiny WorldStereo 2.0 checkpoints for tests, in the official layout (no downloads).

``make_tiny_repo(root)`` writes ``root/base`` (a diffusers Wan I2V base model: transformer, vae,
text_encoder, tokenizer, image_encoder, image_processor, scheduler, each with its library's own
``save_pretrained``) and ``root/<variant>/{config.json, model.safetensors}`` for the three variants,
as the hub repo ``hanshanxue/WorldStereo`` lays them out.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The tiny configuration of shared/reference/worldstereo-keys/README.md.
TINY_WAN_CONFIG = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 36, "out_channels": 16,
                   "text_dim": 32, "freq_dim": 16, "ffn_dim": 64, "num_layers": 2, "cross_attn_norm": True,
                   "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 24, "added_kv_proj_dim": 32, "rope_max_seq_len": 1024,
                   "pos_embed_seq_len": None}  # fmt: skip
VARIANTS = ("worldstereo-camera", "worldstereo-memory", "worldstereo-memory-dmd")


def tiny_controlnet_cfg(reference: bool) -> dict:
    cfg = {"dim": 24, "num_heads": 2, "ffn_dim": 48, "num_layers": 2, "time_embed_dim": 32, "conv_out_dim": 32, "add_channels": 7,
           "mid_channels": 16, "mask_downsample": 1, "interp": False}  # fmt: skip
    if reference:
        cfg.update(ref_embedding=True, main_camera_embedding=True, camera_embedding_dim=7, update_ref=True)
    return cfg


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + ["a", "the", "room", "kitchen", "table", "chair", "window", "wall", "floor", "light", "blurry", "low", "quality", "static"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_tiny_base(folder, seed: int = 0) -> Path:
    """A tiny diffusers Wan 2.1 I2V base model at ``folder``; returns the folder."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    WanTransformer3DModel(**TINY_WAN_CONFIG).save_pretrained(folder / "transformer")
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).save_pretrained(
        folder / "vae"
    )
    UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8)
                     ).save_pretrained(folder / "text_encoder")  # fmt: skip
    _tokenizer().save_pretrained(folder / "tokenizer")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                     patch_size=16)).save_pretrained(folder / "image_encoder")  # fmt: skip
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "image_processor")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
                            ).save_pretrained(folder / "scheduler")  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanImageToVideoPipeline", "_diffusers_version": "0.36.0",
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "image_encoder": ["transformers", "CLIPVisionModel"], "image_processor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"]}, indent=1))  # fmt: skip
    return folder


def save_tiny_variant(root, variant: str, base_model, *, seed: int = 0, checkpoint: str = "controlnet", extra_config=None) -> Path:
    """``root/<variant>/{config.json, model.safetensors}`` with random non-zero control weights."""
    from safetensors.torch import save_file

    from ws_engine.backbones.worldstereo.transformer import (
        WorldStereoModel,
        WorldStereoRefSModel,
    )

    reference = variant != "worldstereo-camera"
    cfg = {"base_model": str(Path(base_model).resolve()), "controlnet_cfg": tiny_controlnet_cfg(reference), "freeze_backbone": True,
           "nframe": 21, "latent_cond_mode": "first_frame_only", "negative_prompt": "blurry low quality static"}  # fmt: skip
    if variant == "worldstereo-memory-dmd":
        cfg.update(dmd_start_steps=250, dmd_end_steps=1000, gen_shift=5.0, dmd_steps=4)
    cfg.update(extra_config or {})
    cls = WorldStereoRefSModel if reference else WorldStereoModel
    torch.manual_seed(seed)
    model = cls(**TINY_WAN_CONFIG, controlnet_cfg=cfg["controlnet_cfg"]).build_controlnet()
    g = torch.Generator().manual_seed(seed + 1)
    state = {}
    for name, p in model.state_dict().items():
        new = name.startswith(("controlnet.", "camera_embedding.", "ref_index_embedding."))
        if new or checkpoint == "full":
            state[name] = (torch.randn(p.shape, generator=g) * 0.05).contiguous() if new else p.contiguous()
    out = Path(root) / variant
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(state, str(out / "model.safetensors"))
    return out


def make_tiny_repo(root) -> Path:
    """``root/base`` + the three variants (the hub layout of hanshanxue/WorldStereo); returns root."""
    root = Path(root)
    base = save_tiny_base(root / "base")
    for i, variant in enumerate(VARIANTS):
        save_tiny_variant(root, variant, base, seed=i)
    return root
