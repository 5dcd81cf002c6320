"""The sampling steps of the official WorldStereo 2.0 pipelines, as functions.

Latents are Wan's: 16 channels, 1/8 of the pixels; every keyframe (render, reference, output) is
encoded and decoded *alone* as a 1-frame video (batched here along the batch axis, which is the
same). The model input is ``cat(noise 16, I2V mask 4, condition latent 16)``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import torch

__all__ = ["condition_latents", "decode_keyframes", "encode_image_clip", "encode_keyframes", "encode_prompt", "sample"]


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text or ""))).strip()


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompts: list[str], max_length: int = 512, device=None, dtype=None) -> torch.Tensor:
    """UMT5 embeddings [B, max_length, text_dim]; positions past each prompt's tokens are zero (as Wan)."""
    device = device or next(text_encoder.parameters()).device
    tok = tokenizer([_clean(p) for p in prompts], padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="pt")  # fmt: skip
    mask = tok.attention_mask.to(device)
    emb = text_encoder(tok.input_ids.to(device), mask).last_hidden_state
    emb = emb * mask[..., None].to(emb.dtype)
    return emb.to(dtype or emb.dtype)


@torch.no_grad()
def encode_image_clip(image_processor, image_encoder, image: torch.Tensor) -> torch.Tensor:
    """CLIP tokens [1, N, image_dim] (penultimate hidden states) of ``image`` (3,H,W) in [0,1].

    The processor gets 0-255 pixels and does not rescale them (``do_rescale=False``): the official
    pipeline's quirk, kept because the released weights were trained with it.
    """
    from PIL import Image

    device = next(image_encoder.parameters()).device
    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    inputs = image_processor(images=Image.fromarray(pixels), return_tensors="pt")
    values = inputs["pixel_values"].to(device=device, dtype=next(image_encoder.parameters()).dtype)
    return image_encoder(pixel_values=values, output_hidden_states=True).hidden_states[-2]


def _stats(vae, like: torch.Tensor):
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(1, z, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_keyframes(vae, frames: torch.Tensor) -> torch.Tensor:
    """Normalised latents [1, 16, T, h, w] of frames [T,3,H,W] in [0,1], each encoded alone (mode)."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    x = (frames.to(device=device, dtype=dtype) * 2 - 1)[:, :, None]  # [T,3,1,H,W] in [-1,1]
    z = vae.encode(x).latent_dist.mode()  # [T,16,1,h,w]
    mean, std = _stats(vae, z)
    return ((z - mean) / std).permute(2, 1, 0, 3, 4)  # [1,16,T,h,w]


@torch.no_grad()
def decode_keyframes(vae, latents: torch.Tensor) -> torch.Tensor:
    """Frames [T,3,H,W] in [0,1] of normalised latents [1,16,T,h,w], each decoded alone."""
    dtype = next(vae.parameters()).dtype
    z = latents.to(dtype).permute(2, 1, 0, 3, 4)  # [T,16,1,h,w]
    mean, std = _stats(vae, z)
    x = vae.decode(z * std + mean, return_dict=False)[0].clamp(-1, 1)  # [T,3,1,H,W]
    return ((x[:, :, 0].float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def condition_latents(vae, image: torch.Tensor, num_latent_frames: int, mode: str = "first_frame_only") -> torch.Tensor:
    """I2V condition [1, 20, F, h, w]: 4-channel mask (ones at latent frame 0) then the image latent.

    ``first_frame_only``: the image and one black frame encoded alone, the black latent repeated;
    ``full_vae``: [image, 4(F-1) black frames] encoded as one video.
    """
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    img = (image.to(device=device, dtype=dtype) * 2 - 1)[None, :, None]  # [1,3,1,H,W]
    if mode == "first_frame_only":
        z = vae.encode(torch.cat([img, torch.zeros_like(img)])).latent_dist.mode()  # [2,16,1,h,w]
        z = torch.cat([z[:1], z[1:].expand(1, -1, num_latent_frames - 1, -1, -1)], dim=2)
    elif mode == "full_vae":
        video = torch.cat([img, img.new_zeros(1, 3, 4 * (num_latent_frames - 1), *img.shape[-2:])], dim=2)
        z = vae.encode(video).latent_dist.mode()
    else:
        from ...errors import ConfigError

        raise ConfigError(f"latent_cond_mode must be 'first_frame_only' or 'full_vae', got {mode!r}.")
    mean, std = _stats(vae, z)
    z = (z - mean) / std
    mask = torch.zeros(1, 4, num_latent_frames, *z.shape[-2:], device=z.device, dtype=z.dtype)
    mask[:, :, 0] = 1
    return torch.cat([mask, z], dim=1)


@torch.no_grad()
def sample(transformer, scheduler, condition: torch.Tensor, inputs: dict, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None,
           image_embeds: torch.Tensor, *, steps: int, guidance_scale: float, generator: torch.Generator,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:  # fmt: skip
    """Denoised latents [1,16,F,h,w] from noise drawn with ``generator`` (on the CPU).

    ``inputs``: the transformer's control inputs (render_latent, render_mask, camera_embedding and,
    for the memory model, reference_latent, ref_index, camera_qt, camera_qt_ref). Classifier-free
    guidance ``uncond + g (cond - uncond)`` runs a second pass with ``negative_embeds`` (None: no CFG).
    """
    device = condition.device
    dtype = next(transformer.parameters()).dtype
    shape = (1, 16, *condition.shape[2:])
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x = torch.cat([latents, condition.float()], dim=1).to(dtype)
        tt = t.expand(1).to(device)
        v = transformer(hidden_states=x, timestep=tt, encoder_hidden_states=prompt_embeds, encoder_hidden_states_image=image_embeds,
                        return_dict=False, **inputs)[0].float()  # fmt: skip
        if negative_embeds is not None:
            u = transformer(hidden_states=x, timestep=tt, encoder_hidden_states=negative_embeds, encoder_hidden_states_image=image_embeds,
                            return_dict=False, **inputs)[0].float()  # fmt: skip
            v = u + guidance_scale * (v - u)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if progress is not None:
            progress(i + 1, len(timesteps))
    return latents
