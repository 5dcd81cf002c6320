"""Loading the released WorldStereo 2.0 checkpoints (``hanshanxue/WorldStereo``) and their Wan base model.

A variant folder holds ``config.json`` (``base_model``, ``controlnet_cfg``, ...) and
``model.safetensors``; the variant is the folder's name (``worldstereo-camera``,
``worldstereo-memory``, ``worldstereo-memory-dmd``). The base model (a diffusers Wan 2.1 I2V
folder or hub id) gives the transformer backbone, VAE, UMT5 text encoder and tokenizer, CLIP image
encoder and processor, and scheduler. The checkpoint is loaded non-strictly on top.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import MissingDependencyError, ModelLoadError

__all__ = ["VARIANTS", "LoadReport", "WorldStereoComponents", "load_components", "read_variant_config", "resolve_variant_folder"]

log = logging.getLogger("ws_engine")

NEURAL_HINT = 'pip install "comfyui-worldstereo[neural]" (diffusers, transformers, huggingface_hub)'
#: variant -> (transformer class name, sampler)
VARIANTS = {
    "worldstereo-camera": ("WorldStereoModel", "unipc"),
    "worldstereo-memory": ("WorldStereoRefSModel", "unipc"),
    "worldstereo-memory-dmd": ("WorldStereoRefSModel", "dmd"),
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class LoadReport:
    """What the checkpoint gave: loaded key count, model keys it lacked, keys the model does not have."""

    loaded: int = 0
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)

    def line(self, variant: str) -> str:
        """One readable line (missing backbone keys are normal: they come from base_model)."""
        backbone = [k for k in self.missing if not k.startswith(("controlnet.", "camera_embedding.", "ref_index_embedding."))]
        control = [k for k in self.missing if k not in backbone]
        parts = [f"{variant}: {self.loaded} tensors loaded from {WEIGHTS_FILE}"]
        if backbone:
            parts.append(f"{len(backbone)} backbone tensors kept from base_model")
        if control:
            parts.append(f"{len(control)} control-branch tensors MISSING (left at their initial values: {', '.join(control[:3])}...)")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected tensors ignored ({', '.join(self.unexpected[:3])}...)")
        return "; ".join(parts)


@dataclass
class WorldStereoComponents:
    """Everything a variant needs to sample: the transformer and the base model's parts."""

    variant: str
    config: dict
    transformer: torch.nn.Module
    vae: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: object = None
    image_encoder: torch.nn.Module | None = None
    image_processor: object = None
    scheduler: object = None
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def sampler(self) -> str:
        return VARIANTS.get(self.variant, ("", "unipc"))[1]

    def modules(self) -> dict:
        """The torch modules by name (for devices, dtypes and offloading)."""
        names = ("transformer", "vae", "text_encoder", "image_encoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def resolve_variant_folder(repo_or_dir, subfolder: str | None = None, *, local_files_only: bool = False, revision: str | None = None,
                           cache_dir=None) -> Path:  # fmt: skip
    """The local folder with config.json + model.safetensors: ``<dir>/<subfolder>``, ``<dir>`` itself,
    or the hub repo's ``<subfolder>`` downloaded through huggingface_hub (the cache only with
    ``local_files_only``)."""
    path = Path(str(repo_or_dir)).expanduser()
    if path.exists():
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise ModelLoadError(f"{folder} is not a folder; give the folder holding {CONFIG_FILE} and {WEIGHTS_FILE} (or its parent and subfolder=).")
        return folder
    if not _is_hub_id(str(repo_or_dir)):
        raise ModelLoadError(
            f"{str(repo_or_dir)!r} is neither a folder nor a hub repo id like 'hanshanxue/WorldStereo'. Give 'geometric', a folder "
            f"with {CONFIG_FILE} (written by WorldStereo.save_pretrained, or a WorldStereo 2.0 variant with {WEIGHTS_FILE}), or a hub id."
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise MissingDependencyError(f"Loading from the Hugging Face hub needs huggingface_hub: {NEURAL_HINT}.") from e
    files = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            files.append(hf_hub_download(str(repo_or_dir), name, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                                         local_files_only=local_files_only))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - any hub failure (offline, missing file, auth) is one message
            where = f"{repo_or_dir}/{subfolder or ''}".rstrip("/")
            hint = " (local_files_only=True: download it once with network access, or pass a local folder)" if local_files_only else ""
            raise ModelLoadError(f"Could not get {name} of {where}{hint}: {type(e).__name__}: {e}".strip()) from None
    return Path(files[0]).parent


def read_variant_config(folder) -> tuple[str, dict]:
    """(variant, config) of a variant folder; typed ModelLoadError with the fix for what is wrong."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"{folder} has no {CONFIG_FILE}. Pass 'geometric' for the training-free model, a folder written by "
            f"WorldStereo.save_pretrained(), or a WorldStereo 2.0 variant folder ({CONFIG_FILE} + {WEIGHTS_FILE})."
        )
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{folder} holds {', '.join(pickles)} but no {WEIGHTS_FILE}. Pickle checkpoints are refused (loading one can run "
                f"arbitrary code); only safetensors are read. Convert it where you trust it: torch.load it, then "
                f"safetensors.torch.save_file(state_dict, '{WEIGHTS_FILE}')."
            )
        raise ModelLoadError(f"{folder} has no {WEIGHTS_FILE}; download the variant's weights next to its {CONFIG_FILE}.")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{folder / CONFIG_FILE} is not readable JSON ({e}).") from None
    missing = [k for k in ("base_model", "controlnet_cfg") if k not in config]
    if missing:
        raise ModelLoadError(
            f"{folder / CONFIG_FILE} lacks {' and '.join(missing)}: a WorldStereo 2.0 config names its Wan base model "
            "(base_model, e.g. 'Wan-AI/Wan2.1-I2V-14B-480P-Diffusers') and its control branch (controlnet_cfg)."
        )
    variant = str(config.get("variant", folder.name))
    if variant not in VARIANTS:
        raise ModelLoadError(
            f"Unknown WorldStereo variant {variant!r} (the folder name): use one of {', '.join(VARIANTS)}, "
            "or set \"variant\" in config.json."
        )
    if int(config.get("nframe", 21)) != 21:
        raise ModelLoadError(f"{folder / CONFIG_FILE} has nframe={config['nframe']}; the released models take 21 keyframes (nframe 21).")
    if int(config["controlnet_cfg"].get("mask_downsample", 1)) != 1:
        raise ModelLoadError("controlnet_cfg mask_downsample must be 1: the render mask is given per keyframe (the released models use 1).")
    return variant, config


def _check_shapes(model: torch.nn.Module, state: dict, folder: Path) -> None:
    own = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        listed = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:5])
        raise ModelLoadError(
            f"{len(wrong)} tensors of {folder / WEIGHTS_FILE} do not fit the model built from its config ({listed}). The checkpoint is "
            "for another configuration: check base_model and controlnet_cfg in config.json."
        )


def load_state(model: torch.nn.Module, folder: Path, variant: str) -> LoadReport:
    """Load ``model.safetensors`` into ``model`` non-strictly; log one line with what was missing/unexpected."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({e}); download it again.") from None
    _check_shapes(model, state, folder)
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(len(state) - len(result.unexpected_keys), list(result.missing_keys), list(result.unexpected_keys))
    log.info(report.line(variant))
    return report


def load_components(repo_or_dir, subfolder: str | None = None, *, local_files_only: bool = False, torch_dtype=torch.float32,
                    revision: str | None = None, with_base: bool = True) -> WorldStereoComponents:  # fmt: skip
    """Build a variant as the official wrapper does: the transformer class from ``base_model/transformer``
    with ``controlnet_cfg``, ``build_controlnet``, ``model.safetensors`` loaded non-strictly; then the
    base model's VAE, text encoder, tokenizer, CLIP encoder/processor and the variant's scheduler.

    The control branch stays float32 when ``torch_dtype`` is half precision (as the official code).
    """
    try:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
        from transformers import (
            AutoTokenizer,
            CLIPImageProcessor,
            CLIPVisionModel,
            UMT5EncoderModel,
        )

        from .transformer import WorldStereoModel, WorldStereoRefSModel
    except ImportError as e:
        raise MissingDependencyError(f"The neural WorldStereo backbone needs diffusers and transformers: {NEURAL_HINT}.") from e
    folder = resolve_variant_folder(repo_or_dir, subfolder, local_files_only=local_files_only, revision=revision)
    variant, config = read_variant_config(folder)
    base = str(config["base_model"])
    kw = {"local_files_only": local_files_only}
    cls = {"WorldStereoModel": WorldStereoModel, "WorldStereoRefSModel": WorldStereoRefSModel}[VARIANTS[variant][0]]
    try:
        transformer = cls.from_pretrained(base, subfolder="transformer", controlnet_cfg=dict(config["controlnet_cfg"]), torch_dtype=torch_dtype, **kw)  # fmt: skip
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load the transformer of base_model {base!r}: {e}") from None
    transformer.build_controlnet(freeze_backbone=bool(config.get("freeze_backbone", True)))
    report = load_state(transformer, folder, variant)
    parts = WorldStereoComponents(variant, config, transformer.eval(), report=report)
    if not with_base:
        return parts
    try:
        parts.vae = AutoencoderKLWan.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32, **kw).eval()
        parts.text_encoder = UMT5EncoderModel.from_pretrained(base, subfolder="text_encoder", dtype=torch_dtype, **kw).eval()
        parts.tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        parts.image_encoder = CLIPVisionModel.from_pretrained(base, subfolder="image_encoder", dtype=torch.float32, **kw).eval()
        # do_rescale=False and 0-255 pixels: the official quirk the released weights were trained with
        parts.image_processor = CLIPImageProcessor.from_pretrained(base, subfolder="image_processor", do_rescale=False, **kw)
        if VARIANTS[variant][1] == "dmd":
            from .dmd import FlowDMDScheduler

            parts.scheduler = FlowDMDScheduler(start_timesteps=config.get("dmd_start_steps", 250), num_train_timesteps=config.get("dmd_end_steps", 1000),
                                               shift=config.get("gen_shift", 5.0), dmd_steps=config.get("dmd_steps", 4))  # fmt: skip
        else:
            parts.scheduler = UniPCMultistepScheduler.from_pretrained(base, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load the base model {base!r} (vae, text_encoder, tokenizer, image_encoder, image_processor, scheduler): {e}") from None
    for p in (*parts.vae.parameters(), *parts.text_encoder.parameters(), *parts.image_encoder.parameters()):
        p.requires_grad_(False)
    return parts
