"""The seed API: ``generate_video``, ``generate_multi_view``, ``reconstruct_3d`` and ``WorldStereoPipeline``.

Every argument is checked before any work starts (typed errors from :mod:`ws_engine.errors`);
outputs are written atomically, after generation, so an interrupted run writes nothing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .cameras import CameraParameters, CameraTrajectory
from .errors import ConfigError, OutputPathError, ShapeMismatchError, check_choice
from .model import WorldStereo

__all__ = ["generate_video", "generate_multi_view", "reconstruct_3d", "WorldStereoPipeline", "OUTPUT_FORMATS", "load_condition_image"]

OUTPUT_FORMATS = ("tensor", "numpy", "pil", "video")
VIDEO_SUFFIXES = (".mp4",)
GRID_SUFFIXES = (".png",)


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _as_model(model) -> WorldStereo:
    if isinstance(model, WorldStereo):
        return model
    if isinstance(model, WorldStereoPipeline):
        return model.model
    if isinstance(model, (str, os.PathLike)):
        return WorldStereo.from_pretrained(model, device="cpu")
    raise ConfigError(f"model must be a WorldStereo, a WorldStereoPipeline, 'geometric' or a model folder, got {type(model).__name__}.")


def _as_trajectory(trajectory, fps=None) -> tuple[CameraTrajectory, float | None]:
    """The trajectory, and the scene depth its file implies (None if it implies none).

    An official ``camera.json`` orbits a pivot at the scene's median depth: the distance from its
    first camera to its world origin. Depth maps known only up to scale (relative models, the
    fallback prior) are scaled to it, so the motion fits the scene.
    """
    if isinstance(trajectory, CameraTrajectory):
        return trajectory, None
    if isinstance(trajectory, CameraParameters):
        return CameraTrajectory(trajectory.as_batch()), None
    if isinstance(trajectory, (str, os.PathLike, dict)):
        from .trajectory_io import load_trajectory

        traj, meta = load_trajectory(trajectory, fps=fps, return_meta=True)
        return traj, trajectory_scene_depth(meta)
    raise ShapeMismatchError(
        f"camera_trajectory must be a CameraTrajectory, a trajectory file or a dict, got {type(trajectory).__name__}; "
        "build one with e.g. CameraTrajectory.forward(distance=2.0, num_frames=16)."
    )


def trajectory_scene_depth(meta: dict) -> float | None:
    """The pivot distance of an official camera.json (``meta["world_from_first"]``), or None."""
    pose = meta.get("world_from_first") if isinstance(meta, dict) else None
    if pose is None:
        return None
    distance = float(torch.as_tensor(pose, dtype=torch.float64)[:3, 3].norm())
    return distance if distance > 1e-6 else None


def _check_size(trajectory: CameraTrajectory, num_frames, height, width, multiple: int) -> CameraTrajectory:
    """The trajectory at (height, width), after checking num_frames and divisibility."""
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ConfigError(f"num_frames must be a positive integer, got {num_frames!r}.")
        if num_frames != len(trajectory):
            raise ShapeMismatchError(
                f"num_frames={num_frames} but the camera trajectory has {len(trajectory)} frames; pass num_frames={len(trajectory)}, "
                f"or resample the trajectory with trajectory.resample({num_frames})."
            )
    H = trajectory.height if height is None else height
    W = trajectory.width if width is None else width
    for name, value in (("height", H), ("width", W)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 16:
            raise ConfigError(f"{name} must be an integer of at least 16 pixels, got {value!r}.")
    if H % multiple or W % multiple:
        fix = f"{H // multiple * multiple}x{W // multiple * multiple}"
        raise ShapeMismatchError(f"height and width must be divisible by {multiple} for this model, got {H}x{W}; use e.g. {fix}.")
    if trajectory.model != "pinhole":
        raise ConfigError("The target trajectory must be of perspective (pinhole) cameras.")
    return trajectory if (H, W) == (trajectory.height, trajectory.width) else trajectory.rescale(W, H)


def _check_output(output_format: str, save_path) -> Path | None:
    check_choice("output format", output_format, OUTPUT_FORMATS)
    if save_path is None:
        if output_format == "video":
            raise OutputPathError("output_format='video' writes an MP4: pass save_path='.../name.mp4'.")
        return None
    path = Path(save_path)
    allowed = VIDEO_SUFFIXES if output_format == "video" else VIDEO_SUFFIXES + GRID_SUFFIXES
    if path.suffix.lower() not in allowed:
        raise OutputPathError(f"save_path {str(path)!r} must end with {' or '.join(allowed)} (an MP4 video, or a PNG grid of the frames).")
    if not path.parent.is_dir():
        raise OutputPathError(f"The folder of save_path does not exist: {str(path.parent)!r}; create it first or choose another path.")
    if path.is_dir():
        raise OutputPathError(f"save_path {str(path)!r} is a folder; give a file name such as {str(path / 'video.mp4')!r}.")
    return path


def load_condition_image(condition_image, height: int, width: int) -> torch.Tensor:
    """The condition image (path, PIL, numpy or tensor) as (3,height,width) in [0,1]."""
    from .io import load_image

    image = load_image(condition_image)
    h, w = image.shape[-2:]
    if (h, w) != (height, width):
        if abs(w / h - width / height) > 0.01 * width / height:
            warnings.warn(
                f"The condition image is {w}x{h} but the trajectory is {width}x{height} (another aspect ratio); it is stretched. "
                "Crop the image to the trajectory's aspect ratio, or build the trajectory at the image's size.",
                stacklevel=3,
            )
        image = load_image(image, size=(height, width))
    return image


def _point_cloud(point_cloud):
    if isinstance(point_cloud, (str, os.PathLike)):
        from .io import load_point_cloud

        return load_point_cloud(point_cloud)
    return point_cloud


def _generator(seed, device) -> torch.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an integer or None, got {seed!r}.")
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,))) if seed is None else seed)
    return g


def _format(video: torch.Tensor, output_format: str, save_path: Path | None, fps: float):
    """Write ``save_path`` (if any) and convert frames (T,3,H,W) to ``output_format``."""
    from .io import save_frame_grid, save_video

    video = video.detach().float().cpu().clamp(0, 1)
    if save_path is not None:
        if save_path.suffix.lower() in VIDEO_SUFFIXES:
            save_video(save_path, video, fps=fps)
        else:
            save_frame_grid(save_path, video)
    if output_format == "video":
        return str(save_path)
    if output_format == "numpy":
        return video.permute(0, 2, 3, 1).numpy()
    if output_format == "pil":
        from PIL import Image

        arrays = (video.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        return [Image.fromarray(a) for a in arrays]
    return video


# ----------------------------------------------------------------------------------------------
# the seed API
# ----------------------------------------------------------------------------------------------
def _prepare(model, condition_image, camera_trajectory, num_frames, height, width, point_cloud, seed, depth, depth_kind, depth_scale, depth_model, fps, scene_depth, reset_memory=True, camera_model="auto", panorama_pose=None):
    """Checked inputs: model, trajectory, image (3,H,W), depth (H,W) | None, point cloud, generator, and
    whether the memories are already started (a panorama).

    Without ``reset_memory`` the memories go on from what they hold: no depth is resolved. A
    panorama (see :mod:`ws_engine.panorama`) starts the memories itself and returns frame 0's view."""
    from .depth import resolve_depth
    from .io import load_image
    from .panorama import resolve_camera_model

    model = _as_model(model)
    traj, file_depth = _as_trajectory(camera_trajectory, fps)
    scene_depth = scene_depth or file_depth or 3.0
    traj = model.backbone.prepare_trajectory(traj, num_frames)
    traj = _check_size(traj, num_frames, height, width, model.backbone.size_multiple)
    model.backbone.check_frames(len(traj))
    generator = _generator(seed, "cpu")
    raw = load_image(condition_image)
    if resolve_camera_model(camera_model, *raw.shape[-2:]) == "equirectangular":
        image, depth_map = _start_from_panorama(model, raw, traj[0], depth, depth_kind, depth_scale, depth_model, scene_depth, point_cloud,
                                                reset_memory, panorama_pose)  # fmt: skip
        return model, traj, image, depth_map, None, generator, True
    image = load_condition_image(raw, traj.height, traj.width).to(model.device)
    cloud = _point_cloud(point_cloud)
    if not reset_memory:
        return model, traj, image, None, None, generator, False
    if depth is None and depth_model is None and cloud is not None:
        depth_map = None  # the point cloud alone starts the memory
    else:
        depth_map = resolve_depth(
            image, traj[0], depth=depth, depth_kind=depth_kind, depth_scale=depth_scale, depth_model=depth_model, device=model.device,
            scene_depth=scene_depth,
        )
    return model, traj, image, depth_map, cloud, generator, False


def _start_from_panorama(model, pano, first, depth, depth_kind, depth_scale, depth_model, scene_depth, point_cloud, reset_memory, panorama_pose):
    """Start the memories from the whole panorama (with ``reset_memory``) and return frame 0's view
    (3,H,W) and z-depth (H,W): the crop in the first camera's direction when it sits at the panorama's
    centre, else the memory's render from it (with a warning)."""
    from .panorama import crop_perspective, fit_to_memory, panorama_camera, panorama_depth, panorama_views

    pose = first.c2wb[0].detach().cpu().float() if panorama_pose is None else torch.as_tensor(panorama_pose, dtype=torch.float32).reshape(4, 4)
    pano = pano.to(model.device)
    pano_cam = panorama_camera(pose, pano.shape[-1], pano.shape[-2]).to(model.device)
    centred = float((first.c2wb[0, :3, 3].cpu().float() - pose[:3, 3]).norm()) <= 1e-4 * max(1.0, float(scene_depth))
    if not centred:
        warnings.warn(
            "The trajectory's first camera is not at the panorama's centre, so frame 0 is a render of the memory (with holes where the "
            "panorama saw nothing), not a crop of the panorama. Start the trajectory at the panorama's centre for an exact frame 0.",
            stacklevel=4,
        )
    if reset_memory:
        pano_d = panorama_depth(pano, pano_cam, depth=depth, depth_kind=depth_kind, depth_scale=depth_scale, depth_model=depth_model,
                                scene_depth=scene_depth, device=model.device)  # fmt: skip
        mem_pano, mem_depth = fit_to_memory(pano, pano_d.to(model.device), model.global_memory.max_points // 2)
        mem_cam = panorama_camera(pose, mem_pano.shape[-1], mem_pano.shape[-2]).to(model.device)
        model.initialize_memory(mem_pano, mem_cam, mem_depth, _point_cloud(point_cloud), remember=False)
    if centred and reset_memory:
        image, z = crop_perspective(pano, pano_cam, first, pano_d.to(model.device))
    elif centred:
        image, _ = crop_perspective(pano, pano_cam, first)
        z = model.global_memory.render(first).depth[0]
    else:
        out = model.global_memory.render(first)
        image, z = out.rgb[0, :3].clamp(0, 1), out.depth[0]
    image, z = image.to(model.device), z.to(model.device)
    if reset_memory:  # perspective views around the panorama's centre, as the official pano bank: exact detail to transfer
        views = panorama_views(pano_cam, first.rescale(2 * first.width, 2 * first.height))  # 2x: detail for forward motion
        crops = [crop_perspective(pano, pano_cam, v, pano_d.to(model.device)) for v in views]
        model.remember_frames(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]), CameraTrajectory(CameraParameters.stack(views)))
    model.remember_frames(image[None], z[None], CameraTrajectory(first.as_batch()))
    return image, z


def generate_video(
    model,
    condition_image,
    camera_trajectory,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    point_cloud=None,
    use_geometric_memory: bool = True,
    use_spatial_memory: bool = True,
    seed: int | None = None,
    output_format: str = "tensor",
    save_path=None,
    progress_callback=None,
    *,
    depth=None,
    depth_kind: str = "depth",
    depth_scale: float = 1.0,
    depth_model=None,
    prompt: str = "",
    fps: float | None = None,
    scene_depth: float | None = None,
    reset_memory: bool = True,
    return_result: bool = False,
    camera_model: str = "auto",
    panorama_pose=None,
):
    """Generate a video along ``camera_trajectory`` from one condition image (the view of its frame 0).

    Args:
        model: a WorldStereo, a WorldStereoPipeline, ``"geometric"`` or a model folder.
        condition_image: path, PIL image, numpy (H,W,3) or tensor (3,H,W) in [0,1].
        camera_trajectory: CameraTrajectory, or a trajectory file / dict in any supported format.
        num_frames: must equal the trajectory's length (None: take it; the neural backbone takes an
            81-camera official trajectory's 21 keyframes, and needs 1 + 20k frames).
        height, width: output size (None: the trajectory's); the trajectory's intrinsics are
            rescaled and the image resized to it.
        num_inference_steps, guidance_scale: sampler settings of neural backbones (None: the
            backbone's defaults, 40 steps and guidance 5.0 for WorldStereo 2.0; its DMD variant always
            takes 4 steps without guidance).
        point_cloud: (N,6) xyz+rgb, a dict with points/colors, or a point-cloud file; added to the
            Global memory (world = frame 0's world).
        use_geometric_memory, use_spatial_memory: the two memories' switches.
        seed: same seed and inputs give identical frames (None: random).
        output_format: ``tensor`` (T,3,H,W), ``numpy`` (T,H,W,3), ``pil`` (list), ``video`` (the
            path written; needs ``save_path``).
        save_path: an ``.mp4`` (H.264) or ``.png`` (frame grid) written after generation.
        progress_callback: ``progress_callback(step, total, latent)`` after every chunk; raising
            ``GenerationCancelled`` stops the run with the memories consistent.
        depth: the condition image's depth: array/tensor/image file (see :mod:`ws_engine.depth`),
            ``depth_kind`` ``"depth"`` or ``"disparity"``, multiplied by ``depth_scale``.
        depth_model: a transformers depth-estimation model id or folder, used when ``depth`` is None.
        scene_depth: median depth given to depth known only up to scale (relative depth models, the
            fallback prior); None: the pivot distance of an official camera.json, else 3.0.
        reset_memory: False continues the model's memories (a further trajectory of the scene).
        camera_model: ``auto`` (a 2:1 image is an equirectangular panorama), ``perspective`` or
            ``equirectangular``. A panorama (its ``depth`` an equirectangular ray-distance map, or
            ``depth_model`` on six crops, or a sphere-and-floor prior) starts the Global memory from the
            whole sphere; the trajectory is of perspective cameras from the panorama's centre and frame 0
            is the crop in the first camera's direction (see :mod:`ws_engine.panorama`).
        panorama_pose: c2w (4,4) of the panorama's camera (default: the first trajectory camera's).
        return_result: also return the :class:`GenerationResult` (depths, confidences, holes).
    """
    save = _check_output(output_format, save_path)
    model, traj, image, depth_map, cloud, generator, started = _prepare(
        model, condition_image, camera_trajectory, num_frames, height, width, point_cloud, seed, depth, depth_kind, depth_scale, depth_model, fps,
        scene_depth, reset_memory, camera_model, panorama_pose,
    )
    result = model.generate(
        image, traj, depth=depth_map, point_cloud=cloud, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        use_geometric_memory=use_geometric_memory, use_spatial_memory=use_spatial_memory, generator=generator,
        progress_callback=progress_callback, prompt=prompt, reset_memory=reset_memory and not started,
    )  # fmt: skip
    video = _format(result.frames, output_format, save, traj.fps)
    return (video, result) if return_result else video


def generate_multi_view(model, condition_image, camera_trajectories, shared_memory: bool = True, **kwargs) -> list:
    """One video per trajectory (all starting at the condition image's camera).

    ``shared_memory=True`` grows one memory across the trajectories, so a later one sees what an
    earlier one made; ``False`` starts every trajectory from the condition image alone. Other
    keyword arguments are those of :func:`generate_video`; ``save_path`` may be a list (one per
    trajectory) and ``num_frames`` is taken from each trajectory.
    """
    trajectories = list(camera_trajectories) if not isinstance(camera_trajectories, CameraTrajectory) else [camera_trajectories]
    if not trajectories:
        raise ConfigError("camera_trajectories is empty; pass at least one trajectory.")
    if "reset_memory" in kwargs or "num_frames" in kwargs:
        raise ConfigError("generate_multi_view sets reset_memory and num_frames itself (use shared_memory=...).")
    save_paths = kwargs.pop("save_path", None)
    if not isinstance(save_paths, (list, tuple)):
        save_paths = [save_paths] * len(trajectories) if save_paths is None else None
    if save_paths is None or len(save_paths) != len(trajectories):
        raise OutputPathError("generate_multi_view needs save_path as a list with one path per trajectory (or None).")
    for path in save_paths:
        _check_output(kwargs.get("output_format", "tensor"), path)
    model = _as_model(model)
    return [
        generate_video(model, condition_image, traj, save_path=path, reset_memory=(i == 0 or not shared_memory), **kwargs)
        for i, (traj, path) in enumerate(zip(trajectories, save_paths))
    ]


def reconstruct_3d(
    model,
    condition_image,
    camera_trajectory,
    reconstruction_method: str = "point_cloud",
    *,
    reconstruction_options: dict | None = None,
    **kwargs,
):
    """Generate along the trajectory, then reconstruct the scene; returns ``(video, reconstruction)``.

    ``reconstruction_method``: ``point_cloud`` (the fused Global memory, outliers removed,
    normals), ``mesh`` (TSDF fusion + marching cubes, vertex colours) or ``neural_field``.
    The reconstruction has ``points``, ``colors``, ``normals``, ``mesh`` (for "mesh") and
    ``quality_metrics``. Other keyword arguments are those of :func:`generate_video`.
    """
    from .reconstruction import RECONSTRUCTION_METHODS, reconstruct

    check_choice("reconstruction method", reconstruction_method, RECONSTRUCTION_METHODS)
    model = _as_model(model)
    kwargs["return_result"] = True
    video, result = generate_video(model, condition_image, camera_trajectory, **kwargs)
    memory = model.global_memory if kwargs.get("use_geometric_memory", True) else None
    rec = reconstruct(
        result.frames, result.depth, result.cameras, reconstruction_method, memory=memory, confidences=result.confidence,
        **(reconstruction_options or {}),
    )  # fmt: skip
    return video, rec


class WorldStereoPipeline:
    """A model plus the three seed functions as methods.

    Args:
        model_path: ``"geometric"`` (training-free, no weights), a model folder, or a WorldStereo 2.0
            variant folder / hub path (e.g. ``"hanshanxue/WorldStereo/worldstereo-memory"`` is not a hub
            id: use ``WorldStereo.from_pretrained(repo, subfolder)`` and pass the model instead).
        device: ``"cuda"`` without CUDA falls back to the CPU with one warning.
        torch_dtype: weights dtype of neural backbones (torch.float32/float16/bfloat16 or "fp32", "fp16",
            "bf16", "auto": bf16 on CUDA with bf16 support, else fp32).
        enable_xformers: use xformers attention (neural backbones; needs the xformers extra).
        enable_cpu_offload: keep weights on the CPU until a module runs (neural backbones).
    """

    def __init__(self, model_path="geometric", device="cuda", torch_dtype=torch.float32, enable_xformers=False, enable_cpu_offload=False):
        from .optimization import enable_model_cpu_offload, enable_xformers_memory_efficient_attention, resolve_dtype

        self.torch_dtype = resolve_dtype(torch_dtype)
        self.model = WorldStereo.from_pretrained(model_path, torch_dtype=self.torch_dtype, device=device)
        if enable_xformers:
            enable_xformers_memory_efficient_attention(self.model)
        if enable_cpu_offload:
            enable_model_cpu_offload(self.model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate_video(self, condition_image, camera_trajectory, *args, **kwargs):
        """:func:`generate_video` with this pipeline's model."""
        return generate_video(self.model, condition_image, camera_trajectory, *args, **kwargs)

    def generate_multi_view(self, condition_image, camera_trajectories, shared_memory: bool = True, **kwargs) -> list:
        """:func:`generate_multi_view` with this pipeline's model."""
        return generate_multi_view(self.model, condition_image, camera_trajectories, shared_memory, **kwargs)

    def reconstruct_3d(self, condition_image, camera_trajectory, reconstruction_method: str = "point_cloud", **kwargs):
        """:func:`reconstruct_3d` with this pipeline's model."""
        return reconstruct_3d(self.model, condition_image, camera_trajectory, reconstruction_method, **kwargs)

