"""Speed and memory switches of the seed API: xformers attention, model CPU offload, dtypes.

``enable_xformers_memory_efficient_attention(model)`` and ``enable_model_cpu_offload(model)`` call the
backbone's hook of the same name and return whether anything changed (the geometric backbone has no
attention layers and no weights: a warning says so). SDPA is the default attention everywhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings

import torch

from .errors import ConfigError, MissingDependencyError

__all__ = ["CpuOffload", "apply_cpu_offload", "enable_model_cpu_offload", "enable_xformers_memory_efficient_attention", "resolve_dtype", "use_xformers"]

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip


def resolve_dtype(torch_dtype) -> torch.dtype:
    """A torch dtype from a dtype or a name (fp32, fp16, bf16, float16, bfloat16, auto: bf16 on CUDA with bf16, else fp32)."""
    if isinstance(torch_dtype, torch.dtype) and torch_dtype in DTYPES.values():
        return torch_dtype
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, str):
        name = torch_dtype.lower().removeprefix("torch.")
        if name == "auto":
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        if name in DTYPES:
            return DTYPES[name]
    raise ConfigError(f"torch_dtype must be one of {', '.join(DTYPES)}, auto or a torch dtype among them; got {torch_dtype!r}.")


def _apply(model, hook_name: str, nothing_to_do: str) -> bool:
    """Call the backbone's ``hook_name`` if it has one; otherwise warn that nothing changes."""
    backbone = getattr(model, "backbone", model)
    hook = getattr(backbone, hook_name, None)
    if hook is None:
        warnings.warn(f"The {getattr(backbone, 'name', '?')!r} backbone has {nothing_to_do}.", stacklevel=3)
        return False
    hook()
    return True


def use_xformers(modules: dict) -> None:
    """Route the attention of diffusers modules through xformers (CUDA only)."""
    if importlib.util.find_spec("xformers") is None:
        raise MissingDependencyError(
            'xformers is not installed: pip install "comfyui-worldstereo[xformers]" (CUDA only), or leave it off: SDPA is the default.'
        )
    if not torch.cuda.is_available():
        raise ConfigError("xformers attention needs a CUDA GPU; on this machine the default SDPA attention is used.")
    for module in modules.values():
        if hasattr(module, "set_attention_backend"):
            module.set_attention_backend("xformers")


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


class CpuOffload:
    """Keeps modules on the CPU; :meth:`use` moves one to the execution device while a stage runs and
    back afterwards, so at most one large module occupies the device (like diffusers' model offload)."""

    def __init__(self, modules: dict, device):
        self.modules = dict(modules)
        self.device = torch.device(device)
        for module in self.modules.values():
            module.to("cpu")

    @contextlib.contextmanager
    def use(self, *modules):
        for m in modules:
            m.to(self.device)
        try:
            yield
        finally:
            for m in modules:
                m.to("cpu")


def apply_cpu_offload(modules: dict, execution_device) -> CpuOffload:
    """Keep ``modules`` (name -> nn.Module) on the CPU; ``offload.use(m)`` puts ``m`` on ``execution_device``
    for one stage. A CUDA device without CUDA is a ConfigError."""
    device = torch.device(execution_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CPU offload moves weights to a CUDA GPU while they run, and there is none here; run on the CPU instead.")
    return CpuOffload(modules, device)
