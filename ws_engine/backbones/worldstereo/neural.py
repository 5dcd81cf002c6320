"""The neural backbone: WorldStereo 2.0 (``worldstereo-camera``, ``-memory``, ``-memory-dmd``) on diffusers.

One model call makes 21 keyframes: the frame before the chunk (the condition image for the first
chunk) and 20 new frames. The control branch sees the Global memory's render of each keyframe and
its hole mask (1 = hole) plus Plücker rays; the memory variants also see up to 8 reference frames
retrieved from the Spatial memory's views (frustum overlap and view angle). A trajectory of
1 + 20k frames therefore takes k calls.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ...errors import ConfigError, OutOfMemoryError, ShapeMismatchError
from ..base import Backbone, ChunkInputs, ChunkOutputs
from . import sampling
from .checkpoint import WorldStereoComponents, load_components
from .conditioning import (
    NUM_KEYFRAMES,
    camera_qt,
    keyframe_indices,
    nearest_bucket,
    plucker_embedding,
    unified_camera_normalization,
)

__all__ = ["WorldStereoBackbone"]

log = logging.getLogger("ws_engine")
NEW_PER_CALL = NUM_KEYFRAMES - 1
MAX_REFERENCES = 8
_OPTIONS = ("backbone", "pretrained", "subfolder", "local_files_only", "torch_dtype", "revision", "negative_prompt", "max_references",
            "reference_features",
            "layers", "dim", "num_heads", "timesteps", "variant", "seed", "control_layers", "control_dim", "ffn_dim", "text_dim",
            "image_dim")  # fmt: skip


def _dtype(value) -> torch.dtype:
    from ...optimization import resolve_dtype

    return resolve_dtype(value)


@contextlib.contextmanager
def oom_guard(height: int, width: int, frames: int):
    """Turn an out-of-memory error into OutOfMemoryError with what to change."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        smaller = min((b for b in ((480, 768), (512, 720), (576, 640), (608, 608)) if b[0] * b[1] < height * width), default=None,
                      key=lambda b: -b[0] * b[1])  # fmt: skip
        raise OutOfMemoryError(
            f"Not enough GPU memory for {frames} frames at {width}x{height} ({str(e).splitlines()[0]}). Call "
            "enable_model_cpu_offload(model) (or pass enable_cpu_offload=True), use torch_dtype='bf16', "
            f"{f'a smaller size such as {smaller[1]}x{smaller[0]}, ' if smaller else 'a smaller size, '}or fewer frames (21)."
        ) from None


class WorldStereoBackbone(Backbone):
    """WorldStereo 2.0 on diffusers. Config: ``pretrained`` (hub id or folder) + ``subfolder`` (variant),
    ``local_files_only``, ``torch_dtype``, ``revision``; or the seed keys (``layers``, ``dim``,
    ``num_heads``, ``timesteps``, ``variant``) for a randomly initialised transformer (training)."""

    name = "worldstereo"
    chunk_size = NEW_PER_CALL
    size_multiple = 16
    trainable = True
    default_steps = 40
    default_guidance = 5.0

    def __init__(self, config: dict | None = None, components: WorldStereoComponents | None = None):
        config = dict(config or {})
        unknown = sorted(set(config) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for the worldstereo backbone; valid: {', '.join(_OPTIONS[1:])}.")
        super().__init__(config)
        if components is None:
            if config.get("pretrained"):
                components = load_components(config["pretrained"], config.get("subfolder"), local_files_only=bool(config.get("local_files_only")),
                                             torch_dtype=_dtype(config.get("torch_dtype", "fp32")), revision=config.get("revision"))  # fmt: skip
            else:
                from .training import build_random_components

                components = build_random_components(config)
        self.components = components
        self.execution_device = torch.device("cpu")
        self._offload = None
        if components.sampler == "dmd":
            self.default_steps = int(components.config.get("dmd_steps", 4))

    # ------------------------------------------------------------------ properties and hooks
    @property
    def transformer(self):
        return self.components.transformer

    @property
    def variant(self) -> str:
        return self.components.variant

    @property
    def uses_references(self) -> bool:
        return self.variant != "worldstereo-camera"

    def to(self, device) -> WorldStereoBackbone:
        self.execution_device = torch.device(device)
        if self._offload is None:
            for module in self.components.modules().values():
                module.to(self.execution_device)
        return self

    def check(self, use_geometric_memory: bool, use_spatial_memory: bool) -> None:
        if not use_geometric_memory:
            raise ConfigError("The worldstereo backbone is conditioned on the Global memory's renders: keep use_geometric_memory=True.")
        if self.components.vae is None:
            raise ConfigError(
                "This worldstereo backbone has no VAE, text or image encoder (a randomly initialised transformer for training); "
                "load a released model with WorldStereo.from_pretrained('hanshanxue/WorldStereo', subfolder=...) to generate."
            )

    def check_frames(self, num_frames: int) -> None:
        if num_frames < NUM_KEYFRAMES or (num_frames - 1) % NEW_PER_CALL:
            low = max(NUM_KEYFRAMES, 1 + (num_frames - 1) // NEW_PER_CALL * NEW_PER_CALL)
            raise ShapeMismatchError(
                f"The worldstereo backbone makes 20 new frames per pass, so it takes 1 + 20k frames (21, 41, 61, 81, ...), got {num_frames}; "
                f"use {low} or {low + NEW_PER_CALL} frames (trajectory.resample(n)), or 81 cameras of an official camera.json (its 21 keyframes are used)."
            )

    def prepare_trajectory(self, trajectory, num_frames):
        """An 81-camera trajectory (official camera.json) with no frame count asked: its 21 keyframes."""
        if num_frames is None and len(trajectory) == 81:
            log.info("81 cameras: generating the model's 21 keyframes (every 4th camera), as the official code does.")
            from ...cameras import CameraTrajectory

            return CameraTrajectory(trajectory.cameras[keyframe_indices(81, NUM_KEYFRAMES)], fps=trajectory.fps / 4)
        return trajectory

    def preferred_size(self, height: int, width: int) -> tuple[int, int]:
        """The released models' aspect bucket nearest the image's aspect ratio."""
        return nearest_bucket(height, width)

    def enable_model_cpu_offload(self, device=None) -> None:
        """Weights stay on the CPU; each stage (text encoder, CLIP, VAE, transformer) moves to the GPU while it runs."""
        from ...optimization import apply_cpu_offload

        device = torch.device(device) if device is not None else (self.execution_device if self.execution_device.type != "cpu" else torch.device("cuda"))
        self._offload = apply_cpu_offload(self.components.modules(), device)
        self.execution_device = device

    def _use(self, *modules):
        """Context: ``modules`` on the execution device for one stage (a no-op without offload)."""
        return self._offload.use(*modules) if self._offload is not None else contextlib.nullcontext()

    def enable_xformers_memory_efficient_attention(self) -> None:
        from ...optimization import use_xformers

        use_xformers(self.components.modules())

    # ------------------------------------------------------------------ generation
    def fill(self, inputs: ChunkInputs) -> ChunkOutputs:
        T = len(inputs.cameras)
        H, W = inputs.cameras.height, inputs.cameras.width
        with oom_guard(H, W, T + 1):
            return self._fill(inputs, T, H, W)

    def _references(self, inputs: ChunkInputs, cams, anchor: torch.Tensor):
        """Reference frames [R,3,H,W], their w2c [R,4,4] and ref_index [R] (memory variants): the Spatial
        memory's retrieval for the keyframes (:meth:`SpatialStereoMemory.reference_frames`), or the anchor
        frame alone while no stored view has an image (the official single-view run)."""
        found = inputs.spatial_memory.reference_frames(cams, int(self.config.get("max_references", MAX_REFERENCES)),
                                                       features_model=self.config.get("reference_features"))  # fmt: skip
        if found is None:
            return anchor[None], torch.linalg.inv(cams.c2wb[:1].double()), torch.zeros(1, dtype=torch.long)
        images, c2w, ref_index = found
        return images, torch.linalg.inv(c2w), ref_index

    def _fill(self, inputs: ChunkInputs, T: int, H: int, W: int) -> ChunkOutputs:
        c = self.components
        dev = self.execution_device
        anchor = (inputs.anchor_frame if inputs.anchor_frame is not None else inputs.condition_image).float()
        anchor_cam = inputs.anchor_camera if inputs.anchor_camera is not None else inputs.cameras[0]
        pad = NEW_PER_CALL - T  # the last chunk of a trajectory may be short: repeat its last camera
        from ...cameras import CameraParameters

        cams = CameraParameters.stack([anchor_cam.as_batch(), inputs.cameras, *([inputs.cameras[T - 1].as_batch()] * pad)])
        renders = inputs.global_memory.render(cams[1:]) if inputs.renders is None or pad else inputs.renders
        rgb = torch.cat([anchor[None].to(renders.rgb), renders.rgb[:, :3].clamp(0, 1)])  # [21,3,H,W]
        hole = torch.cat([torch.zeros(1, H, W, device=renders.mask.device), (~renders.mask).float()])  # 1 = hole
        w2c = torch.linalg.inv(cams.c2wb.double())
        K = cams.Kb.double()
        prompt = inputs.prompt or ""
        negative = str(c.config.get("negative_prompt", self.config.get("negative_prompt", "")))
        steps = int(inputs.num_inference_steps or self.default_steps)
        guidance = float(self.default_guidance if inputs.guidance_scale is None else inputs.guidance_scale)
        use_cfg = c.sampler != "dmd" and guidance != 1.0
        tdtype = next(c.transformer.parameters()).dtype
        with self._use(c.text_encoder):
            text = sampling.encode_prompt(c.tokenizer, c.text_encoder, [prompt, negative] if use_cfg else [prompt], device=dev, dtype=tdtype)
        with self._use(c.image_encoder):
            clip = sampling.encode_image_clip(c.image_processor, c.image_encoder, anchor).to(dev, tdtype)
        refs = 0
        ref_images = None
        if self.uses_references:
            ref_images, ref_w2c, ref_index = self._references(inputs, cams, anchor)
        with self._use(c.vae):
            condition = sampling.condition_latents(c.vae, anchor, NUM_KEYFRAMES, str(c.config.get("latent_cond_mode", "first_frame_only")))
            render_latent = sampling.encode_keyframes(c.vae, rgb)
            ref_latent = None if ref_images is None else sampling.encode_keyframes(c.vae, ref_images)
        model_inputs = {
            "render_latent": render_latent.to(dev, tdtype),
            "render_mask": hole[None, None].to(dev, tdtype),
            "camera_embedding": plucker_embedding(K, w2c, H, W)[None].to(dev, tdtype),
        }
        if ref_latent is not None:
            z = ref_latent.to(dev)
            model_inputs["reference_latent"] = torch.cat([z, torch.ones_like(z[:, :4]), z], dim=1).to(tdtype)
            model_inputs["ref_index"] = ref_index
            tgt, ref = unified_camera_normalization(w2c, ref_w2c.to(w2c))
            model_inputs["camera_qt"] = camera_qt(tgt)[None].to(dev, tdtype)
            model_inputs["camera_qt_ref"] = camera_qt(ref)[None].to(dev, tdtype)
            refs = len(ref_index)
        progress = None if inputs.progress is None else (lambda i, n: inputs.progress(i, n, None))
        with self._use(c.transformer):
            latents = sampling.sample(c.transformer, c.scheduler, condition.to(dev), model_inputs, text[:1], text[1:] if use_cfg else None, clip,
                                      steps=steps, guidance_scale=guidance, generator=inputs.generator or torch.Generator().manual_seed(0),
                                      progress=progress)  # fmt: skip
        with self._use(c.vae):
            frames = sampling.decode_keyframes(c.vae, latents)[1 : 1 + T].to(renders.rgb.device)
        covered = renders.mask[:T]
        depth = torch.where(covered, renders.depth[:T], torch.zeros_like(renders.depth[:T]))
        confidence = torch.where(covered, 1.0, 0.5).to(frames)
        return ChunkOutputs(frames=frames, depth=depth, confidence=confidence, new_pixels=torch.zeros_like(covered),
                            extras={"holes": ~covered, "prior": renders.rgb[:T, :3].clamp(0, 1), "references": refs})  # fmt: skip

    # ------------------------------------------------------------------ training
    def __call__(self, batch: dict, **kwargs) -> dict:
        return self.forward(batch, **kwargs)

    def forward(self, batch: dict, **kwargs) -> dict:
        """Flow-matching loss of the transformer on a latent batch (see training.flow_matching_loss)."""
        from .training import flow_matching_loss

        return flow_matching_loss(self.transformer, batch, **kwargs)

    def extract_features(self, batch: dict, layer_indices) -> dict:
        """Backbone block outputs {i: [B, L, inner]} for a latent batch (see training.extract_features)."""
        from .training import extract_features

        return extract_features(self.transformer, batch, layer_indices)
