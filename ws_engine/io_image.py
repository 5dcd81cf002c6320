"""Images in and out: load any common image as (3,H,W) float32 in [0,1]; depth maps in their own dtype.

Import these from :mod:`ws_engine.io`. Pillow, OpenCV and numpy are imported inside the functions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputFileError, OutputPathError, ShapeMismatchError, WorldStereoError

__all__ = [
    "IMAGE_SUFFIXES",
    "load_image",
    "load_image_with_alpha",
    "read_image_array",
    "save_image",
    "save_depth_png16",
    "save_frame_grid",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FLOAT_TOLERANCE = 0.02  # float pixels this far outside [0,1] are clamped; further out is an error
_INTEGER_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


# loading --------------------------------------------------------------------------------------
def load_image(source, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Any image as RGB (3,H,W) float32 in [0,1]; an alpha channel is dropped (see ``load_image_with_alpha``).

    ``source``: a path (PNG, JPEG, WebP, TIFF, BMP...), a PIL image, a numpy array (H,W) or
    (H,W,1|3|4), or a tensor (3,H,W), (H,W,3), (1,3,H,W), (1,H,W,3) or (H,W); RGBA inputs may
    have 4 channels in place of 3. uint8 is divided by 255, uint16 (16-bit PNG/TIFF) by 65535;
    float values must lie in [0,1]: overshoot up to ``FLOAT_TOLERANCE`` is clamped, more is an error.
    Grayscale is replicated to 3 channels, palettes and CMYK are converted, the EXIF orientation of a
    file is applied (not to 16-bit colour files, which OpenCV reads). ``size=(H,W)`` resizes (bicubic, antialiased).
    """
    return load_image_with_alpha(source, size=size)[0]


def load_image_with_alpha(source, *, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`load_image`, and also the alpha channel (H,W) in [0,1], or None if the image has none."""
    values = _image_values(source)  # (H,W,C) float32, C in 1..4
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise _source_error(source, f"is empty ({values.shape[1]}x{values.shape[0]} pixels)", "Pass an image with at least one pixel.")
    channels = values.shape[2]
    rgb = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=2)
    alpha = values[..., -1] if channels in (2, 4) else None
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha))
    if size is not None:
        h, w = _check_size(size)
        rgb_t = _resize(rgb_t, h, w)
        alpha_t = None if alpha_t is None else _resize(alpha_t[None], h, w)[0]
    return rgb_t, alpha_t


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """A depth map or image file as stored: (H,W) or (H,W,C) in the file's dtype, channels in RGB(A) order.

    Reads 16-bit PNG, 32-bit float TIFF, EXR (if this OpenCV build has OpenEXR), any 8-bit image,
    ``.npy`` and ``.npz`` (the array named ``depth``, else the first one). Values are not scaled.
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return _read_numpy(path)
    if suffix == ".exr":
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # OpenCV reads EXR only when this is set
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:  # formats OpenCV lacks (GIF, some TIFF flavours) through Pillow
        try:
            from PIL import Image

            with Image.open(path) as im:
                array = np.asarray(im)
        except Exception as exc:
            raise _unreadable(path, "an image or depth map", ".png (8 or 16 bit), .tif (float32), .npy or .npz") from exc
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def _image_values(source) -> np.ndarray:
    """(H,W,C) float32 in [0,1] from any supported source."""
    if isinstance(source, (str, os.PathLike)):
        return _file_values(_existing_file(source))
    if isinstance(source, torch.Tensor):
        return _array_values(_channels_last(source.detach().cpu(), channels_first=True), "image tensor")
    if isinstance(source, np.ndarray):
        return _array_values(_channels_last(source, channels_first=False), "image array")
    if _is_pil(source):
        return _pil_values(source, "the PIL image")
    raise ConfigError(f"Cannot read an image from a {type(source).__name__}; pass a file path, a PIL image, a numpy array or a tensor.")


def _file_values(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() in (".npy", ".npz"):
        return _array_values(_channels_last(_read_numpy(path), channels_first=False), f"the array in {str(path)!r}")
    try:
        with Image.open(path) as im:
            if _has_16bit_color(im, path):  # Pillow would truncate these to 8 bits
                return _array_values(read_image_array(path), str(path))
            return _pil_values(im, repr(str(path)))
    except WorldStereoError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(path, "an image", "PNG, JPEG, WebP, TIFF or BMP") from exc


def _has_16bit_color(im, path: Path) -> bool:
    """True for multi-channel images with 16-bit samples (Pillow reads their 8 high bits only)."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)  # signature (8), IHDR length+type (8), width, height, bit depth
        return len(header) == 25 and header[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _pil_values(im, name: str) -> np.ndarray:
    """(H,W,C) float32 in [0,1] from a PIL image of any mode; EXIF orientation applied."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)  # returns a copy and loads the pixels (decoding errors surface here)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.float32)[..., None] / 65535.0
    if im.mode == "I":  # 16-bit grayscale PNGs often open in 32-bit mode
        array = np.asarray(im)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise InputFileError(f"{name} holds 32-bit integers outside 0..65535; save it as a 16-bit PNG or a float TIFF scaled to [0,1].")
        return array.astype(np.float32)[..., None] / 65535.0
    if im.mode == "F":
        return _array_values(np.asarray(im)[..., None], name)
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = im.mode in ("PA", "La", "RGBa") or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")  # P, 1, CMYK, YCbCr, LAB, premultiplied alpha
    return np.asarray(im, dtype=np.float32).reshape(im.height, im.width, -1) / 255.0


def _channels_last(array, channels_first: bool):
    """(H,W,C) from (H,W), (C,H,W), (H,W,C), (1,C,H,W) or (1,H,W,C); ``channels_first`` breaks ties."""
    shape = tuple(array.shape)
    if len(shape) == 4 and shape[0] == 1:
        array, shape = array[0], shape[1:]
    if len(shape) == 2:
        return array[..., None]
    if len(shape) == 3:
        first, last = shape[0] in (1, 2, 3, 4), shape[2] in (1, 2, 3, 4)
        if first and (channels_first or not last):
            return array.permute(1, 2, 0) if isinstance(array, torch.Tensor) else np.moveaxis(array, 0, -1)
        if last:
            return array
    raise ShapeMismatchError(
        f"An image must have shape (H,W), (C,H,W), (H,W,C) or (1,C,H,W) with C in 1..4, got {shape}. "
        "Pass one image (select a frame of a batch or video first)."
    )


def _array_values(array, name: str) -> np.ndarray:
    """(H,W,C) float32 in [0,1] from an integer (uint8/uint16) or float array or tensor."""
    if isinstance(array, torch.Tensor):
        array = array.float().numpy() if array.dtype in (torch.bfloat16, torch.float16) else array.numpy()
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in _INTEGER_SCALE:
        return array.astype(np.float32) / _INTEGER_SCALE[array.dtype]
    if not np.issubdtype(array.dtype, np.floating):
        raise ConfigError(f"{name} has dtype {array.dtype}; pass uint8 (0..255), uint16 (0..65535) or float values in [0,1].")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ConfigError(f"{name} contains NaN or infinite values; replace them (e.g. torch.nan_to_num) before loading.")
    if array.size and (array.min() < -FLOAT_TOLERANCE or array.max() > 1 + FLOAT_TOLERANCE):
        raise ConfigError(
            f"{name} has float values in [{array.min():.4g}, {array.max():.4g}], expected [0,1]. "
            "Divide 0..255 values by 255, map [-1,1] values with (x + 1) / 2, or clamp."
        )
    return np.clip(array, 0.0, 1.0)


def _read_numpy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, or of a ``.npz`` file (key ``depth``, else the first array)."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            if not data.files:
                raise InputFileError(f"{str(path)!r} holds no arrays; save one with numpy.savez(path, depth=array).")
            return data["depth" if "depth" in data.files else data.files[0]]
    except WorldStereoError:
        raise
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise _unreadable(path, "a numpy array", ".npy or .npz written by numpy.save/numpy.savez") from exc


# saving ---------------------------------------------------------------------------------------
def save_image(path: str | os.PathLike, image) -> Path:
    """Write an image (3,H,W), (1,H,W) or (H,W), float in [0,1] or uint8, as 8-bit PNG/JPEG/WebP by suffix."""
    path = _output_path(path, IMAGE_SUFFIXES, "an image")
    _write_pil(path, _to_uint8_hwc(image, "image"))
    return path


def save_depth_png16(path: str | os.PathLike, depth, max_depth: float | None = None) -> Path:
    """Write a depth map (H,W) as a 16-bit PNG: ``value = round(depth / max_depth * 65535)``, 0 stays 0 (unknown).

    ``max_depth`` defaults to the largest finite depth; keep it to turn values back into depth.
    Depths beyond ``max_depth`` are clamped, NaN/inf and negative depths are written as 0.
    """
    import cv2

    path = _output_path(path, (".png",), "a 16-bit depth PNG")
    depth = torch.as_tensor(depth).detach().cpu().double()
    if depth.dim() == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.dim() != 2 or depth.numel() == 0:
        raise ShapeMismatchError(f"depth must have shape (H,W), got {tuple(depth.shape)}.")
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
    scale = float(depth.max()) if max_depth is None else float(max_depth)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"max_depth must be a positive finite number (and depth needs a positive value), got {scale}.")
    values = (depth / scale).clamp(0, 1).mul(65535).round().to(torch.int32).numpy().astype(np.uint16)
    from .io import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), values):
            raise OutputPathError(f"OpenCV could not write {str(path)!r}; check the folder is writable.")
    return path


def save_frame_grid(path: str | os.PathLike, video, columns: int | None = None, pad: int = 2, max_width: int | None = None) -> Path:
    """Write the frames of ``video`` (T,3,H,W) in [0,1] (or uint8) as one image, row by row, white gaps of ``pad``.

    ``columns`` defaults to the count that makes the grid roughly square; ``max_width`` shrinks
    a wider grid (area filter, aspect kept).
    """
    import cv2

    path = _output_path(path, IMAGE_SUFFIXES, "a frame grid")
    video = _as_video(video)
    t, _, h, w = video.shape
    if columns is None:
        columns = math.ceil(math.sqrt(t * h / w))
    if not isinstance(columns, int) or columns < 1 or pad < 0 or (max_width is not None and max_width < 1):
        raise ConfigError(f"columns and max_width must be positive integers and pad >= 0, got {columns}, {max_width}, {pad}.")
    columns = min(columns, t)
    rows = math.ceil(t / columns)
    grid = torch.ones(3, rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad)
    for i, frame in enumerate(video):
        r, c = divmod(i, columns)
        grid[:, r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = frame
    array = _to_uint8_hwc(grid, "frame grid")
    if max_width is not None and array.shape[1] > max_width:
        new_h = max(1, round(array.shape[0] * max_width / array.shape[1]))
        array = cv2.resize(array, (max_width, new_h), interpolation=cv2.INTER_AREA)
    _write_pil(path, array)
    return path


def _as_video(video) -> torch.Tensor:
    """(T,3,H,W) float32 in [0,1] from a float or uint8 tensor/array; shape and finiteness checked."""
    video = torch.as_tensor(video).detach().cpu()
    if video.dim() != 4 or video.shape[1] != 3 or 0 in video.shape:
        raise ShapeMismatchError(f"video must have shape (T,3,H,W) with T, H, W >= 1, got {tuple(video.shape)}.")
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    video = video.float()
    if not _all_finite(video):
        raise ConfigError("video contains NaN or infinite values; replace them (e.g. torch.nan_to_num) before saving.")
    return video.clamp(0, 1)


def _to_uint8_hwc(image, name: str) -> np.ndarray:
    """(H,W,3) or (H,W) uint8 from (3,H,W), (1,H,W) or (H,W), float in [0,1] or uint8."""
    image = torch.as_tensor(image).detach().cpu()
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    if not ((image.dim() == 3 and image.shape[0] == 3) or image.dim() == 2) or image.numel() == 0:
        raise ShapeMismatchError(f"{name} must have shape (3,H,W), (1,H,W) or (H,W), got {tuple(image.shape)}.")
    if image.dtype != torch.uint8:
        image = image.float()
        if not _all_finite(image):
            raise ConfigError(f"{name} contains NaN or infinite values; replace them (e.g. torch.nan_to_num) before saving.")
        image = image.clamp(0, 1).mul(255).round().to(torch.uint8)
    return (image.permute(1, 2, 0) if image.dim() == 3 else image).contiguous().numpy()


def _write_pil(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from .io import atomic_path

    options = {".jpg": {"quality": 95}, ".jpeg": {"quality": 95}, ".webp": {"quality": 95}}.get(path.suffix.lower(), {})
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, **options)


# helpers --------------------------------------------------------------------------------------
def _all_finite(tensor: torch.Tensor) -> bool:
    """True if a CPU float tensor holds no NaN/inf (numpy's check is many times faster on CPU)."""
    return bool(np.isfinite(tensor.numpy()).all())


def _existing_file(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{str(path)!r} is a folder, not a file; pass the path of a file inside it.")
    if not path.is_file():
        raise InputFileError(f"File not found: {str(path)!r}; check the path (relative paths start at {os.getcwd()!r}).")
    if path.stat().st_size == 0:
        raise InputFileError(f"{str(path)!r} is empty (0 bytes); write or download it again.")
    return path


def _output_path(path, suffixes: tuple[str, ...], what: str) -> Path:
    if path is None or str(path) == "":
        raise OutputPathError(f"No output path given for {what}; pass a file name ending in {', '.join(suffixes)}.")
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputPathError(f"Cannot write {what} to {str(path)!r}: the name must end in {', '.join(suffixes)}.")
    if path.is_dir():
        raise OutputPathError(f"{str(path)!r} is a folder; give a file name inside it.")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise OutputPathError(f"Cannot write {str(path)!r}: {str(blocking)!r} is a file, not a folder. Choose another folder.")
    return path


def _unreadable(path: Path, what: str, formats: str) -> InputFileError:
    return InputFileError(f"Cannot read {str(path)!r} as {what}: the file is corrupt or in another format. Save it as {formats}.")


def _source_error(source, problem: str, fix: str) -> InputFileError | ShapeMismatchError:
    if isinstance(source, (str, os.PathLike)):
        return InputFileError(f"{str(source)!r} {problem}. {fix}")
    return ShapeMismatchError(f"The image {problem}. {fix}")


def _is_pil(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with torchvision/transformers setups
        return False
    return isinstance(obj, Image.Image)


def _check_size(size) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ConfigError(f"size must be (height, width) with positive integers, got {size!r}.")
    return size[0], size[1]


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C,H,W) resized to (C,height,width), bicubic with antialiasing, clamped to [0,1]."""
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
