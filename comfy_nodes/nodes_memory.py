"""WorldStereo Geometric Memory, Render Memory and Update Memory: the memories as values in a graph.

Render Memory and Update Memory let any video model in the graph fill the memory's holes: render
along a trajectory -> the other model -> its frames back into the memory.
"""

from __future__ import annotations


from ws_engine.memory.point_index import INDEX_TYPES
from ws_engine.model import DEFAULT_GLOBAL_MEMORY
from ws_engine.panorama import CAMERA_MODELS, render_panorama, resolve_camera_model
from ws_engine.world_memory import WorldMemory

from . import runtime
from .convert import as_video, depth_map, normalised_disparity, one_image, to_image, to_mask

CATEGORY = "WorldStereo"
DEPTH_KINDS = ("disparity", "depth")
DEPTH_KIND_TIP = "disparity: white = near, as depth nodes (Depth Anything, MiDaS) output it; depth: values are distances."


class WorldStereoGeometricMemory:
    DESCRIPTION = (
        "Starts the scene's memories from the condition image seen by the trajectory's first camera: its depth from any depth node "
        "(or a rough prior when none is connected) and/or a point cloud file. Outputs the memory rendered from the first camera."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("WS_MEMORY", "IMAGE")
    RETURN_NAMES = ("memory", "render")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The condition image (frame 0)."}),
                "trajectory": ("WS_TRAJECTORY", {"tooltip": "Its first camera sees the image; the memory takes its size."}),
                "depth_kind": (list(DEPTH_KINDS), {"default": "disparity", "tooltip": DEPTH_KIND_TIP}),
                "depth_scale": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 10000.0, "step": 0.001,
                                           "tooltip": "disparity: the nearest possible pixel's distance; depth: multiplies the values."}),
                "max_points": ("INT", {"default": DEFAULT_GLOBAL_MEMORY["max_points"], "min": 1000, "max": 100_000_000, "step": 1000,
                                       "tooltip": "Capacity of the point memory; past it the oldest points go."}),
                "merge_threshold": ("FLOAT", {"default": DEFAULT_GLOBAL_MEMORY["merge_threshold"], "min": 0.0, "max": 10.0, "step": 0.0005,
                                               "tooltip": "Points closer than this (scene units) are merged; 0 keeps all."}),
                "index": (list(INDEX_TYPES), {"default": "kd_tree", "tooltip": "Nearest-neighbour index of the point memory."}),
            },
            "optional": {
                "depth": ("IMAGE", {"tooltip": "The image's depth from a depth node, at the image's size."}),
                "depth_mask": ("MASK", {"tooltip": "The same as a MASK (connect this or depth)."}),
                "point_cloud_file": ("STRING", {"default": "", "tooltip": "A point cloud (PLY, NPY, XYZ, GLB...) in ComfyUI's input folder, in frame 0's world."}),
                "camera_model": (list(CAMERA_MODELS), {"default": "perspective",
                                 "tooltip": "equirectangular: the image is a 2:1 panorama taken from the first camera's position (its centre "
                                            "looking where that camera looks); auto: 2:1 images are panoramas."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, point_cloud_file="", **kwargs):
        """Re-run when the file's content changes."""
        return runtime.input_fingerprint(point_cloud_file, "point_cloud_file")

    def build(self, image, trajectory, depth_kind, depth_scale, max_points, merge_threshold, index, depth=None, depth_mask=None, point_cloud_file="",
              camera_model="perspective"):  # fmt: skip
        rgb = one_image(image)
        d = depth_map(depth, depth_mask)
        cloud = runtime.input_file(point_cloud_file, "point_cloud_file")
        panorama = resolve_camera_model(camera_model, *rgb.shape[-2:]) == "equirectangular"
        memory = WorldMemory.create(
            rgb, trajectory[0], d, cloud, depth_kind=depth_kind, depth_scale=depth_scale,
            global_memory_config={**DEFAULT_GLOBAL_MEMORY, "max_points": max_points, "merge_threshold": merge_threshold, "index_type": index},
            device=runtime.intermediate_device(), camera_model=camera_model,
        )  # fmt: skip
        # radius 1: the source view pixel for pixel (a panorama's points are spaced for its own resolution: the memory's radius)
        return (memory, to_image(memory.render(trajectory[0], radius=None if panorama else 1).rgb))


class WorldStereoRenderPanorama:
    DESCRIPTION = (
        "Renders the memory as a 360 x 180 degree equirectangular panorama from the memory's first camera position plus an offset "
        "(its centre looks where that camera looks): the explored scene seen from any point, with a mask of what it has not seen."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("panorama", "holes", "depth")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        offset = {"default": 0.0, "min": -1000.0, "max": 1000.0, "step": 0.01, "tooltip": "Offset from the first camera (scene units, its axes: x right, y down, z forward)."}
        return {
            "required": {
                "memory": ("WS_MEMORY",),
                "width": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 2, "tooltip": "Panorama width; the height is half."}),
                "offset_x": ("FLOAT", offset),
                "offset_y": ("FLOAT", offset),
                "offset_z": ("FLOAT", offset),
            }
        }

    def render(self, memory, width, offset_x, offset_y, offset_z):
        import torch

        c2w = memory.camera.c2wb[0].float().cpu()
        position = c2w[:3, 3] + c2w[:3, :3] @ torch.tensor([offset_x, offset_y, offset_z])
        image, depth, mask = render_panorama(memory, position, width, rotation=c2w[:3, :3])
        return (to_image(image[None]), to_mask(~mask[None]), normalised_disparity(depth[None]))


class WorldStereoRenderMemory:
    DESCRIPTION = (
        "Renders the memory along a trajectory: colours, a mask of what the memory cannot see (1 = to fill) and the depth as a "
        "disparity image. Feed them to any video model, then its frames to WorldStereo Update Memory."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("renders", "holes", "depth")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"memory": ("WS_MEMORY",), "trajectory": ("WS_TRAJECTORY",)}}

    def render(self, memory, trajectory):
        out = memory.render(trajectory)
        return (to_image(out.rgb), to_mask(~out.mask), normalised_disparity(out.depth))


class WorldStereoUpdateMemory:
    DESCRIPTION = (
        "Adds frames made by any video model along the trajectory to the memory. Where the memory has a surface it keeps its depth; "
        "elsewhere the depth comes from an optional per-frame depth input (fitted to the memory) or is completed from the background."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("WS_MEMORY",)
    RETURN_NAMES = ("memory",)
    FUNCTION = "update"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "memory": ("WS_MEMORY",),
                "frames": ("IMAGE", {"tooltip": "One frame per camera of the trajectory."}),
                "trajectory": ("WS_TRAJECTORY",),
                "depth_kind": (list(DEPTH_KINDS), {"default": "disparity", "tooltip": DEPTH_KIND_TIP}),
            },
            "optional": {
                "depth": ("IMAGE", {"tooltip": "Per-frame depth of the frames from a depth node (same count and size)."}),
                "depth_mask": ("MASK", {"tooltip": "The same as a MASK (connect this or depth)."}),
            },
        }

    def update(self, memory, frames, trajectory, depth_kind, depth=None, depth_mask=None):
        video = as_video(frames)
        d = depth_map(depth, depth_mask, batch=len(video))
        if d is not None and d.dim() == 2:
            d = d[None]
        progress = runtime.Progress(1)
        updated = memory.add_frames(video, trajectory, d, depth_kind=depth_kind)
        progress(1)
        return (updated.to(runtime.intermediate_device()),)
