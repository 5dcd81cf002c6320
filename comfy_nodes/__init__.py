"""ComfyUI nodes of WorldStereo (classic node API): thin conversions over ``ws_engine``.

Nothing here imports ComfyUI at module level; :mod:`comfy_nodes.runtime` is the only bridge.
"""

from . import runtime
from .nodes_generate import WorldStereoGenerate
from .nodes_memory import WorldStereoGeometricMemory, WorldStereoRenderMemory, WorldStereoRenderPanorama, WorldStereoUpdateMemory
from .nodes_model import WorldStereoLoadModel
from .nodes_reconstruct import WorldStereoReconstruct
from .nodes_trajectory import WorldStereoCameraTrajectory, WorldStereoSaveTrajectory

NODE_CLASS_MAPPINGS = {
    "WorldStereoLoadModel": WorldStereoLoadModel,
    "WorldStereoCameraTrajectory": WorldStereoCameraTrajectory,
    "WorldStereoGeometricMemory": WorldStereoGeometricMemory,
    "WorldStereoGenerate": WorldStereoGenerate,
    "WorldStereoRenderMemory": WorldStereoRenderMemory,
    "WorldStereoUpdateMemory": WorldStereoUpdateMemory,
    "WorldStereoReconstruct": WorldStereoReconstruct,
    "WorldStereoSaveTrajectory": WorldStereoSaveTrajectory,
    "WorldStereoRenderPanorama": WorldStereoRenderPanorama,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "WorldStereoLoadModel": "WorldStereo Load Model",
    "WorldStereoCameraTrajectory": "WorldStereo Camera Trajectory",
    "WorldStereoGeometricMemory": "WorldStereo Geometric Memory",
    "WorldStereoGenerate": "WorldStereo Generate",
    "WorldStereoRenderMemory": "WorldStereo Render Memory",
    "WorldStereoUpdateMemory": "WorldStereo Update Memory",
    "WorldStereoReconstruct": "WorldStereo Reconstruct",
    "WorldStereoSaveTrajectory": "WorldStereo Save Trajectory",
    "WorldStereoRenderPanorama": "WorldStereo Render Panorama",
}

runtime.register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
