"""WorldStereo engine: cameras, geometry, the two geometric memories (pure PyTorch)."""

from .cameras import CameraParameters, CameraTrajectory
from .errors import WorldStereoError

__version__ = "0.1.0"

__all__ = ["CameraParameters", "CameraTrajectory", "WorldStereoError", "__version__"]
