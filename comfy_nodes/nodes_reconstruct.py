"""WorldStereo Reconstruct: memory + frames + trajectory -> a point cloud (.ply) or mesh (.glb) in the output folder."""

from __future__ import annotations

import json

from ws_engine.errors import ShapeMismatchError
from ws_engine.io import save_mesh, save_ply
from ws_engine.reconstruction import RECONSTRUCTION_METHODS, reconstruct

from . import runtime
from .convert import as_video

CATEGORY = "WorldStereo"


class WorldStereoReconstruct:
    DESCRIPTION = (
        "Reconstructs the scene from the generated frames, their cameras and the memory (which gives every frame its depth): a point "
        "cloud (.ply), a mesh (.glb, TSDF fusion) or a neural field (.ply). Saves it in the output folder (point clouds also as a "
        ".glb of points for viewing) and returns its path, the quality metrics, and model_file for the core Preview 3D node. "
        "GLB files are y-up (glTF); PLY keeps the first camera's OpenCV axes (y down, z forward)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("file_path", "metrics", "model_file")
    FUNCTION = "reconstruct"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "memory": ("WS_MEMORY",),
                "frames": ("IMAGE", {"tooltip": "One frame per camera of the trajectory (e.g. WorldStereo Generate's frames)."}),
                "trajectory": ("WS_TRAJECTORY",),
                "method": (list(RECONSTRUCTION_METHODS), {"default": "point_cloud"}),
                "filename_prefix": ("STRING", {"default": "WorldStereo/scene", "tooltip": "Name (and subfolder) in the output folder."}),
            }
        }

    def reconstruct(self, memory, frames, trajectory, method, filename_prefix):
        video = as_video(frames)
        if len(video) != len(trajectory):
            raise ShapeMismatchError(
                f"There are {len(video)} frames but the trajectory has {len(trajectory)} cameras; connect the trajectory the frames were made along."
            )
        if tuple(video.shape[-2:]) != (trajectory.height, trajectory.width):
            raise ShapeMismatchError(f"The frames are {video.shape[-1]}x{video.shape[-2]} but the trajectory is {trajectory.width}x{trajectory.height}.")
        path, subfolder, _ = runtime.output_file(filename_prefix, ".glb" if method == "mesh" else ".ply")  # checked before the work
        depth = memory.frame_depth(trajectory)
        progress = runtime.Progress(1)
        rec = reconstruct(
            video.to(memory.device), depth, trajectory.to(memory.device), method, memory=memory.global_memory if method == "point_cloud" else None,
            progress_callback=lambda step, total, info: progress(step, total),
        )  # fmt: skip
        if method == "mesh":
            written = preview = rec.mesh.save(path)
        else:
            written = save_ply(path, rec.points, rec.colors, rec.normals)
            preview = save_mesh(path.with_suffix(".glb"), rec.points, None, rec.colors)  # ComfyUI's 3D viewer reads glTF, not PLY
        metrics = json.dumps({k: _plain(v) for k, v in rec.quality_metrics.items()}, indent=1)
        model_file = f"{subfolder}/{preview.name}" if subfolder else preview.name
        entry = {"filename": preview.name, "subfolder": subfolder, "type": "output"}
        return {"ui": {"3d": [entry], "text": [metrics]}, "result": (str(written), metrics, model_file)}


def _plain(value):
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return str(value)
