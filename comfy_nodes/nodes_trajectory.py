"""WorldStereo Camera Trajectory (preset, JSON text or file) and WorldStereo Save Trajectory."""

from __future__ import annotations

import json

from ws_engine.cameras import CameraTrajectory
from ws_engine.errors import InputFileError
from ws_engine.plot import plot_trajectory
from ws_engine.presets import PRESETS
from ws_engine.trajectory_io import load_trajectory, save_trajectory

from . import runtime
from .convert import to_image

CATEGORY = "WorldStereo"
MOVES = ("forward", "backward", "left", "right", "up", "down")
TURNS = ("turn_left", "turn_right", "tilt_up", "tilt_down")
PLOT_SIZE = (512, 1024)


def preset_trajectory(preset, frames, distance, angle, focus_distance, fov, width, height) -> CameraTrajectory:
    """The preset with the node's widgets mapped onto its own parameters."""
    camera = {"width": width, "height": height, "fov": fov}
    if preset in MOVES:
        return CameraTrajectory.preset(preset, frames, distance=distance, **camera)
    if preset in TURNS:
        return CameraTrajectory.preset(preset, frames, angle=angle, **camera)
    if preset in ("orbit_left", "orbit_right"):
        return CameraTrajectory.preset(preset, frames, angle=angle, pivot_depth=focus_distance, **camera)
    if preset in ("zoom_in", "zoom_out"):
        return CameraTrajectory.preset(preset, frames, factor=1.0 + abs(distance), **camera)
    if preset == "spiral":
        return CameraTrajectory.preset(preset, frames, radius=distance, focus_depth=focus_distance, **camera)
    if preset == "eloop":
        return CameraTrajectory.preset(preset, frames, radius_x=distance, focus_depth=focus_distance, **camera)
    return CameraTrajectory.preset(preset, frames, **camera)


def _parse_json(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(f"trajectory_json is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
    if not isinstance(data, dict):
        raise InputFileError("trajectory_json must be a JSON object (the project's trajectory format, e.g. exported from Blender).")
    return data


class WorldStereoCameraTrajectory:
    DESCRIPTION = (
        "A camera path: a preset motion, or a trajectory pasted as JSON (e.g. from the Blender add-on) or read from a file in "
        "ComfyUI's input folder (project JSON, official camera.json, transforms.json, RealEstate10K, COLMAP). Outputs a plot of the "
        "path with its camera frustums."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("WS_TRAJECTORY", "IMAGE")
    RETURN_NAMES = ("trajectory", "plot")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "preset": (list(PRESETS), {"default": "orbit_left", "tooltip": "Camera motion (used when no JSON or file is given)."}),
                "frames": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Number of frames; a JSON or file trajectory is resampled to it."}),
                "distance": ("FLOAT", {"default": 0.5, "min": -100.0, "max": 100.0, "step": 0.01,
                                        "tooltip": "Scene units: how far forward/backward/left/right/up/down moves; spiral/eloop radius; zoom factor is 1 + distance."}),
                "angle": ("FLOAT", {"default": 30.0, "min": -360.0, "max": 360.0, "step": 0.5, "tooltip": "Degrees of turn, tilt and orbit presets."}),
                "focus_distance": ("FLOAT", {"default": 2.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                                              "tooltip": "Scene units: the orbit's pivot, the point spiral and eloop look at."}),
                "fov": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 179.0, "step": 0.5, "tooltip": "Horizontal field of view in degrees."}),
                "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 16}),
                "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 16}),
            },
            "optional": {
                "trajectory_json": ("STRING", {"default": "", "multiline": True, "tooltip": "A trajectory in the project's JSON format; overrides the preset."}),
                "trajectory_file": ("STRING", {"default": "", "tooltip": "A trajectory file in ComfyUI's input folder; overrides the preset."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, trajectory_file="", **kwargs):
        """Re-run when the file's content changes."""
        return runtime.input_fingerprint(trajectory_file, "trajectory_file")

    def build(self, preset, frames, distance, angle, focus_distance, fov, width, height, trajectory_json="", trajectory_file=""):
        text = (trajectory_json or "").strip()
        path = runtime.input_file(trajectory_file, "trajectory_file")
        if text and path:
            raise InputFileError("Give the trajectory as JSON text or as a file, not both: clear trajectory_json or trajectory_file.")
        if text or path:
            traj = load_trajectory(_parse_json(text) if text else path)
            if len(traj) != frames:
                traj = traj.resample(frames)
            if (traj.width, traj.height) != (width, height):
                traj = traj.rescale(width, height)
        else:
            traj = preset_trajectory(preset, frames, distance, angle, focus_distance, fov, width, height)
        return (traj, to_image(plot_trajectory(traj, size=PLOT_SIZE)))


class WorldStereoSaveTrajectory:
    DESCRIPTION = "Writes the trajectory to ComfyUI's output folder as the project's JSON and as the official WorldStereo camera.json."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("json_path", "camera_json_path")
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "trajectory": ("WS_TRAJECTORY",),
                "filename_prefix": ("STRING", {"default": "WorldStereo/trajectory", "tooltip": "Name (and subfolder) in the output folder."}),
            }
        }

    def save(self, trajectory, filename_prefix):
        path, subfolder, _ = runtime.output_file(filename_prefix, ".json")
        camera_path = path.with_name(path.name[: -len(".json")] + "camera.json")
        written = [save_trajectory(trajectory, path, "worldstereo"), save_trajectory(trajectory, camera_path, "camera_json")]
        return {"ui": {"text": [str(p) for p in written]}, "result": tuple(str(p) for p in written)}
