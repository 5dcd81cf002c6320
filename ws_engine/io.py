"""Files in and out. Every write is atomic: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Writers that want a file name (safetensors, imageio, trimesh) write to the yielded path.
    The suffix is kept so libraries that pick a format from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# The formats live in their own modules (they import atomic_path from here when they write).
from .io_geometry import MESH_SUFFIXES, POINT_CLOUD_SUFFIXES, load_mesh, load_point_cloud, save_mesh, save_ply  # noqa: E402
from .io_image import (  # noqa: E402
    IMAGE_SUFFIXES,
    load_image,
    load_image_with_alpha,
    read_image_array,
    save_depth_png16,
    save_frame_grid,
    save_image,
)
from .io_video import VIDEO_SUFFIXES, read_video, save_video  # noqa: E402

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "POINT_CLOUD_SUFFIXES",
    "MESH_SUFFIXES",
    "load_image",
    "load_image_with_alpha",
    "read_image_array",
    "save_image",
    "save_depth_png16",
    "save_frame_grid",
    "save_video",
    "read_video",
    "save_ply",
    "load_point_cloud",
    "save_mesh",
    "load_mesh",
]
