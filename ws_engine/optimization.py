"""Speed and memory switches of the seed API (``enable_xformers_memory_efficient_attention``,
``enable_model_cpu_offload``). Each returns whether it changed anything."""

from __future__ import annotations

import importlib.util
import warnings

from .errors import MissingDependencyError

__all__ = ["enable_xformers_memory_efficient_attention", "enable_model_cpu_offload"]


def _backbone(model):
    return getattr(model, "backbone", model)


def enable_xformers_memory_efficient_attention(model) -> bool:
    """Route the backbone's attention through xformers (needs ``pip install "comfyui-worldstereo[xformers]"``)."""
    if importlib.util.find_spec("xformers") is None:
        raise MissingDependencyError(
            'xformers is not installed: pip install "comfyui-worldstereo[xformers]" (CUDA only), or leave enable_xformers off.'
        )
    backbone = _backbone(model)
    hook = getattr(backbone, "enable_xformers_memory_efficient_attention", None)
    if hook is None:
        warnings.warn(f"The {getattr(backbone, 'name', '?')!r} backbone has no attention layers; xformers changes nothing.", stacklevel=2)
        return False
    hook()
    return True


def enable_model_cpu_offload(model) -> bool:
    """Keep the backbone's weights on the CPU until each module runs (neural backbones)."""
    backbone = _backbone(model)
    hook = getattr(backbone, "enable_model_cpu_offload", None)
    if hook is None:
        warnings.warn(f"The {getattr(backbone, 'name', '?')!r} backbone has no weights; CPU offload changes nothing.", stacklevel=2)
        return False
    hook()
    return True
