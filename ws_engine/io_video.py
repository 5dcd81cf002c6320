"""Video in and out through PyAV: H.264 MP4 that browsers stream, and decoding back to (T,3,H,W).

Import these from :mod:`ws_engine.io`. PyAV is imported inside the functions.
"""

from __future__ import annotations

import math
import numbers
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputFileError
from .io_image import _as_video, _existing_file, _output_path

__all__ = ["VIDEO_SUFFIXES", "save_video", "read_video"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


def save_video(path: str | os.PathLike, video, fps: float = 16, crf: int = 18) -> Path:
    """Write ``video`` (T,3,H,W) float in [0,1] (or uint8) as H.264 (libx264, yuv420p, BT.709) and return the path.

    ``.mp4``/``.mov`` files get ``+faststart`` (the index comes first, so a browser plays while
    loading); ``.mkv`` is also accepted. yuv420p needs even sizes: an odd width or height is padded
    by repeating the last column or row. ``crf`` 0..51: lower is better and larger (18 looks lossless).
    """
    import av

    path = _output_path(path, VIDEO_SUFFIXES, "a video")
    frames = _as_video(video)
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and Fraction(float(fps)).limit_denominator(1001) > 0):
        raise ConfigError(f"fps must be a positive number (at least 1/1000), got {fps!r}.")
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise ConfigError(f"crf must be an integer in 0..51 (18 is visually lossless), got {crf!r}.")
    frames = _pad_to_even(frames)
    rgb = frames.permute(0, 2, 3, 1).mul(255).round().to(torch.uint8).numpy()
    h, w = rgb.shape[1:3]
    options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov") else {}
    from .io import atomic_path

    with atomic_path(path) as tmp:
        try:
            _encode(av, tmp, rgb, Fraction(float(fps)).limit_denominator(1001), crf, options)
        except av.error.FFmpegError as exc:
            raise ConfigError(
                f"The H.264 encoder refused {w}x{h} frames at {fps:g} fps ({exc}). "
                "Resize the video (H.264 handles up to 4096 pixels a side everywhere) or save a frame grid (.png) instead."
            ) from exc
    return path


def _encode(av, path: Path, rgb: np.ndarray, rate: Fraction, crf: int, options: dict) -> None:
    """Encode frames (T,H,W,3) uint8 RGB into ``path`` (H, W even)."""
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width, stream.pix_fmt = rgb.shape[1], rgb.shape[2], "yuv420p"
        stream.options = {"crf": str(crf)}
        _tag_bt709(stream.codec_context)
        for array in rgb:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
            _tag_bt709(frame)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder


def read_video(path: str | os.PathLike) -> tuple[torch.Tensor, float]:
    """Decode the first video stream of ``path``: frames (T,3,H,W) float32 in [0,1] and the frame rate."""
    import av

    path = _existing_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputFileError(f"{str(path)!r} has no video stream; pass a video file (MP4, MOV, MKV, WebM).")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise InputFileError(f"Cannot decode {str(path)!r}: the file is corrupt or not a video. Re-encode it as H.264 MP4.") from exc
    if not frames:
        raise InputFileError(f"{str(path)!r} contains no frames; export the video again.")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255.0)
    return video, float(rate) if rate else 0.0


def _pad_to_even(frames: torch.Tensor) -> torch.Tensor:
    """(T,3,H,W) with H and W rounded up to even by replicating the last row/column."""
    pad_w, pad_h = frames.shape[-1] % 2, frames.shape[-2] % 2
    return F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate") if pad_w or pad_h else frames


def _tag_bt709(target) -> None:
    """Mark a frame or codec context as BT.709, limited range (what browsers assume for HD video)."""
    target.colorspace = 1  # AVCOL_SPC_BT709
    target.color_range = 1  # AVCOL_RANGE_MPEG
    target.color_primaries = 1  # AVCOL_PRI_BT709
    target.color_trc = 1  # AVCOL_TRC_BT709
