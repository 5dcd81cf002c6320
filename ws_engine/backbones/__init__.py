"""Backbones that fill the video from the memories, by name (``vdm_config["backbone"]``)."""

from __future__ import annotations

from ..errors import ConfigError, MissingDependencyError, check_choice
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
        from .worldstereo.checkpoint import NEURAL_HINT

        try:
            from .worldstereo.neural import WorldStereoBackbone
        except ImportError as e:
            raise MissingDependencyError(
                f"The neural 'worldstereo' backbone needs diffusers and transformers ({e}): {NEURAL_HINT}. "
                "Without them use vdm_config={'backbone': 'geometric'} (training-free, CPU)."
            ) from None
        return WorldStereoBackbone(config)
    return GeometricBackbone(config)
