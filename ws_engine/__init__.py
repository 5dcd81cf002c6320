"""WorldStereo engine: cameras, geometry, the two geometric memories, generation and reconstruction (pure PyTorch)."""

from .cameras import CameraParameters, CameraTrajectory
from .errors import WorldStereoError
from .memory import GlobalGeometricMemory, SpatialStereoMemory
from .model import WorldStereo
from .pipeline import WorldStereoPipeline, generate_multi_view, generate_video, reconstruct_3d

__version__ = "0.1.0"

__all__ = [
    "CameraParameters",
    "CameraTrajectory",
    "GlobalGeometricMemory",
    "SpatialStereoMemory",
    "WorldStereo",
    "WorldStereoPipeline",
    "WorldStereoError",
    "generate_video",
    "generate_multi_view",
    "reconstruct_3d",
    "__version__",
]
