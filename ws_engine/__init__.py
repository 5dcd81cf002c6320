"""WorldStereo engine: cameras, geometry, the two geometric memories (pure PyTorch)."""

from .cameras import CameraParameters, CameraTrajectory
from .errors import WorldStereoError
from .memory import GlobalGeometricMemory, SpatialStereoMemory

__version__ = "0.1.0"

__all__ = [
    "CameraParameters",
    "CameraTrajectory",
    "GlobalGeometricMemory",
    "SpatialStereoMemory",
    "WorldStereoError",
    "__version__",
]
