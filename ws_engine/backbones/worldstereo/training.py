"""Training the control branch: randomly initialised models from the seed keys, the flow-matching
loss, and block features.

Seed keys of ``vdm_config`` (backbone ``"worldstereo"`` without ``pretrained``): ``layers`` (Wan
blocks), ``dim`` (width = heads x head dim), ``num_heads``, ``timesteps`` (training noise levels),
``variant`` (``worldstereo-camera`` or ``worldstereo-memory``), and optionally ``control_layers``,
``control_dim``, ``ffn_dim``, ``text_dim``, ``image_dim``, ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError

__all__ = ["build_random_components", "build_random_transformer", "extract_features", "flow_matching_loss", "seed_configs", "synthetic_batch"]


def _positive(config: dict, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"vdm_config[{key!r}] must be a positive integer, got {value!r}.")
    return value


def seed_configs(vdm_config: dict) -> tuple[dict, dict, str]:
    """(Wan config, controlnet_cfg, variant) of a randomly initialised model from the seed keys."""
    layers, dim, heads = _positive(vdm_config, "layers", 2), _positive(vdm_config, "dim", 32), _positive(vdm_config, "num_heads", 2)
    head_dim, rem = divmod(dim, heads)
    if rem or head_dim % 2 or head_dim < 6:
        raise ConfigError(f"dim={dim} with num_heads={heads} gives a head width of {dim / heads:g}; it must be a whole even number >= 6 "
                          "(3-axis rotary embedding): change dim or num_heads.")  # fmt: skip
    variant = vdm_config.get("variant", "worldstereo-camera")
    if variant not in ("worldstereo-camera", "worldstereo-memory", "worldstereo-memory-dmd"):
        raise ConfigError(f"vdm_config['variant'] must be worldstereo-camera, worldstereo-memory or worldstereo-memory-dmd, got {variant!r}.")
    control_layers = _positive(vdm_config, "control_layers", layers)
    if control_layers > layers:
        raise ConfigError(f"control_layers={control_layers} exceeds layers={layers}: the control branch adds one output per backbone block.")
    control_dim = _positive(vdm_config, "control_dim", max(12, dim // 2 // heads * heads))
    text_dim, image_dim = _positive(vdm_config, "text_dim", dim), _positive(vdm_config, "image_dim", dim)
    wan = {"patch_size": (1, 2, 2), "num_attention_heads": heads, "attention_head_dim": head_dim, "in_channels": 36, "out_channels": 16,
           "text_dim": text_dim, "freq_dim": 16 if dim < 256 else 256, "ffn_dim": _positive(vdm_config, "ffn_dim", 4 * dim),
           "num_layers": layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": image_dim,
           "added_kv_proj_dim": dim, "rope_max_seq_len": 1024, "pos_embed_seq_len": None}  # fmt: skip
    cn = {"dim": control_dim, "num_heads": heads, "ffn_dim": 2 * control_dim, "num_layers": control_layers, "time_embed_dim": dim,
          "conv_out_dim": dim, "add_channels": 7, "mid_channels": 16, "mask_downsample": 1}  # fmt: skip
    if variant != "worldstereo-camera":
        cn.update(ref_embedding=True, main_camera_embedding=True, camera_embedding_dim=7, update_ref=True)
    return wan, cn, variant


def build_random_transformer(vdm_config: dict, seed: int | None = None):
    """A randomly initialised WorldStereoModel / RefS model with its control branch built and the backbone frozen."""
    from .transformer import WorldStereoModel, WorldStereoRefSModel

    wan, cn, variant = seed_configs(vdm_config)
    torch.manual_seed(int(vdm_config.get("seed", 0) if seed is None else seed))
    cls = WorldStereoModel if variant == "worldstereo-camera" else WorldStereoRefSModel
    return cls(**wan, controlnet_cfg=cn).build_controlnet(freeze_backbone=True)


def build_random_components(vdm_config: dict):
    """WorldStereoComponents holding only a random transformer (training; no VAE or encoders)."""
    from .checkpoint import WorldStereoComponents

    _, _, variant = seed_configs(vdm_config)
    config = {"timesteps": _positive(vdm_config, "timesteps", 1000)}
    return WorldStereoComponents(variant, config, build_random_transformer(vdm_config))


def _model_kwargs(batch: dict) -> dict:
    keys = ("render_latent", "render_mask", "camera_embedding", "reference_latent", "ref_index", "camera_qt", "camera_qt_ref",
            "encoder_hidden_states", "encoder_hidden_states_image")  # fmt: skip
    return {k: batch[k] for k in keys if k in batch}


def _check_batch(batch: dict) -> None:
    missing = [k for k in ("latents", "condition", "render_latent", "render_mask", "encoder_hidden_states") if k not in batch]
    if missing:
        raise ConfigError(f"The training batch lacks {', '.join(missing)}; see flow_matching_loss for the keys and shapes.")
    lat, cond = batch["latents"], batch["condition"]
    if lat.dim() != 5 or lat.shape[1] != 16 or cond.shape[1] != 20 or cond.shape[2:] != lat.shape[2:]:
        raise ConfigError(f"latents must be [B,16,F,h,w] and condition [B,20,F,h,w] (I2V mask 4 + image latent 16); got "
                          f"{tuple(lat.shape)} and {tuple(cond.shape)}.")  # fmt: skip


def flow_matching_loss(transformer, batch: dict, *, num_train_timesteps: int = 1000, generator: torch.Generator | None = None,
                       timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> dict:  # fmt: skip
    """The rectified-flow training loss on a latent batch.

    batch: ``latents`` [B,16,F,h,w] (clean video latents), ``condition`` [B,20,F,h,w], ``render_latent``
    [B,16,F,h,w], ``render_mask`` [B,1,F,8h,8w], ``camera_embedding`` [B,6,F,8h,8w],
    ``encoder_hidden_states`` [B,512,text_dim], ``encoder_hidden_states_image`` [B,N,image_dim], and for the
    memory model ``reference_latent``, ``ref_index``, ``camera_qt``, ``camera_qt_ref``.
    t ~ U(0, 1) per sample (or ``timesteps`` [B] in 0..num_train_timesteps); x_t = (1 - t) x0 + t noise;
    the target velocity is noise - x0, the convention of diffusers' flow-matching schedulers.
    Returns {"loss", "prediction", "target", "timesteps", "memory_features" (control outputs per layer)}.
    """
    _check_batch(batch)
    x0 = batch["latents"].float()
    B = x0.shape[0]
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    if timesteps is None:
        timesteps = torch.rand(B, generator=generator) * num_train_timesteps
    sigma = (timesteps.float() / num_train_timesteps).to(x0.device).view(B, 1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * noise
    target = noise - x0
    feats = []
    handle = transformer.controlnet.register_forward_hook(lambda m, a, out: feats.extend(out))
    try:
        dtype = next(transformer.parameters()).dtype
        hidden = torch.cat([x_t, batch["condition"].float()], 1).to(dtype)
        pred = transformer(hidden_states=hidden, timestep=timesteps.to(x0.device), return_dict=False, **_model_kwargs(batch))[0].float()
    finally:
        handle.remove()
    return {"loss": F.mse_loss(pred, target), "prediction": pred, "target": target, "timesteps": timesteps, "memory_features": feats}


@torch.no_grad()
def extract_features(transformer, batch: dict, layer_indices: Sequence[int]) -> dict[int, torch.Tensor]:
    """Outputs {i: [B, L, inner]} of the backbone blocks ``layer_indices`` on a latent batch (t = 0.5 if not given)."""
    n = len(transformer.blocks)
    indices = [int(i) for i in layer_indices]
    bad = [i for i in indices if not -n <= i < n]
    if bad or not indices:
        raise ConfigError(f"layer_indices must be block indices in 0..{n - 1} (this model has {n} blocks), got {list(layer_indices)}.")
    out: dict[int, torch.Tensor] = {}
    handles = []
    for i in indices:
        def hook(module, args, output, i=i):
            out[i] = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(transformer.blocks[i].register_forward_hook(hook))
    try:
        B = batch["latents"].shape[0]
        t = batch.get("timesteps", torch.full((B,), 500.0))
        flow_matching_loss(transformer, batch, timesteps=t, noise=torch.zeros_like(batch["latents"]))
    finally:
        for h in handles:
            h.remove()
    return {i: out[i] for i in indices}


def synthetic_batch(transformer, frames: int = 3, height: int = 32, width: int = 32, generator: torch.Generator | None = None) -> dict:
    """A fixed tiny clip in latent space (smooth latents, a half-covered render) for tests and benchmarks."""
    g = generator or torch.Generator().manual_seed(0)
    cfg = transformer.config
    h, w = height // 8, width // 8
    base = torch.randn(1, 16, 1, h, w, generator=g)
    drift = torch.linspace(0, 1, frames).view(1, 1, frames, 1, 1)
    latents = base + 0.3 * drift * torch.randn(1, 16, 1, h, w, generator=g)
    mask = torch.zeros(1, 1, frames, height, width)
    mask[..., width // 2 :] = 1
    condition = torch.cat([torch.zeros(1, 4, frames, h, w), latents[:, :, :1].expand(-1, -1, frames, -1, -1)], 1)
    condition[:, :4, 0] = 1
    batch = {"latents": latents, "condition": condition, "render_latent": latents * (1 - mask[:, :, :, ::8, ::8]), "render_mask": mask,
             "camera_embedding": torch.randn(1, 6, frames, height, width, generator=g) * 0.1,
             "encoder_hidden_states": torch.randn(1, 512, cfg.text_dim, generator=g) * 0.1,
             "encoder_hidden_states_image": torch.randn(1, 5, cfg.image_dim, generator=g) * 0.1}  # fmt: skip
    if hasattr(transformer, "stereo_rope"):
        batch.update(reference_latent=torch.cat([latents[:, :, :1], torch.ones(1, 4, 1, h, w), latents[:, :, :1]], 1), ref_index=[0],
                     camera_qt=torch.zeros(1, frames, 7), camera_qt_ref=torch.zeros(1, 1, 7))  # fmt: skip
    return batch
