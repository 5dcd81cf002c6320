"""The WorldStereo control branch: config, mask + Plücker embedding, control blocks.

State-dict names follow the official checkpoints (everything lives under ``controlnet.`` of the
transformer). The branch reads the noisy latent and the GGM render latent, adds an embedding of the
pixel-resolution hole mask and Plücker rays, runs ``num_layers`` small transformer blocks modulated
by the backbone's time embedding, and projects each block's output to the backbone width through a
zero-initialised linear layer (so a freshly built branch adds exactly nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...errors import ConfigError, MissingDependencyError

DIFFUSERS_HINT = (
    "The neural WorldStereo backbone needs diffusers (>= 0.36). Install the 'neural' extra: "
    'pip install "comfyui-worldstereo[neural]", or use vdm_config={"backbone": "geometric"}.'
)

try:
    from diffusers.models.transformers.transformer_wan import (
        WanAttention,
        WanAttnProcessor,
        WanRotaryPosEmbed,
    )
except ImportError as exc:  # exercised by a test that hides diffusers
    raise MissingDependencyError(DIFFUSERS_HINT) from exc

__all__ = ["ControlBlock", "MaskCamEmbed", "WorldStereoControlNet", "parse_controlnet_cfg"]

_REQUIRED = ("dim", "num_heads", "ffn_dim", "num_layers", "time_embed_dim", "conv_out_dim")
# Defaults of the official code (Uni3C heritage); the released configs set add_channels=7, mask_downsample=1.
_DEFAULTS = {
    "add_channels": 1,
    "mid_channels": 64,
    "mask_downsample": 4,
    "interp": False,
    "ref_embedding": False,
    "main_camera_embedding": False,
    "camera_embedding_dim": 7,
    "proj_out_dim": None,  # ours: None = backbone width (the official code hard-codes 5120)
}


def parse_controlnet_cfg(cfg, inner_dim: int, num_backbone_layers: int, *, reference: bool = False) -> dict:
    """Validate ``controlnet_cfg`` against the backbone and fill in the official defaults.

    ``inner_dim``: backbone width (heads * head_dim). ``reference``: the memory (RefS) variant, which
    needs ``update_ref``. Unknown keys (``base_model``, ...) are kept and ignored. Raises ConfigError.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"controlnet_cfg must be a dict (the 'controlnet_cfg' of config.json), got {type(cfg).__name__}.")
    missing = [k for k in _REQUIRED if k not in cfg]
    if reference and "update_ref" not in cfg:
        missing.append("update_ref")
    if missing:
        raise ConfigError(
            f"controlnet_cfg lacks {', '.join(missing)}; a WorldStereo config needs {', '.join(_REQUIRED)}"
            f"{' and update_ref' if reference else ''} (see the 'controlnet_cfg' of the official config.json)."
        )
    out = {**_DEFAULTS, **dict(cfg)}
    for key in ("dim", "num_heads", "ffn_dim", "num_layers", "time_embed_dim", "conv_out_dim",
                "add_channels", "mid_channels", "mask_downsample", "camera_embedding_dim"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"controlnet_cfg['{key}'] must be a positive integer, got {out[key]!r}.")
    if out["proj_out_dim"] is None:
        out["proj_out_dim"] = inner_dim
    head_dim, rem = divmod(out["dim"], out["num_heads"])
    if rem or head_dim % 2 or head_dim < 6:
        raise ConfigError(
            f"controlnet_cfg dim={out['dim']} with num_heads={out['num_heads']} gives head width {out['dim'] / out['num_heads']}; "
            "it must be a whole, even number >= 6 (3-axis rotary embedding). Change dim or num_heads."
        )
    if out["num_layers"] > num_backbone_layers:
        raise ConfigError(
            f"controlnet_cfg num_layers={out['num_layers']} exceeds the backbone's {num_backbone_layers} blocks; "
            f"use at most {num_backbone_layers}."
        )
    for key in ("time_embed_dim", "conv_out_dim"):
        if out[key] != inner_dim:
            raise ConfigError(
                f"controlnet_cfg {key}={out[key]} must equal the backbone width {inner_dim} "
                "(the control branch takes the backbone's time embedding and a copy of its patch embedding)."
            )
    if out["mid_channels"] % 8:
        raise ConfigError(f"controlnet_cfg mid_channels={out['mid_channels']} must be a multiple of 8 (GroupNorm of mid/8 groups).")
    return out


class MaskCamEmbed(nn.Module):
    """Pixel-resolution mask (+ Plücker rays) to control tokens; net stride (mask_downsample, 16, 16).

    Input ``[B, add_channels, F_pix, H, W]``; output ``[B, F*(H/16)*(W/16), out_dim]``. The last conv is
    zero-initialised. With ``downsample > 1`` the input is front-padded with 3 zero frames (also 3 at
    the back with ``interp``); the released models use ``downsample = 1``.
    """

    def __init__(self, add_channels: int, mid_channels: int, out_dim: int, downsample: int = 1, interp: bool = False):
        super().__init__()
        self.downsample, self.interp = downsample, interp
        self.mask_proj = nn.Sequential(
            nn.Conv3d(add_channels, mid_channels, kernel_size=(downsample, 8, 8), stride=(downsample, 8, 8)),
            nn.GroupNorm(mid_channels // 8, mid_channels),
            nn.SiLU(),
        )
        self.mask_zero_proj = nn.Conv3d(mid_channels, out_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        nn.init.zeros_(self.mask_zero_proj.weight)
        nn.init.zeros_(self.mask_zero_proj.bias)

    def padding(self) -> tuple[int, int]:
        """Frames added (front, back) before the temporal downsampling."""
        if self.downsample <= 1:
            return 0, 0
        return (3, 3) if self.interp else (3, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        front, back = self.padding()
        if front or back:
            x = nn.functional.pad(x, (0, 0, 0, 0, front, back))
        x = self.mask_zero_proj(self.mask_proj(x))
        return x.flatten(2).transpose(1, 2)


class _AdaNorm(nn.Module):
    """LayerNorm modulated by the time embedding: ``(LN(x)(1+scale)+shift, gate)``; x ``[B,L,dim]``, temb ``[B,T]``."""

    def __init__(self, time_embed_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.linear(nn.functional.silu(temb)).unsqueeze(1).chunk(3, dim=-1)
        return self.norm(x) * (1 + scale) + shift, gate


class ControlBlock(nn.Module):
    """One control block: modulated full self-attention (Wan RoPE, RMSNorm q/k) and GELU-tanh FFN.

    ``x [B, L, dim]``, ``temb [B, time_embed_dim]``, ``rotary_emb`` (cos, sin) each ``[1, L, 1, head_dim]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, time_embed_dim: int):
        super().__init__()
        self.norm1 = _AdaNorm(time_embed_dim, dim)
        self.self_attn = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=1e-6,
                                      processor=WanAttnProcessor())
        self.norm2 = _AdaNorm(time_embed_dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, temb: torch.Tensor, rotary_emb) -> torch.Tensor:
        h, gate = self.norm1(x, temb)
        x = x + gate * self.self_attn(h, None, None, rotary_emb)
        h, gate = self.norm2(x, temb)
        return x + gate * self.ffn(h)


class WorldStereoControlNet(nn.Module):
    """The control branch (``controlnet.*`` keys).

    Built from a parsed ``cfg`` (see :func:`parse_controlnet_cfg`) and the backbone's patch embedding
    (copied). ``forward(ctrl_in [B,C_in,F,h,w], mask_cam [B,add,F_pix,H,W], temb [B,T])`` returns
    ``num_layers`` tensors ``[B, F*(h/p)*(w/p), proj_out_dim]``, one per control block.
    """

    def __init__(self, cfg: dict, patch_embedding: nn.Conv3d, patch_size, rope_max_seq_len: int):
        super().__init__()
        dim, conv_out = cfg["dim"], cfg["conv_out_dim"]
        self.proj_in = nn.Linear(conv_out, dim) if conv_out != dim else nn.Identity()
        self.controlnet_blocks = nn.ModuleList(
            ControlBlock(dim, cfg["num_heads"], cfg["ffn_dim"], cfg["time_embed_dim"]) for _ in range(cfg["num_layers"])
        )
        self.proj_out = nn.ModuleList(nn.Linear(dim, cfg["proj_out_dim"]) for _ in range(cfg["num_layers"]))
        for layer in self.proj_out:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.controlnet_patch_embedding = nn.Conv3d(
            patch_embedding.in_channels, conv_out, kernel_size=patch_size, stride=patch_size
        )
        with torch.no_grad():
            self.controlnet_patch_embedding.weight.copy_(patch_embedding.weight)
            self.controlnet_patch_embedding.bias.copy_(patch_embedding.bias)
        self.controlnet_mask_embedding = MaskCamEmbed(
            cfg["add_channels"], cfg["mid_channels"], conv_out, cfg["mask_downsample"], cfg["interp"]
        )
        self.controlnet_rope = WanRotaryPosEmbed(dim // cfg["num_heads"], tuple(patch_size), rope_max_seq_len)

    @property
    def dtype(self) -> torch.dtype:
        return self.controlnet_patch_embedding.weight.dtype

    def forward(self, ctrl_in: torch.Tensor, mask_cam: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.dtype
        ctrl_in, mask_cam, temb = ctrl_in.to(dtype), mask_cam.to(dtype), temb.to(dtype)
        rotary_emb = self.controlnet_rope(ctrl_in)
        x = self.controlnet_patch_embedding(ctrl_in).flatten(2).transpose(1, 2)
        x = self.proj_in(x + self.controlnet_mask_embedding(mask_cam))
        states = []
        for block, proj in zip(self.controlnet_blocks, self.proj_out):
            x = block(x, temb, rotary_emb)
            states.append(proj(x))
        return states
