"""Backbones that fill the video from the memories, by name (``vdm_config["backbone"]``)."""

from __future__ import annotations

from ..errors import ConfigError, ModelLoadError, check_choice
from .base import Backbone, ChunkInputs, ChunkOutputs
from .geometric import GeometricBackbone

__all__ = ["Backbone", "ChunkInputs", "ChunkOutputs", "GeometricBackbone", "BACKBONES", "build_backbone"]

BACKBONES = ("geometric", "worldstereo")


def build_backbone(vdm_config: dict | None) -> Backbone:
    """The backbone ``vdm_config["backbone"]`` (default ``"geometric"``) built from the rest of the config."""
    config = dict(vdm_config or {})
    if not isinstance(config.get("backbone", "geometric"), str):
        raise ConfigError(f"vdm_config['backbone'] must be a name, got {config.get('backbone')!r}.")
    name = check_choice("backbone", config.pop("backbone", "geometric"), BACKBONES)
    if name == "worldstereo":
        raise ModelLoadError(
            "The neural 'worldstereo' backbone (WorldStereo 2.0 on diffusers) is not part of this version yet: "
            "it needs ws_engine.backbones.worldstereo, which a later release adds, and the 'neural' extra "
            "(pip install 'comfyui-worldstereo[neural]': diffusers, transformers, huggingface_hub). Use vdm_config={'backbone': 'geometric'} "
            "(training-free, CPU) for now."
        )
    return GeometricBackbone(config)
