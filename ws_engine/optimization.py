"""Speed and memory switches of the seed API (``enable_xformers_memory_efficient_attention``,
``enable_model_cpu_offload``). Each returns whether it changed anything."""

from __future__ import annotations

import importlib.util
import warnings

from .errors import MissingDependencyError

__all__ = ["enable_xformers_memory_efficient_attention", "enable_model_cpu_offload"]


def _apply(model, hook_name: str, nothing_to_do: str) -> bool:
    """Call the backbone's ``hook_name`` if it has one; otherwise warn that nothing changes."""
    backbone = getattr(model, "backbone", model)
    hook = getattr(backbone, hook_name, None)
    if hook is None:
        warnings.warn(f"The {getattr(backbone, 'name', '?')!r} backbone has {nothing_to_do}.", stacklevel=3)
        return False
    hook()
    return True


def enable_xformers_memory_efficient_attention(model) -> bool:
    """Route the backbone's attention through xformers (needs ``pip install "comfyui-worldstereo[xformers]"``)."""
    if importlib.util.find_spec("xformers") is None:
        raise MissingDependencyError(
            'xformers is not installed: pip install "comfyui-worldstereo[xformers]" (CUDA only), or leave enable_xformers off.'
        )
    return _apply(model, "enable_xformers_memory_efficient_attention", "no attention layers; xformers changes nothing")


def enable_model_cpu_offload(model) -> bool:
    """Keep the backbone's weights on the CPU until each module runs (neural backbones)."""
    return _apply(model, "enable_model_cpu_offload", "no weights; CPU offload changes nothing")
