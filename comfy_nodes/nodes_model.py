"""WorldStereo Load Model: the training-free model or a model folder from ``models/worldstereo``."""

from __future__ import annotations

from pathlib import Path

import torch

from ws_engine.errors import ModelLoadError
from ws_engine.pipeline import WorldStereoPipeline

from . import runtime

CATEGORY = "WorldStereo"
DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")
ATTENTION = ("sdpa", "xformers")
GEOMETRIC = "geometric"


def model_folders() -> dict[str, Path]:
    """Model folders (holding a config.json) up to two levels under every ``models/worldstereo``, by name."""
    found: dict[str, Path] = {}
    for root in runtime.model_directories():
        if not root.is_dir():
            continue
        for config in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
            found.setdefault(config.parent.relative_to(root).as_posix(), config.parent)
    return found


class WorldStereoLoadModel:
    DESCRIPTION = (
        "Loads a WorldStereo model. 'geometric' is the training-free model (no weights, runs on any CPU); other entries are the "
        "model folders found in ComfyUI/models/worldstereo."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("WS_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ([GEOMETRIC, *model_folders()], {"default": GEOMETRIC, "tooltip": "'geometric' or a folder in models/worldstereo."}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: ComfyUI's device."}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip": "Weights dtype of neural models (auto: bfloat16 on a GPU that has it, else float32)."}),
                "attention": (list(ATTENTION), {"default": "sdpa", "tooltip": "Attention of neural models; xformers needs the xformers extra."}),
                "cpu_offload": ("BOOLEAN", {"default": False, "tooltip": "Keep neural weights on the CPU until each module runs."}),
            }
        }

    def load(self, model, device, dtype, attention, cpu_offload):
        if model == GEOMETRIC:
            source = GEOMETRIC
        else:
            folders = model_folders()
            if model not in folders:
                where = ", ".join(str(p) for p in runtime.model_directories())
                raise ModelLoadError(f"The model folder {model!r} was not found in {where}; pick another model or put it there (a folder with config.json).")
            source = folders[model]
        target = runtime.torch_device() if device == "auto" else torch.device(device)
        pipe = WorldStereoPipeline(
            source, device=str(target), torch_dtype=DTYPES[dtype], enable_xformers=attention == "xformers", enable_cpu_offload=cpu_offload
        )
        return (pipe,)
