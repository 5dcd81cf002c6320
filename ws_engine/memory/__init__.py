"""The two geometric memories: a global point cloud and a spatial-stereo feature bank."""

from .global_memory import GlobalGeometricMemory
from .spatial_memory import SpatialStereoMemory

__all__ = ["GlobalGeometricMemory", "SpatialStereoMemory"]
