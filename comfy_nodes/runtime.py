"""The one place that talks to ComfyUI's runtime: progress, cancel, folders, devices.

Every helper works with or without ComfyUI. Inside ComfyUI they call ``comfy.utils``,
``comfy.model_management`` and ``folder_paths`` (imported lazily, never at module level); outside
(tests, scripts) folders come from :func:`set_directories` (default ``./input``, ``./output``,
``./models/worldstereo``), progress is silent and :func:`request_interrupt` stands in for ComfyUI's
Cancel button.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import torch

from ws_engine.errors import GenerationCancelled, InputFileError, OutputPathError, WorldStereoError

MODEL_FOLDER = "worldstereo"  # models/worldstereo/<model folder>/config.json
MAX_PREVIEW = 512

_standalone = {"input": Path("input"), "output": Path("output"), "models": Path("models") / MODEL_FOLDER}
_interrupt = {"requested": False}


def _comfy(name: str):
    """ComfyUI's module ``name`` or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None and _comfy("comfy.model_management") is not None


def set_directories(*, input=None, output=None, models=None) -> None:
    """Folders used outside ComfyUI (inside it, ComfyUI's own folders are used)."""
    for key, value in (("input", input), ("output", output), ("models", models)):
        if value is not None:
            _standalone[key] = Path(value)


def register_model_folder() -> None:
    """Register ``models/worldstereo`` with folder_paths (inside ComfyUI; else nothing)."""
    fp = _comfy("folder_paths")
    if fp is None:
        return
    if MODEL_FOLDER not in getattr(fp, "folder_names_and_paths", {}):
        fp.add_model_folder_path(MODEL_FOLDER, os.path.join(fp.models_dir, MODEL_FOLDER))


# ----------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------
def input_directory() -> Path:
    fp = _comfy("folder_paths")
    return Path(fp.get_input_directory()) if fp is not None else _standalone["input"]


def output_directory() -> Path:
    fp = _comfy("folder_paths")
    return Path(fp.get_output_directory()) if fp is not None else _standalone["output"]


def model_directories() -> list[Path]:
    fp = _comfy("folder_paths")
    if fp is not None:
        register_model_folder()
        return [Path(p) for p in fp.get_folder_paths(MODEL_FOLDER)]
    return [_standalone["models"]]


def input_file(name: str, what: str) -> Path | None:
    """The file ``name`` inside ComfyUI's input folder (None for an empty name).

    Raises InputFileError for a path that leaves the input folder or a file that does not exist.
    """
    name = (name or "").strip().strip('"')
    if not name:
        return None
    root = input_directory().resolve()
    path = Path(name)
    path = (path if path.is_absolute() else root / path).resolve()
    if path != root and root not in path.parents:
        raise InputFileError(
            f"The {what} {name!r} is outside ComfyUI's input folder ({root}). Copy the file into the input folder and give its name "
            "(or a path relative to that folder)."
        )
    if not path.is_file():
        raise InputFileError(f"The {what} {name!r} was not found in ComfyUI's input folder ({root}); check the name.")
    return path


def input_fingerprint(name: str, what: str):
    """For IS_CHANGED: the content hash of an input-folder file ("" for none; NaN, so the node runs
    and reports the error, for a bad name)."""
    try:
        path = input_file(name, what)
    except WorldStereoError:
        return float("nan")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""


def output_file(prefix: str, suffix: str) -> tuple[Path, str, str]:
    """A new file ``<prefix>_00001_<suffix>`` under the output folder: (path, subfolder, filename).

    ``prefix`` may hold subfolders (``WorldStereo/scene``); the counter continues past existing
    files. Raises OutputPathError for a prefix that leaves the output folder.
    """
    root = output_directory().resolve()
    prefix = (prefix or "").strip() or "WorldStereo"
    target = (root / prefix).resolve()
    if root not in target.parents:
        raise OutputPathError(f"filename_prefix {prefix!r} leaves ComfyUI's output folder; use a name such as 'WorldStereo/scene'.")
    folder, stem = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.name[len(stem) + 1 : len(stem) + 6] for p in folder.glob(f"{stem}_*")]
    counter = max([int(c) for c in taken if c.isdigit()], default=0) + 1
    filename = f"{stem}_{counter:05d}_{suffix}"
    subfolder = "" if folder == root else folder.relative_to(root).as_posix()
    return folder / filename, subfolder, filename


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
def torch_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def intermediate_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def soft_empty_cache() -> None:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()


# ----------------------------------------------------------------------------------------------
# progress and cancel
# ----------------------------------------------------------------------------------------------
def request_interrupt(value: bool = True) -> None:
    """Outside ComfyUI: make the next :func:`check_interrupted` cancel (tests, scripts)."""
    _interrupt["requested"] = value


def check_interrupted() -> None:
    """Raise if the user pressed Cancel: ComfyUI's own interruption inside ComfyUI (the run stops
    quietly), GenerationCancelled outside it."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    if _interrupt["requested"]:
        _interrupt["requested"] = False
        raise GenerationCancelled("Cancelled by the user.")


class Progress:
    """A node's progress bar (ComfyUI's ProgressBar; silent outside ComfyUI) that also honours Cancel."""

    def __init__(self, total: int):
        utils = _comfy("comfy.utils")
        self.total = max(1, int(total))
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def __call__(self, step: int, total: int | None = None, preview: torch.Tensor | None = None) -> None:
        """Set the bar to ``step`` of ``total`` (optional preview image (3,H,W) in [0,1]), then check Cancel."""
        if total:
            self.total = int(total)
        if self._bar is not None:
            self._bar.update_absolute(int(step), self.total, _preview(preview))
        check_interrupted()


def _preview(image: torch.Tensor | None):
    if image is None:
        return None
    from PIL import Image

    img = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return ("JPEG", Image.fromarray(img), MAX_PREVIEW)
