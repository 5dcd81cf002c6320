"""Loading the repository as ComfyUI does, and a small executor for API-format prompts.

ComfyUI imports a custom-node folder as a package named after the folder. :func:`load_pack`
does the same with the repository root. :func:`run_prompt` runs an API prompt in dependency order
with the pack's nodes plus a few core nodes the example workflows use (LoadImage, CreateVideo,
SaveVideo, PreviewImage, ImageBlur, ImageCompositeMasked, Preview3D), re-implemented here with the engine's
own I/O, because ComfyUI itself is not installed in the test environment (the real-server test
runs the same workflows in a real ComfyUI when COMFYUI_PATH is set).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-WorldStereo"
WORKFLOWS = ROOT / "example_workflows"


def load_pack():
    """The repository root imported as a package (as ComfyUI's load_custom_node does)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def runtime():
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.comfy_nodes.runtime")


# ----------------------------------------------------------------------------------------------
# core nodes used by the example workflows (inputs as in ComfyUI's /object_info)
# ----------------------------------------------------------------------------------------------
class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ([], {"image_upload": True})}}

    def load(self, image):
        from ws_engine.io import load_image_with_alpha

        rgb, alpha = load_image_with_alpha(runtime().input_directory() / image)
        mask = 1.0 - alpha if alpha is not None else torch.zeros(rgb.shape[-2:])
        return (rgb.permute(1, 2, 0)[None], mask[None])


class CreateVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})}, "optional": {"audio": ("AUDIO",)}}

    def create(self, images, fps, audio=None):
        return ({"frames": images, "fps": fps},)


class SaveVideo:
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4"], {"default": "auto"}), "codec": (["auto", "h264"], {"default": "auto"})}}  # fmt: skip

    def save(self, video, filename_prefix, format, codec):
        from ws_engine.io import save_video

        path, subfolder, filename = runtime().output_file(filename_prefix, ".mp4")
        save_video(path, video["frames"].permute(0, 3, 1, 2), fps=video["fps"])
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}}


class PreviewImage:
    RETURN_TYPES = ()
    FUNCTION = "preview"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def preview(self, images):
        from ws_engine.io import save_image

        entries = []
        for image in images:
            path, subfolder, filename = runtime().output_file("preview/image", ".png")
            save_image(path, image.permute(2, 0, 1))
            entries.append({"filename": filename, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": entries}}


class ImageBlur:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31}),
                             "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0})}}  # fmt: skip

    def blur(self, image, blur_radius, sigma):
        size = 2 * blur_radius + 1
        x = torch.arange(size, dtype=torch.float32) - blur_radius
        k = torch.exp(-(x**2) / (2 * (sigma * blur_radius) ** 2))
        k = (k / k.sum())
        img = image.permute(0, 3, 1, 2)
        img = torch.nn.functional.pad(img, (blur_radius,) * 4, mode="reflect")
        img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, size), groups=3)
        img = torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, size, 1), groups=3)
        return (img.permute(0, 2, 3, 1),)


class ImageCompositeMasked:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"destination": ("IMAGE",), "source": ("IMAGE",), "x": ("INT", {"default": 0, "min": 0, "max": 16384}),
                             "y": ("INT", {"default": 0, "min": 0, "max": 16384}), "resize_source": ("BOOLEAN", {"default": False})},
                "optional": {"mask": ("MASK",)}}  # fmt: skip

    def composite(self, destination, source, x, y, resize_source, mask=None):
        assert x == 0 and y == 0 and not resize_source, "this stand-in only composites at the origin"
        m = torch.ones(destination.shape[:3]) if mask is None else mask.expand(destination.shape[:3])
        return (destination * (1 - m[..., None]) + source * m[..., None],)


class Preview3D:
    RETURN_TYPES = ()
    FUNCTION = "process"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_file": ("STRING", {"default": "", "multiline": False})}, "optional": {"camera_info": ("LOAD3D_CAMERA", {})}}

    def process(self, model_file, camera_info=None):
        path = runtime().output_directory() / model_file  # the front end loads it from the output folder
        assert path.is_file() and path.suffix in (".glb", ".gltf", ".obj", ".fbx", ".stl"), model_file
        return {"ui": {"result": [model_file, camera_info]}}


CORE_NODES = {cls.__name__: cls for cls in (LoadImage, CreateVideo, SaveVideo, PreviewImage, ImageBlur, ImageCompositeMasked, Preview3D)}


def all_nodes() -> dict:
    return {**CORE_NODES, **load_pack().NODE_CLASS_MAPPINGS}


def workflow_format():
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.comfy_nodes.workflow_format")


def definitions() -> dict:
    return workflow_format().definitions_from_mappings(all_nodes())


def ui_to_api(workflow: dict) -> dict:
    return workflow_format().ui_to_api(workflow, definitions())


def run_prompt(prompt: dict) -> dict:
    """Execute an API prompt in dependency order; returns {node_id: {"result": tuple, "ui": dict}}."""
    nodes = all_nodes()
    done: dict[str, dict] = {}

    def run(node_id: str):
        if node_id in done:
            return done[node_id]
        spec = prompt[node_id]
        cls = nodes[spec["class_type"]]
        kwargs = {}
        for name, value in spec["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                kwargs[name] = run(value[0])["result"][value[1]]
            else:
                kwargs[name] = value
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict):
            done[node_id] = {"result": tuple(out.get("result", ())), "ui": out.get("ui", {})}
        else:
            done[node_id] = {"result": tuple(out), "ui": {}}
        return done[node_id]

    for node_id in sorted(prompt, key=int):
        run(node_id)
    return done
