"""The WorldStereo 2.0 transformers on diffusers' ``WanTransformer3DModel``.

- :class:`WorldStereoModel` (``worldstereo-camera``): Wan I2V plus the control branch; after
  backbone block ``i < num_layers`` the branch's ``i``-th output is added to the tokens.
- :class:`WorldStereoRefSModel` (``worldstereo-memory``, ``-memory-dmd``): also a stream of
  reference tokens (retrieved memory frames), processed by the same block weights, seen by the
  target tokens through joint self-attention; in rotary position each reference frame sits to the
  right of the target frame it was retrieved for. Optional quaternion-translation camera embedding.

Both are built like the official code: ``Cls(**wan_config, controlnet_cfg=...)`` (loadable with
``Cls.from_pretrained(base, subfolder="transformer", controlnet_cfg=...)``: the keys are Wan's),
then :meth:`~WorldStereoModel.build_controlnet` adds the new modules. ``from_configs`` does both.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...errors import ConfigError, ShapeMismatchError
from .controlnet import DIFFUSERS_HINT, WorldStereoControlNet, parse_controlnet_cfg

try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
except ImportError as exc:  # pragma: no cover - .controlnet raises first when diffusers is absent
    from ...errors import MissingDependencyError

    raise MissingDependencyError(DIFFUSERS_HINT) from exc

__all__ = ["WorldStereoModel", "WorldStereoRefSModel", "rope_at_positions"]

TEXT_CONTEXT_LEN = 512  # Wan's attention splits image tokens off the front of a 512-token text context


def _shape(x) -> str:
    return "None" if x is None else str(tuple(x.shape))


def rope_at_positions(rope: nn.Module, f: torch.Tensor, h: torch.Tensor, w: torch.Tensor):
    """Wan rotary (cos, sin), each ``[1, L, 1, head_dim]``, at integer token positions ``f, h, w`` ``[L]``."""
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    out = []
    for table in (rope.freqs_cos, rope.freqs_sin):
        tf, th, tw = table.split(split, dim=1)
        idx = [p.to(table.device) for p in (f, h, w)]
        out.append(torch.cat([tf[idx[0]], th[idx[1]], tw[idx[2]]], dim=-1).reshape(1, len(f), 1, -1))
    return tuple(out)


def _grid(frames, height: int, width: int, w_offset: int = 0):
    """Token positions (f, h, w), each ``[len(frames)*height*width]``, frame-major like the patch tokens."""
    f = torch.as_tensor(frames, dtype=torch.long)
    ff, hh, ww = torch.meshgrid(f, torch.arange(height), torch.arange(width) + w_offset, indexing="ij")
    return ff.flatten(), hh.flatten(), ww.flatten()


class WorldStereoModel(WanTransformer3DModel):
    """Camera-controlled Wan I2V transformer (official ``WorldStereoModel``).

    Arguments are ``WanTransformer3DModel``'s plus ``controlnet_cfg`` (dict; see
    :func:`~.controlnet.parse_controlnet_cfg`). ``forward`` takes the official argument names.
    """

    _reference = False

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        controlnet_cfg: dict | None = None,
    ) -> None:
        super().__init__(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
            ffn_dim=ffn_dim, num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        if controlnet_cfg is None:
            raise ConfigError(
                f"{type(self).__name__} needs controlnet_cfg (the 'controlnet_cfg' dict of the WorldStereo config.json)."
            )
        self.inner_dim = num_attention_heads * attention_head_dim
        self.cn_cfg = parse_controlnet_cfg(controlnet_cfg, self.inner_dim, num_layers, reference=self._reference)
        self.controlnet = None

    @classmethod
    def from_configs(cls, wan_config: Mapping, controlnet_cfg: Mapping, *, freeze_backbone: bool = True):
        """A randomly initialised model with its control branch built (tiny configs, training)."""
        wan = {k: v for k, v in dict(wan_config).items() if not k.startswith("_")}
        return cls(**wan, controlnet_cfg=dict(controlnet_cfg)).build_controlnet(freeze_backbone=freeze_backbone)

    # ---------------------------------------------------------------- building
    def build_controlnet(self, freeze_backbone: bool = True):
        """Add the control branch (patch embedding copied from the backbone's, zero-init outputs).

        Call after the backbone weights are loaded. ``freeze_backbone``: only ``controlnet.*`` trains.
        Returns ``self``.
        """
        dev = self.patch_embedding.weight.device
        self.controlnet = WorldStereoControlNet(
            self.cn_cfg, self.patch_embedding, self.config.patch_size, self.config.rope_max_seq_len
        ).to(dev)
        self._build_extras(dev)
        if freeze_backbone:
            self.requires_grad_(False)
            self.controlnet.requires_grad_(True)
        return self

    def _build_extras(self, device) -> None:
        """Variant-specific modules outside ``controlnet.`` (none for the camera model)."""

    # ---------------------------------------------------------------- checks
    def _check_inputs(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                      render_latent, render_mask, camera_embedding) -> torch.Tensor:
        if self.controlnet is None:
            raise ConfigError(f"{type(self).__name__}.build_controlnet() must be called before forward.")
        if self.cn_cfg["proj_out_dim"] != self.inner_dim:
            raise ConfigError(
                f"controlnet_cfg proj_out_dim={self.cn_cfg['proj_out_dim']} differs from the backbone width "
                f"{self.inner_dim}: the control outputs cannot be added. Leave proj_out_dim unset."
            )
        p_t, p_h, p_w = self.config.patch_size
        if hidden_states.ndim != 5 or hidden_states.shape[1] != self.config.in_channels:
            raise ShapeMismatchError(
                f"hidden_states must be [B, {self.config.in_channels}, F, H, W] (noise, I2V mask, image latent), "
                f"got {_shape(hidden_states)}."
            )
        b, _, f, h, w = hidden_states.shape
        if f % p_t or h % p_h or w % p_w:
            raise ShapeMismatchError(f"hidden_states frames/height/width {(f, h, w)} must be multiples of the patch size {(p_t, p_h, p_w)}.")
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        if timestep.shape != (b,):
            raise ShapeMismatchError(f"timestep must be a scalar or [B]={b}, got {_shape(timestep)}.")
        self._check_context(b, encoder_hidden_states, encoder_hidden_states_image)
        if (render_latent is None or render_latent.ndim != 5 or render_latent.shape[0] != b
                or render_latent.shape[2:] != hidden_states.shape[2:] or render_latent.shape[1] >= self.config.in_channels):
            raise ShapeMismatchError(
                f"render_latent must be [B, C, F, H, W] = [{b}, C, {f}, {h}, {w}] with C < {self.config.in_channels}, "
                f"got {_shape(render_latent)}."
            )
        self._check_mask(b, (f // p_t, h // p_h, w // p_w), render_mask, camera_embedding)
        return timestep

    def _check_context(self, b, encoder_hidden_states, encoder_hidden_states_image) -> None:
        if encoder_hidden_states is None or encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b:
            raise ShapeMismatchError(
                f"encoder_hidden_states must be [B={b}, tokens, {self.config.text_dim}], got {_shape(encoder_hidden_states)}."
            )
        if self.config.added_kv_proj_dim is not None and (
            encoder_hidden_states_image is None or encoder_hidden_states.shape[1] != TEXT_CONTEXT_LEN
        ):
            raise ShapeMismatchError(
                f"This I2V model needs encoder_hidden_states_image [B, tokens, {self.config.image_dim}] and "
                f"encoder_hidden_states of exactly {TEXT_CONTEXT_LEN} text tokens (pad the prompt embedding); got "
                f"{_shape(encoder_hidden_states_image)} and {_shape(encoder_hidden_states)}."
            )

    def _check_mask(self, b, tokens_grid, render_mask, camera_embedding) -> None:
        """render_mask ``[B,1,F_pix,16h,16w]`` + camera_embedding ``[B,add-1,F_pix,16h,16w]`` (h, w in tokens)."""
        f, h, w = tokens_grid
        front, back = self.controlnet.controlnet_mask_embedding.padding()
        want = (b, 1, f * self.cn_cfg["mask_downsample"] - front - back, h * 16, w * 16)
        add = self.cn_cfg["add_channels"]
        cam_ok = (add == 1 and camera_embedding is None) or (
            camera_embedding is not None and tuple(camera_embedding.shape) == (b, add - 1, *want[2:])
        )
        if render_mask is None or tuple(render_mask.shape) != want or not cam_ok:
            raise ShapeMismatchError(
                f"render_mask must be {list(want)} (pixel resolution, 1 = hole) and camera_embedding (Plücker) "
                f"{[b, add - 1, *want[2:]] if add > 1 else None} (add_channels={add} in all); "
                f"got {_shape(render_mask)} and {_shape(camera_embedding)}."
            )

    # ---------------------------------------------------------------- shared steps
    def _conditions(self, timestep, encoder_hidden_states, encoder_hidden_states_image):
        """temb ``[B, inner]``, timestep_proj ``[B, 6, inner]``, context ``[B, N_img + N_txt, inner]``."""
        temb, proj, context, image = self.condition_embedder(timestep, encoder_hidden_states, encoder_hidden_states_image)
        if image is not None:
            context = torch.cat([image, context], dim=1)
        return temb, proj.unflatten(1, (6, -1)), context

    def _control(self, hidden_states, render_latent, render_mask, camera_embedding, temb):
        keep = self.config.in_channels - render_latent.shape[1]
        ctrl_in = torch.cat([hidden_states[:, :keep], render_latent.to(hidden_states.dtype)], dim=1)
        mask_cam = render_mask if camera_embedding is None else torch.cat([render_mask, camera_embedding.to(render_mask.dtype)], dim=1)
        return [s.to(hidden_states.dtype) for s in self.controlnet(ctrl_in, mask_cam, temb)]

    def _patchify(self, latent: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(latent).flatten(2).transpose(1, 2).contiguous()

    def _run_block(self, fn, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(fn, *args)
        return fn(*args)

    def _output(self, x, temb, grid, return_dict):
        """Norm-out, projection and unpatchify: tokens ``[B, L, inner]`` to ``[B, out, F, H, W]``."""
        (b, f, h, w), (p_t, p_h, p_w) = grid, self.config.patch_size
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x).reshape(b, f // p_t, h // p_h, w // p_w, p_t, p_h, p_w, -1)
        out = x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        render_latent: torch.Tensor | None = None,
        render_mask: torch.Tensor | None = None,
        camera_embedding: torch.Tensor | None = None,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        """Flow prediction ``[B, out_channels, F, H, W]``.

        hidden_states ``[B, 36, F, H, W]`` (noisy latent 16 + I2V mask 4 + image latent 16), timestep
        ``[B]``, encoder_hidden_states ``[B, 512, text_dim]``, encoder_hidden_states_image
        ``[B, N, image_dim]``, render_latent ``[B, 16, F, H, W]``, render_mask ``[B, 1, F, 8H, 8W]``
        (1 = hole; ``F*mask_downsample`` frames minus padding), camera_embedding (Plücker)
        ``[B, 6, F, 8H, 8W]``. extrinsics/intrinsics are accepted and unused, as in the official model.
        """
        timestep = self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                      render_latent, render_mask, camera_embedding)
        b, _, f, h, w = hidden_states.shape
        rotary_emb = self.rope(hidden_states)
        x = self._patchify(hidden_states)
        temb, tproj, context = self._conditions(timestep, encoder_hidden_states, encoder_hidden_states_image)
        control = self._control(hidden_states, render_latent, render_mask, camera_embedding, temb)
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, context, tproj, rotary_emb)
            if i < len(control):
                x = x + control[i]
        return self._output(x, temb, (b, f, h, w), return_dict)


def _stereo_block(block, x, ref, context, tproj, rotary_joint, update_ref: bool):
    """One Wan block on targets ``x [B,L,D]`` and references ``ref [B,R,D]`` with shared weights.

    Joint self-attention over ``[ref; x]`` (rotary_joint covers R + L tokens), cross-attention for the
    targets only, FFN on both. Returns ``(x, ref)``; ``ref`` is unchanged unless ``update_ref``.
    """
    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + tproj.float()).chunk(6, dim=1)
    n_ref = ref.shape[1]
    both = torch.cat([ref, x], dim=1)
    normed = (block.norm1(both.float()) * (1 + scale) + shift).type_as(both)
    both = (both.float() + block.attn1(normed, None, None, rotary_joint) * gate).type_as(both)
    new_ref, x = both[:, :n_ref], both[:, n_ref:]
    x = x + block.attn2(block.norm2(x.float()).type_as(x), context, None, None)
    both = torch.cat([new_ref, x], dim=1) if update_ref else x
    normed = (block.norm3(both.float()) * (1 + c_scale) + c_shift).type_as(both)
    both = (both.float() + block.ffn(normed).float() * c_gate).type_as(both)
    if update_ref:
        return both[:, n_ref:], both[:, :n_ref]
    return both, ref


class WorldStereoRefSModel(WorldStereoModel):
    """Memory variant (official ``WorldStereoRefSModel``): control branch + reference-token stream.

    Adds (by ``build_controlnet``) ``camera_embedding`` (7 -> inner/2 -> inner -> inner, last layer
    zero-init) when ``main_camera_embedding`` and ``ref_index_embedding`` (21 x inner, zero, unused
    in forward, as in the official model) when ``ref_embedding``.
    """

    _reference = True

    def _build_extras(self, device) -> None:
        cfg, inner = self.cn_cfg, self.inner_dim
        self.ref_index_embedding = None
        self.camera_embedding = None
        if cfg["ref_embedding"]:
            self.ref_index_embedding = nn.Embedding(21, inner).to(device)
            nn.init.zeros_(self.ref_index_embedding.weight)
        if cfg["main_camera_embedding"]:
            self.camera_embedding = nn.Sequential(
                nn.Linear(cfg["camera_embedding_dim"], inner // 2), nn.SiLU(),
                nn.Linear(inner // 2, inner), nn.SiLU(),
                nn.Linear(inner, inner),
            ).to(device)
            nn.init.zeros_(self.camera_embedding[4].weight)
            nn.init.zeros_(self.camera_embedding[4].bias)

    def _check_refs(self, hidden_states, reference_latent, ref_index, camera_qt, camera_qt_ref) -> torch.Tensor:
        b, c, f, h, w = hidden_states.shape
        if reference_latent is None:
            raise ConfigError("WorldStereoRefSModel needs reference_latent [B, 36, F_ref, H, W] (the retrieved memory frames).")
        if reference_latent.ndim != 5 or (reference_latent.shape[0], reference_latent.shape[1]) != (b, c) \
                or reference_latent.shape[3:] != hidden_states.shape[3:] or reference_latent.shape[2] % self.config.patch_size[0]:
            raise ShapeMismatchError(f"reference_latent must be [{b}, {c}, F_ref, {h}, {w}], got {_shape(reference_latent)}.")
        n_ref = reference_latent.shape[2] // self.config.patch_size[0]
        ref_index = torch.as_tensor(ref_index if ref_index is not None else [], dtype=torch.long).flatten().cpu()
        n_lat = f // self.config.patch_size[0]
        if ref_index.numel() != n_ref or (n_ref and (ref_index.min() < 0 or ref_index.max() > n_lat - 2)):
            raise ShapeMismatchError(
                f"ref_index must give one target position per reference frame ({n_ref}), each in 0..{n_lat - 2} "
                f"(reference j is stitched beside latent frame ref_index[j]+1); got {ref_index.tolist()}."
            )
        dim = self.cn_cfg["camera_embedding_dim"]
        for name, qt, frames in (("camera_qt", camera_qt, n_lat), ("camera_qt_ref", camera_qt_ref, n_ref)):
            if qt is not None and tuple(qt.shape) != (b, frames, dim):
                raise ShapeMismatchError(f"{name} must be [{b}, {frames}, {dim}] (quaternion wxyz + translation), got {_shape(qt)}.")
        return ref_index

    def stereo_rope(self, grid, ref_index: torch.Tensor):
        """Rotary (cos, sin) of the targets and of the references, each ``[1, tokens, 1, head_dim]``.

        grid = (F, h, w) in tokens; target token (f, y, x) sits at (f, y, x), reference j's token
        (y, x) at (ref_index[j] + 1, y, w + x): right of its target frame on a double-width grid.
        """
        f, h, w = grid
        target = rope_at_positions(self.rope, *_grid(range(f), h, w))
        ref = rope_at_positions(self.rope, *_grid((ref_index + 1).tolist(), h, w, w_offset=w))
        return target, ref

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        render_latent: torch.Tensor | None = None,
        render_mask: torch.Tensor | None = None,
        camera_embedding: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
        ref_index: Sequence[int] | torch.Tensor | None = None,
        camera_qt: torch.Tensor | None = None,
        camera_qt_ref: torch.Tensor | None = None,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        """Flow prediction ``[B, out_channels, F, H, W]`` for the target frames.

        As :meth:`WorldStereoModel.forward`, plus reference_latent ``[B, 36, F_ref, H, W]`` (each memory
        frame encoded alone: ``cat(z, ones4, z)``), ref_index ``[F_ref]`` ints (reference j belongs to
        latent frame ``ref_index[j] + 1``), camera_qt ``[B, F, 7]`` and camera_qt_ref ``[B, F_ref, 7]``
        (used when the model has ``camera_embedding``; skipped when None).
        """
        timestep = self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                      render_latent, render_mask, camera_embedding)
        ref_index = self._check_refs(hidden_states, reference_latent, ref_index, camera_qt, camera_qt_ref)
        b, _, f, h, w = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        tokens_per_frame = (h // p_h) * (w // p_w)
        rot_x, rot_ref = self.stereo_rope((f // p_t, h // p_h, w // p_w), ref_index)
        rotary_joint = tuple(torch.cat([r, t], dim=1) for r, t in zip(rot_ref, rot_x))
        x = self._patchify(hidden_states)
        ref = self._patchify(reference_latent.to(hidden_states.dtype))
        if self.camera_embedding is not None:
            emb_dtype = self.camera_embedding[0].weight.dtype
            if camera_qt is not None:
                x = x + self.camera_embedding(camera_qt.to(emb_dtype)).to(x.dtype).repeat_interleave(tokens_per_frame, dim=1)
            if camera_qt_ref is not None:
                ref = ref + self.camera_embedding(camera_qt_ref.to(emb_dtype)).to(ref.dtype).repeat_interleave(tokens_per_frame, dim=1)
        temb, tproj, context = self._conditions(timestep, encoder_hidden_states, encoder_hidden_states_image)
        control = self._control(hidden_states, render_latent, render_mask, camera_embedding, temb)
        update_ref = bool(self.cn_cfg["update_ref"])
        for i, block in enumerate(self.blocks):
            step = functools.partial(_stereo_block, block, update_ref=update_ref)
            x, ref = self._run_block(step, x, ref, context, tproj, rotary_joint)
            if i < len(control):
                x = x + control[i]
        return self._output(x, temb, (b, f, h, w), return_dict)
