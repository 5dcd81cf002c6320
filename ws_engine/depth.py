"""Depth providers: the depth map (H,W) of the condition image, in scene units (> 0; 0 = unknown).

Three sources, tried in this order by :func:`resolve_depth`:

1. a depth map the user gives (:func:`depth_from_input`): an array, tensor, PIL image or file;
2. a ``transformers`` depth-estimation model (:class:`TransformersDepthEstimator`), e.g.
   ``depth-anything/Depth-Anything-V2-Small-hf`` (needs ``pip install "comfyui-worldstereo[neural]"``);
3. a layout prior (:func:`fallback_depth`): a floor below the camera meeting a backdrop, with a warning.

Depth is z (distance along the optical axis) for pinhole cameras and ray length for
equirectangular ones, as :func:`ws_engine.geometry.unproject` expects.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .cameras import CameraParameters
from .device import resolve_device
from .errors import (
    ConfigError,
    InvalidDepthError,
    MissingDependencyError,
    ModelLoadError,
    ShapeMismatchError,
    check_choice,
)
from .geometry import camera_rays, complete_depth
from .io import read_image_array

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "DEPTH_KINDS",
    "TransformersDepthEstimator",
    "clear_depth_model_cache",
    "depth_from_input",
    "disparity_to_depth",
    "fallback_depth",
    "is_metric_depth_model",
    "resolve_depth",
]

DEPTH_KINDS = ("depth", "disparity")
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
NEURAL_EXTRA = 'pip install "comfyui-worldstereo[neural]"'
FAR_LIMIT = 1000.0  # disparity-derived depths beyond FAR_LIMIT x the median depth count as unknown
RELATIVE_DEPTH_RATIO = 50.0  # far/near bound of depth made from relative disparity
METRIC_MODEL_TYPES = frozenset({"depth_pro", "glpn", "zoedepth"})  # predict metres, whatever the checkpoint
CHANNEL_TOLERANCE = 0.02  # channels of a grey depth image may differ by 2% of its range (JPEG, colour profiles)
MODEL_CACHE_SIZE = 2

# ---------------------------------------------------------------------------------------------
# 1. a depth map given by the user
# ---------------------------------------------------------------------------------------------
def depth_from_input(depth, *, size: tuple[int, int] | None = None, kind: str = "depth", scale: float = 1.0) -> torch.Tensor:
    """A depth map (H,W) float32 in scene units from a user's map; 0 marks unknown pixels.

    Args:
        depth: a numpy array or torch tensor of shape (H,W), (1,H,W), (H,W,1), (H,W,C), (1,H,W,C) or
            (C,H,W) with C = 3 equal channels (a depth IMAGE from a ComfyUI depth node) or 4 (alpha
            ignored); a PIL image; or the path of an image file (8/16-bit PNG, float TIFF/EXR) or a
            .npy/.npz array.
        size: (H,W) the map must have (the condition camera's size); None keeps its own size.
            A map of another size is resized by nearest-neighbour sampling with a warning.
        kind: how values are read.
            ``"depth"``: depth = value * scale, integer files included (a 16-bit PNG in millimetres
            takes scale=0.001).
            ``"disparity"``: inverse depth, depth = scale / value. Integer images are first divided
            by their dtype's maximum (255, 65535, ...) so that a normalised disparity image (white =
            near, as depth nodes such as Depth Anything write them) reads as values in [0, 1];
            the nearest possible pixel (value 1) is then at depth ``scale``. Disparity <= 0 means
            infinitely far and becomes unknown, and so do depths beyond 1000 x the median depth.
        scale: positive factor, see ``kind``.
    Returns:
        (H,W) float32 on the input tensor's device (CPU otherwise); non-finite or <= 0 depth is 0.
    Raises:
        ShapeMismatchError for a shape that is not one of the above, InvalidDepthError for a colour
        image or a map without a single valid pixel, InputFileError for a file that cannot be read.
    """
    check_choice("depth kind", kind, DEPTH_KINDS)
    scale = _positive("scale", scale)
    size = _check_size(size)
    values, int_max = _as_float_map(depth)
    if kind == "depth":
        out = values * scale
    else:
        disparity = values / int_max if int_max else values
        out = torch.where(disparity > 0, scale / disparity, torch.zeros_like(disparity))
    out = torch.where(torch.isfinite(out) & (out > 0), out, torch.zeros_like(out))
    if kind == "disparity":
        out = _drop_far(out)
    if size is not None and tuple(out.shape) != size:
        out = _resize_nearest(out, size)
    if not bool((out > 0).any()):
        raise InvalidDepthError(
            f"The depth map (read as kind={kind!r}, scale={scale:g}) has no valid pixel: every value is zero, "
            "negative or not finite. Check that you passed the right map; a map where white/large means NEAR is a "
            "disparity map (pass kind='disparity'); or leave depth out to estimate it with a depth model."
        )
    return out.float()


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}.") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}.")
    return v


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
        ok = all(int(s) == s for s in size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"size must be (height, width) in whole pixels > 0, got {size!r}.")
    return h, w


def _as_float_map(depth) -> tuple[torch.Tensor, int | None]:
    """The map as float (H,W) and the maximum of its integer dtype (None for float maps)."""
    if isinstance(depth, (str, os.PathLike)):
        depth = read_image_array(depth)
    elif isinstance(depth, Image.Image):
        depth = np.asarray(depth)
    if isinstance(depth, np.ndarray):
        if depth.dtype.kind not in "iuf":
            raise InvalidDepthError(f"depth must hold real numbers, got dtype {depth.dtype}; a mask is not a depth map.")
        int_max = int(np.iinfo(depth.dtype).max) if depth.dtype.kind in "iu" else None
        return _to_2d(torch.from_numpy(np.array(depth, dtype=np.float64 if int_max else depth.dtype.newbyteorder("=")))), int_max
    if not isinstance(depth, torch.Tensor):
        raise ShapeMismatchError(f"depth must be an array, tensor, PIL image or file path, got {type(depth).__name__}.")
    if depth.dtype == torch.bool or depth.is_complex():
        raise InvalidDepthError(f"depth must hold real numbers, got dtype {depth.dtype}; a mask is not a depth map.")
    int_max = None if depth.is_floating_point() else int(torch.iinfo(depth.dtype).max)
    return _to_2d(depth.detach()), int_max


def _to_2d(t: torch.Tensor) -> torch.Tensor:
    """(H,W) from every accepted layout; colour images and other shapes raise."""
    expected = "(H,W), (1,H,W), (H,W,1), (H,W,3), (H,W,4), (3,H,W) or (1,H,W,C)"
    shape = tuple(t.shape)
    if t.dim() == 4 and shape[0] == 1:
        t = t[0]
    if t.dim() == 3:
        if t.shape[-1] in (1, 3, 4):  # channels last: numpy, PIL, ComfyUI IMAGE
            t = _grey(t.movedim(-1, 0), shape)
        elif t.shape[0] in (1, 3):  # channels first: engine image layout
            t = _grey(t, shape)
    if t.dim() != 2 or 0 in t.shape:
        raise ShapeMismatchError(f"A depth map must have shape {expected}; got {shape}.")
    return t.float()


def _grey(channels: torch.Tensor, shape: tuple) -> torch.Tensor:
    """One channel from (C,H,W): the mean of the colour channels if they agree (alpha ignored)."""
    if channels.shape[0] == 1:
        return channels[0]
    r, g, b = torch.nan_to_num(channels[:3].float(), nan=0.0, posinf=0.0, neginf=0.0).unbind(0)
    low, high = torch.aminmax(r)
    spread = float(torch.maximum((r - g).abs().max(), (r - b).abs().max()))  # per-channel ops: fast on CPU
    if spread > CHANNEL_TOLERANCE * float(high - low):
        raise InvalidDepthError(
            f"The depth map of shape {shape} has channels that differ (by up to {spread:g}): it looks like a colour "
            "image or a colour-mapped depth preview. Pass the greyscale depth map itself (one channel, or three "
            "equal channels as a depth node's IMAGE output has)."
        )
    r, g, b = channels[:3].float().unbind(0)
    return (r + g + b) / 3


def _drop_far(depth: torch.Tensor) -> torch.Tensor:
    """Depth beyond FAR_LIMIT x the median valid depth becomes unknown (0)."""
    valid = depth[depth > 0]
    if valid.numel() == 0:
        return depth
    return torch.where(depth > FAR_LIMIT * valid.median(), torch.zeros_like(depth), depth)


def _resize_nearest(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize (H,W) -> size, with a warning naming both sizes.

    Nearest sampling keeps every output value a depth that was measured: interpolating would
    average a foreground edge with the background behind it (points floating in mid-air once
    unprojected) and blend unknown zeros into valid depth.
    """
    (h, w), (H, W) = depth.shape, size
    same_aspect = abs(h * W / w - H) < 1 or abs(w * H / h - W) < 1  # within a pixel
    message = f"The depth map is {h}x{w} (HxW) but the image is {H}x{W}; it was resized with nearest-neighbour sampling."
    if not same_aspect:
        message = (
            f"The depth map's aspect ratio ({w / h:.3f}) differs from the image's ({W / H:.3f}): the {h}x{w} (HxW) "
            f"map was STRETCHED to {H}x{W}, so its depth no longer lines up with the image. Pass the depth map made "
            "for this image, or crop/pad it to the image's aspect ratio first."
        )
    warnings.warn(message, UserWarning, stacklevel=3)
    return F.interpolate(depth[None, None], size=size, mode="nearest-exact")[0, 0]


# ---------------------------------------------------------------------------------------------
# 2. a transformers depth-estimation model
# ---------------------------------------------------------------------------------------------
_MODEL_CACHE: OrderedDict[tuple[str, str, torch.dtype], tuple[object, torch.nn.Module]] = OrderedDict()


def clear_depth_model_cache() -> None:
    """Forget the loaded depth models (frees their memory once nothing else holds them)."""
    _MODEL_CACHE.clear()


def is_metric_depth_model(config) -> bool:
    """Whether a ``transformers`` depth model config predicts metric depth (else relative disparity).

    Depth Anything (v1/v2, Prompt Depth Anything) say so in ``config.depth_estimation_type``;
    GLPN, ZoeDepth and Depth Pro always predict metres; DPT (MiDaS) and the rest predict relative
    inverse depth.
    """
    kind = getattr(config, "depth_estimation_type", None)
    if kind is not None:
        return kind == "metric"
    return getattr(config, "model_type", None) in METRIC_MODEL_TYPES


def disparity_to_depth(disparity: torch.Tensor, *, scene_depth: float = 3.0, max_ratio: float = RELATIVE_DEPTH_RATIO) -> torch.Tensor:
    """Depth (H,W) from a relative disparity map (H,W) of unknown scale, e.g. Depth Anything V2.

    The disparity is taken as proportional to inverse depth (the model's shift is assumed 0):
    with d99 the 99th percentile of the disparity, depth ~ d99 / max(disparity, d99 / max_ratio),
    so the nearest 1% of pixels share the nearest depth and nothing lies more than ``max_ratio``
    times farther (sky, disparity <= 0, included). The map is then scaled so that its median
    depth is ``scene_depth``. Every output pixel is finite and > 0.
    """
    scene_depth = _positive("scene_depth", scene_depth)
    max_ratio = _positive("max_ratio", max_ratio)
    d = torch.nan_to_num(disparity.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = d.flatten()
    near = flat.kthvalue(max(1, math.ceil(0.99 * flat.numel()))).values
    if not bool(near > 0):
        raise InvalidDepthError(
            "The relative disparity map is positive on fewer than 1% of its pixels, so it says nothing about depth "
            "(a blank image or a broken checkpoint). Pass depth= a depth map, or try another depth model."
        )
    depth = 1.0 / (d / near).clamp(min=1.0 / max_ratio, max=1.0)
    return depth * (scene_depth / depth.median())


class TransformersDepthEstimator:
    """A ``transformers`` depth-estimation model as a depth provider: image (3,H,W) -> depth (H,W).

    Args:
        model_id_or_path: a hub id (e.g. ``depth-anything/Depth-Anything-V2-Small-hf``) or a local
            folder holding ``config.json``, the weights and ``preprocessor_config.json``
            (as written by ``save_pretrained``). Loaded through ``AutoImageProcessor`` and
            ``AutoModelForDepthEstimation``; loaded models are shared per (source, device, dtype).
        device: ``"cpu"``, ``"cuda"``... (CUDA falls back to the CPU with a warning where absent).
        dtype: floating dtype of the weights.
        local_files_only: never touch the network (hub ids must already be in the local cache).
        metric: override what the config says (see :func:`is_metric_depth_model`).

    ``self.metric`` tells how the output is read: metric models give depth directly; relative
    models give disparity, made into depth by :func:`disparity_to_depth`.
    """

    def __init__(
        self,
        model_id_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
        *,
        metric: bool | None = None,
    ):
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}.")
        self.source = _model_source(model_id_or_path)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.processor, self.model = _load_depth_model(self.source, self.device, dtype, bool(local_files_only))
        self.metric = is_metric_depth_model(self.model.config) if metric is None else bool(metric)

    def __repr__(self) -> str:
        kind = "metric" if self.metric else "relative"
        return f"TransformersDepthEstimator({self.source!r}, {kind}, device={self.device}, dtype={self.dtype})"

    def __call__(self, image: torch.Tensor, *, scene_depth: float = 3.0) -> torch.Tensor:
        """Depth (H,W) float32 of ``image`` (3,H,W) in [0,1], on the image's device.

        Metric output is returned as predicted (holes from resampling overshoot filled by
        :func:`~ws_engine.geometry.complete_depth`); relative output goes through
        :func:`disparity_to_depth` with ``scene_depth`` as its median.
        """
        image = _check_image(image)
        scene_depth = _positive("scene_depth", scene_depth)
        size = tuple(image.shape[-2:])
        pixels = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        inputs = self.processor(images=pixels, return_tensors="pt")
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs["predicted_depth"] = outputs["predicted_depth"].float()
        prediction = _post_process(self.processor, outputs, size).to(image.device)
        if not self.metric:
            return disparity_to_depth(prediction, scene_depth=scene_depth)
        valid = torch.isfinite(prediction) & (prediction > 0)
        if not bool(valid.any()):
            raise InvalidDepthError(
                f"The depth model {self.source!r} predicted no positive depth for this image. "
                "Pass depth= a depth map, or try another depth model."
            )
        return complete_depth(torch.where(valid, prediction, 0.0), valid)


def _model_source(model_id_or_path) -> str:
    """An absolute folder path for a local model, else the hub id as given."""
    if not isinstance(model_id_or_path, (str, os.PathLike)) or not str(model_id_or_path).strip():
        raise ConfigError(
            f"depth_model must be a hub id such as {DEFAULT_DEPTH_MODEL!r} or a local folder, got {model_id_or_path!r}."
        )
    text = str(model_id_or_path).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelLoadError(f"{text!r} is a file; give the folder that holds config.json and the weights instead.")
    if isinstance(model_id_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        raise ModelLoadError(
            f"The depth model folder {text!r} does not exist. Give an existing folder written by save_pretrained, "
            f"or a hub id such as {DEFAULT_DEPTH_MODEL!r}."
        )
    return text


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"depth_model needs the 'transformers' package, which is not installed. Install it with: {NEURAL_EXTRA} "
            "(or pass depth= a depth map instead)."
        ) from exc
    return transformers


def _load_depth_model(source: str, device: torch.device, dtype: torch.dtype, local_files_only: bool):
    """(image processor, model in eval mode on ``device``), shared through a small LRU cache."""
    transformers = _import_transformers()
    key = (source, str(device), dtype)
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only)
        model = transformers.AutoModelForDepthEstimation.from_pretrained(source, local_files_only=local_files_only)
    except Exception as exc:  # whatever from_pretrained raises, the user sees what was tried and how to fix it
        where = f"the local folder {source!r}" if os.path.isdir(source) else f"the hub id {source!r}"
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not load a depth-estimation model from {where} with transformers AutoImageProcessor and "
            f"AutoModelForDepthEstimation (local_files_only={local_files_only}): {type(exc).__name__}: {reason}. "
            f"Give a hub id such as {DEFAULT_DEPTH_MODEL!r} (downloaded on first use, needs the network) or a local "
            "folder holding config.json, the weights (model.safetensors) and preprocessor_config.json as written "
            "by save_pretrained."
        ) from exc
    model = model.to(device=device, dtype=dtype).eval()
    _MODEL_CACHE[key] = (processor, model)
    while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return processor, model


def _post_process(processor, outputs, size: tuple[int, int]) -> torch.Tensor:
    """The prediction (H,W) at the image size, through the processor's own post-processing.

    That undoes model-specific steps (ZoeDepth's padding, Depth Pro's field of view) and resizes
    bicubically; processors without it get a plain bicubic resize.
    """
    post = getattr(processor, "post_process_depth_estimation", None)
    if post is None:
        prediction = outputs["predicted_depth"]
        return F.interpolate(prediction.reshape(1, 1, *prediction.shape[-2:]), size=size, mode="bicubic")[0, 0]
    kwargs = {"target_sizes": [size]}
    if "source_sizes" in inspect.signature(post).parameters:
        kwargs["source_sizes"] = [size]
    return post(outputs, **kwargs)[0]["predicted_depth"].reshape(size)


def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 or 0 in image.shape:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeMismatchError(f"image must be a tensor (3,H,W) with values in [0,1], got {shape}.")
    return image if image.is_floating_point() else image.float() / 255


# ---------------------------------------------------------------------------------------------
# 3. the fallback prior
# ---------------------------------------------------------------------------------------------
def fallback_depth(image: torch.Tensor, camera: CameraParameters | None = None, *, scene_depth: float = 3.0) -> torch.Tensor:
    """A layout prior (H,W) for when no depth is known, with a warning that names better options.

    Assumes a level camera (horizon through the principal point) above a flat floor, in front of a
    backdrop at ``scene_depth``: a fronto-parallel wall for pinhole cameras, a sphere around an
    equirectangular one. The camera height puts the bottom-centre pixel at half ``scene_depth``,
    so depth rises from ``scene_depth / 2`` at the bottom row to ``scene_depth`` where the floor
    meets the backdrop and stays there above. Continuous, > 0, deterministic; the image gives
    only its size and device. ``camera`` defaults to a centred 60-degree pinhole camera.
    """
    image = _check_image(image)
    scene_depth = _positive("scene_depth", scene_depth)
    H, W = image.shape[-2:]
    camera = _check_camera(camera, H, W)
    warnings.warn(
        f"No depth was given, so a flat layout prior was used (a floor meeting a backdrop at {scene_depth:g}). "
        "For real geometry pass depth= a depth map from any depth tool (kind='disparity' for maps where white "
        f"is near), or depth_model={DEFAULT_DEPTH_MODEL!r} (needs {NEURAL_EXTRA}).",
        UserWarning,
        stacklevel=2,
    )
    down = camera_rays(camera)[0, ..., 1].to(image.device)  # (H,W) downward component of each ray
    height = 0.5 * scene_depth * float(down[-1].max().clamp(min=0))
    on_floor = (down * scene_depth > height) & (height > 0)
    return torch.where(on_floor, height / down.clamp(min=1e-12), torch.full_like(down, scene_depth))


def _check_camera(camera, H: int, W: int) -> CameraParameters:
    if camera is None:
        return CameraParameters.from_fov(60.0, W, H)
    if not isinstance(camera, CameraParameters):
        raise ConfigError(f"camera must be a CameraParameters or None, got {type(camera).__name__}.")
    if len(camera) != 1:
        raise ShapeMismatchError(f"camera must be a single camera (the condition image's), got a batch of {len(camera)}.")
    if (camera.height, camera.width) != (H, W):
        raise ShapeMismatchError(
            f"The camera is {camera.height}x{camera.width} (HxW) but the image is {H}x{W}; "
            "rescale the camera to the image (CameraParameters.rescale)."
        )
    return camera


# ---------------------------------------------------------------------------------------------
# 4. the entry point
# ---------------------------------------------------------------------------------------------
def resolve_depth(
    image: torch.Tensor,
    camera: CameraParameters | None = None,
    *,
    depth=None,
    depth_kind: str = "depth",
    depth_scale: float = 1.0,
    depth_model: str | os.PathLike | TransformersDepthEstimator | None = None,
    device: str | torch.device = "cpu",
    scene_depth: float = 3.0,
) -> torch.Tensor:
    """The condition image's depth (H,W) float32 on the image's device (0 = unknown).

    Precedence: ``depth`` (read by :func:`depth_from_input` with ``depth_kind``/``depth_scale``
    and resized to the image; a ``depth_model`` given too is ignored with a warning), else
    ``depth_model`` (a hub id, a folder, or a built :class:`TransformersDepthEstimator`; relative
    models get median ``scene_depth``), else :func:`fallback_depth` with its warning. ``None`` or
    an empty string means not given. All arguments are checked before any model is loaded.
    """
    image = _check_image(image)
    H, W = image.shape[-2:]
    check_choice("depth kind", depth_kind, DEPTH_KINDS)
    depth_scale = _positive("depth_scale", depth_scale)
    scene_depth = _positive("scene_depth", scene_depth)
    camera = _check_camera(camera, H, W)
    depth = None if isinstance(depth, str) and not depth.strip() else depth
    depth_model = None if isinstance(depth_model, str) and not depth_model.strip() else depth_model
    if depth_model is not None and not isinstance(depth_model, TransformersDepthEstimator):
        _model_source(depth_model)
    if depth is not None:
        if depth_model is not None:
            warnings.warn(
                f"Both depth and depth_model={str(getattr(depth_model, 'source', depth_model))!r} were given; the given "
                "depth map is used and depth_model is ignored. Leave one of them out to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        return depth_from_input(depth, size=(H, W), kind=depth_kind, scale=depth_scale).to(image.device)
    if depth_model is not None:
        estimator = depth_model if isinstance(depth_model, TransformersDepthEstimator) else TransformersDepthEstimator(depth_model, device=device)
        return estimator(image, scene_depth=scene_depth)
    return fallback_depth(image, camera, scene_depth=scene_depth)
