"""The typed errors users see.

Every error a user can cause is a :class:`WorldStereoError` whose message says what was wrong and
how to fix it. They also derive from the matching built-in (``ValueError``, ``KeyError``...) so
ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = [
    "WorldStereoError",
    "InvalidCameraError",
    "ShapeMismatchError",
    "InvalidDepthError",
    "EmptyPointCloudError",
    "EmptyMemoryError",
    "UnknownNameError",
    "TrajectoryFormatError",
    "ConfigError",
    "MemoryFileError",
    "InputFileError",
    "OutputPathError",
    "MissingDependencyError",
    "ModelLoadError",
    "GenerationCancelled",
]


class WorldStereoError(Exception):
    """Base of every error raised on purpose by ws_engine."""


class InvalidCameraError(WorldStereoError, ValueError):
    """Camera intrinsics or poses that cannot describe a camera (non-finite, bad rotation, f <= 0)."""


class ShapeMismatchError(WorldStereoError, ValueError):
    """Tensors whose shapes or batch sizes do not fit together."""


class InvalidDepthError(WorldStereoError, ValueError):
    """A depth map of the wrong shape or without a single valid pixel."""


class EmptyPointCloudError(WorldStereoError, ValueError):
    """A point cloud with no points where at least one is needed."""


class EmptyMemoryError(WorldStereoError, RuntimeError):
    """A memory asked to render, query or attend before anything was put in it."""


class UnknownNameError(WorldStereoError, ValueError):
    """An unknown preset, format, strategy or option name."""

    def __init__(self, kind: str, name: object, choices) -> None:
        choices = sorted(choices)
        super().__init__(f"Unknown {kind} {name!r}. Choose one of: {', '.join(map(str, choices))}.")
        self.kind, self.name, self.choices = kind, name, choices


class TrajectoryFormatError(WorldStereoError, ValueError):
    """A trajectory file that is truncated, not JSON, or inconsistent."""


class ConfigError(WorldStereoError, ValueError):
    """A constructor or function argument outside its allowed range."""


class MemoryFileError(WorldStereoError, ValueError):
    """A memory file that is truncated, not safetensors, or not written by this project."""


class InputFileError(WorldStereoError, ValueError):
    """An input file (image, depth map, video, point cloud, mesh) that is missing or cannot be read."""


class OutputPathError(WorldStereoError, ValueError):
    """An output that cannot be written where asked (no path given, folder missing, wrong suffix)."""


class MissingDependencyError(WorldStereoError, ImportError):
    """An optional package that a feature needs is not installed; the message names the pip extra."""


class ModelLoadError(WorldStereoError, ValueError):
    """A model folder or hub id that cannot be loaded (missing files, unknown backbone, bad config)."""


class OutOfMemoryError(WorldStereoError, RuntimeError):
    """The device ran out of memory; the message says what to change (offload, size, frames)."""


class GenerationCancelled(WorldStereoError, RuntimeError):
    """Raised (e.g. by a progress callback) to stop a run between steps; memories stay consistent."""


def check_choice(kind: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`UnknownNameError`."""
    if value not in choices:
        raise UnknownNameError(kind, value, choices)
    return value
