"""WorldStereo Generate: frames along a trajectory from one image and the scene's memory."""

from __future__ import annotations

from ws_engine.world_memory import WorldMemory, generate_with_memory

from . import runtime
from .convert import one_image, to_image, to_mask

CATEGORY = "WorldStereo"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class WorldStereoGenerate:
    DESCRIPTION = (
        "Generates the video along the trajectory from the condition image, continuing the memory (connect WorldStereo Geometric "
        "Memory; without it the memory starts from a rough depth prior). Outputs the frames (for Create Video / Save Video), the "
        "memory with the new frames, what the memory alone gave per frame, and the pixels that were invented (1 = hole)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "WS_MEMORY", "IMAGE", "MASK")
    RETURN_NAMES = ("frames", "memory", "renders", "holes")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("WS_MODEL",),
                "image": ("IMAGE", {"tooltip": "The condition image (frame 0)."}),
                "trajectory": ("WS_TRAJECTORY",),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Sampling steps of neural models."}),
                "guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": "Guidance scale of neural models."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED}),
                "use_geometric_memory": ("BOOLEAN", {"default": True, "tooltip": "Render the point memory into every frame."}),
                "use_spatial_memory": ("BOOLEAN", {"default": True, "tooltip": "Take detail from earlier frames by 3D correspondence."}),
            },
            "optional": {
                "memory": ("WS_MEMORY", {"tooltip": "The scene's memory; its camera must be the trajectory's first."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "Text prompt of neural models."}),
            },
        }

    def generate(self, model, image, trajectory, steps, guidance, seed, use_geometric_memory, use_spatial_memory, memory=None, prompt=""):
        rgb = one_image(image)
        if memory is None:
            memory = WorldMemory.create(rgb, trajectory[0], device=runtime.intermediate_device())
        progress = runtime.Progress(len(trajectory))
        result, updated = generate_with_memory(
            model, memory, rgb, trajectory, num_inference_steps=steps, guidance_scale=guidance, seed=seed, prompt=prompt,
            use_geometric_memory=use_geometric_memory, use_spatial_memory=use_spatial_memory,
            progress_callback=lambda step, total, latent: progress(step, total, latent[-1] if latent.dim() == 4 and latent.shape[1] == 3 else None),
        )  # fmt: skip
        runtime.soft_empty_cache()
        return (to_image(result.frames), updated.to(runtime.intermediate_device()), to_image(result.prior), to_mask(result.holes))
