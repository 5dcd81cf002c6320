"""The interface between the WorldStereo model and a backbone that fills the video.

The model owns the memories and the loop over the trajectory: it splits the frames into chunks of
``backbone.chunk_size``, hands each chunk to :meth:`Backbone.fill` as a :class:`ChunkInputs`, and
writes what comes back (:class:`ChunkOutputs`) into both memories before the next chunk. A
backbone therefore only decides what the frames look like; it never updates a memory itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cameras import CameraParameters
from ..geometry import RenderOutput
from ..memory import GlobalGeometricMemory, SpatialStereoMemory

__all__ = ["Backbone", "ChunkInputs", "ChunkOutputs", "ProgressCallback"]

ProgressCallback = Callable[[int, int, torch.Tensor | None], None]


@dataclass
class ChunkInputs:
    """What a backbone receives for one chunk of T frames (H,W at the trajectory's size).

    condition_image: (3,H,W) in [0,1], the image of trajectory frame 0.
    cameras: CameraParameters of the T target frames (batched).
    frame_indices: (T,) long, positions of the frames in the whole trajectory.
    renders: the Global memory rendered into ``cameras`` (rgb (T,3,H,W), depth (T,H,W), mask
        (T,H,W)), or None when the geometric memory is switched off.
    global_memory / spatial_memory: the memories as they are before this chunk (read only).
    use_geometric_memory / use_spatial_memory: the run's memory switches.
    num_inference_steps, guidance_scale, prompt: sampler settings (ignored by training-free backbones).
    generator: the run's torch.Generator (every stochastic step draws from it).
    progress: ``progress(step, total, latent)`` for steps inside the chunk, or None.
    anchor_frame / anchor_camera: the frame (3,H,W) just before the chunk and its camera (the
        condition image and frame 0's camera for the first chunk).
    """

    condition_image: torch.Tensor
    cameras: CameraParameters
    frame_indices: torch.Tensor
    renders: RenderOutput | None
    global_memory: GlobalGeometricMemory
    spatial_memory: SpatialStereoMemory
    use_geometric_memory: bool = True
    use_spatial_memory: bool = True
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    prompt: str = ""
    generator: torch.Generator | None = None
    progress: ProgressCallback | None = None
    anchor_frame: torch.Tensor | None = None
    anchor_camera: CameraParameters | None = None


@dataclass
class ChunkOutputs:
    """What a backbone returns for a chunk of T frames.

    frames: (T,3,H,W) in [0,1].
    depth: (T,H,W) scene depth where the backbone knows it (0 = unknown), or None.
    confidence: (T,H,W) in [0,1]: 1 where the frame reproduces what the memories saw, lower where
        the backbone invented content; None means 1 everywhere.
    new_pixels: (T,H,W) bool, the pixels whose 3D points are new to the Global memory (the model
        adds only these); None means every pixel with a known depth.
    extras: backbone-specific tensors (e.g. hole masks), passed through to the result.
    """

    frames: torch.Tensor
    depth: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    new_pixels: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class Backbone:
    """Base class: fills the frames of a chunk from the memories."""

    #: registry name (``vdm_config["backbone"]``)
    name: str = ""
    #: frames per call of :meth:`fill`; the memories are updated between calls
    chunk_size: int = 1
    #: height and width must be multiples of this
    size_multiple: int = 1
    #: whether :meth:`WorldStereo.forward` can train it
    trainable: bool = False
    #: splat radius of the Global-memory renders in :attr:`ChunkInputs.renders` (None: the memory's)
    render_radius: float | None = None
    #: sampler defaults used when the caller passes None
    default_steps: int = 50
    default_guidance: float = 7.5

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})

    def check(self, use_geometric_memory: bool, use_spatial_memory: bool) -> None:
        """Raise a ConfigError before any work if this backbone cannot run with these switches."""

    def check_frames(self, num_frames: int) -> None:
        """Raise a ShapeMismatchError before any work if this backbone cannot make ``num_frames`` frames."""

    def prepare_trajectory(self, trajectory, num_frames: int | None):
        """The trajectory this backbone generates for a requested frame count (None: the trajectory's)."""
        return trajectory

    def preferred_size(self, height: int, width: int) -> tuple[int, int]:
        """The output size to use for an image of (height, width) when the caller gives none."""
        return height, width

    def fill(self, inputs: ChunkInputs) -> ChunkOutputs:  # pragma: no cover - interface
        raise NotImplementedError

    def to(self, device) -> "Backbone":
        return self
