"""3D reconstruction from posed RGB-D frames: point cloud, TSDF mesh, neural field, quality metrics.

``reconstruct(frames, depths, cameras, method=...)`` is the entry point; see its docstring.
"""

from .api import METHOD_OPTIONS, RECONSTRUCTION_METHODS, evaluate_reconstruction, reconstruct
from .types import Mesh, Reconstruction

__all__ = ["Mesh", "Reconstruction", "RECONSTRUCTION_METHODS", "METHOD_OPTIONS", "reconstruct", "evaluate_reconstruction"]
