"""``WorldMemory``: the two memories of one scene as a value that node graphs pass around.

A node graph (ComfyUI) hands one output to several nodes and caches it, so a memory must never
change under a node that already holds it. Every operation here that adds to a memory works on a
copy (:meth:`WorldMemory.clone`) and returns it. It also lets frames from any video model (the
"external" backbone) enter the memories: :meth:`WorldMemory.render` gives the structural prior
along a trajectory, :meth:`WorldMemory.add_frames` takes the frames back with their depth.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .cameras import CameraParameters, CameraTrajectory
from .errors import ConfigError, EmptyMemoryError, ShapeMismatchError, check_choice
from .geometry import complete_depth
from .memory import GlobalGeometricMemory, SpatialStereoMemory
from .model import _as_trajectory as _trajectory

__all__ = ["WorldMemory", "generate_with_memory"]

#: confidence of a pixel whose depth was completed or aligned (not rendered from the memory)
NEW_CONTENT_CONFIDENCE = 0.5
#: fewest known pixels for fitting a given depth map to the memory's depth
MIN_FIT_PIXELS = 64


@dataclass
class WorldMemory:
    """Global-Geometric + Spatial-Stereo memory of one scene and the camera they started from.

    ``camera`` is the condition view (frame 0 of every trajectory that continues this memory).
    """

    global_memory: GlobalGeometricMemory
    spatial_memory: SpatialStereoMemory
    camera: CameraParameters

    # ------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        image,
        camera: CameraParameters,
        depth=None,
        point_cloud=None,
        *,
        depth_kind: str = "depth",
        depth_scale: float = 1.0,
        depth_model=None,
        scene_depth: float = 3.0,
        global_memory_config: dict | None = None,
        spatial_memory_config: dict | None = None,
        device="cpu",
        camera_model: str = "auto",
    ) -> "WorldMemory":
        """Memories started from the condition image seen by ``camera`` (frame 0), as a generation starts them.

        Args:
            image: the condition image (path, PIL, numpy or tensor (3,h,w)); resized to the camera.
            depth: its depth (see :func:`~ws_engine.depth.depth_from_input`) at the image's own size,
                read with ``depth_kind``/``depth_scale``; None: ``depth_model``, else (without a
                point cloud) the fallback prior, both with median ``scene_depth``.
            point_cloud: (N,6) xyz+rgb, a dict with points/colors, or a point-cloud file (world =
                frame 0's world), added to the Global memory.
            camera_model: ``auto`` (a 2:1 image is a panorama), ``perspective`` or ``equirectangular``.
                A panorama taken from ``camera``'s pose starts the memory from the whole sphere; its
                ``depth`` is an equirectangular ray-distance map (see :mod:`ws_engine.panorama`).
        """
        from .depth import depth_from_input, resolve_depth
        from .io import load_image
        from .pipeline import _point_cloud, load_condition_image

        from .panorama import resolve_camera_model

        cam = _trajectory(camera)[0]
        if cam.model != "pinhole":
            raise ConfigError("The memory's camera must be a perspective (pinhole) camera.")
        raw = load_image(image)
        if resolve_camera_model(camera_model, *raw.shape[-2:]) == "equirectangular":
            from .pipeline import _start_from_panorama

            holder = _holder(global_memory_config, spatial_memory_config, device)
            _start_from_panorama(holder, raw, cam.to(holder.device), depth, depth_kind, depth_scale, depth_model, scene_depth, point_cloud,
                                 True, None)  # fmt: skip
            return cls(holder.global_memory, holder.spatial_memory, cam.to(holder.device))
        if depth is not None:  # checked at the image's size, then resized with it
            depth = depth_from_input(depth, kind=depth_kind, scale=depth_scale)
            if tuple(depth.shape) != tuple(raw.shape[-2:]):
                raise ShapeMismatchError(
                    f"The depth map is {depth.shape[1]}x{depth.shape[0]} but the image is {raw.shape[-1]}x{raw.shape[-2]}; "
                    "give the depth of this image at its size (run the depth model on the same image)."
                )
            depth_kind, depth_scale = "depth", 1.0
        holder = _holder(global_memory_config, spatial_memory_config, device)
        rgb = load_condition_image(raw, cam.height, cam.width).to(holder.device)
        cloud = _point_cloud(point_cloud)
        if depth is None and depth_model is None and cloud is not None:
            depth_map = None
        else:
            if depth is not None and tuple(depth.shape) != (cam.height, cam.width):
                depth = torch.nn.functional.interpolate(depth[None, None], size=(cam.height, cam.width), mode="nearest")[0, 0]
            depth_map = resolve_depth(
                rgb, cam.to(holder.device), depth=depth, depth_kind=depth_kind, depth_scale=depth_scale, depth_model=depth_model,
                device=holder.device, scene_depth=scene_depth,
            )
        holder.initialize_memory(rgb, cam.to(holder.device), depth_map, cloud)
        return cls(holder.global_memory, holder.spatial_memory, cam.to(holder.device))

    @classmethod
    def from_views(cls, images, cameras: CameraParameters, depths=None, *, depth_model=None, scene_depth: float = 3.0,
                   global_memory_config: dict | None = None, spatial_memory_config: dict | None = None, device="cpu") -> "WorldMemory":  # fmt: skip
        """Memories started from posed views (V,3,H,W) with V pinhole ``cameras``: their ``depths``
        (V,H,W) if given, else ``depth_model`` per view, else the fallback prior per view (with a warning).
        The memory's camera is the first view's."""
        from .depth import resolve_depth

        holder = _holder(global_memory_config, spatial_memory_config, device)
        images = torch.as_tensor(images, dtype=torch.float32).to(holder.device)
        cams = _trajectory(cameras).cameras.to(holder.device)
        if images.dim() != 4 or images.shape[0] != len(cams) or images.shape[1] != 3:
            raise ShapeMismatchError(f"images must be (V,3,H,W) with one image per camera ({len(cams)}), got {tuple(images.shape)}.")
        if depths is None:
            depths = torch.stack([resolve_depth(images[v], cams[v], depth_model=depth_model, device=holder.device, scene_depth=scene_depth)
                                  for v in range(len(cams))])  # fmt: skip
        holder.initialize_from_views(images, cams, torch.as_tensor(depths, dtype=torch.float32).to(holder.device))
        return cls(holder.global_memory, holder.spatial_memory, cams[0])

    @classmethod
    def from_pano_bank(cls, folder, depths=None, **kwargs) -> "WorldMemory":
        """:meth:`from_views` on the official multi-view ``pano_bank`` folder (see :func:`ws_engine.panorama.load_pano_bank`)."""
        from .panorama import load_pano_bank

        images, cameras, _ = load_pano_bank(folder)
        return cls.from_views(images, cameras, depths, **kwargs)

    def clone(self, device=None) -> "WorldMemory":
        """A deep copy (optionally on another device); the original stays as it is."""
        out = WorldMemory(copy.deepcopy(self.global_memory), copy.deepcopy(self.spatial_memory), self.camera)
        return out.to(device) if device is not None else out

    def to(self, device) -> "WorldMemory":
        """Move both memories to ``device`` (in place); returns self."""
        self.global_memory.to(device)
        self.spatial_memory.to(device)
        self.camera = self.camera.to(self.global_memory.device)
        return self

    @property
    def device(self) -> torch.device:
        return self.global_memory.device

    def __len__(self) -> int:
        return len(self.global_memory)

    def __repr__(self) -> str:
        return f"WorldMemory({len(self.global_memory)} points, {len(self.spatial_memory)} features, {len(self.spatial_memory.views)} views)"

    # ------------------------------------------------------------------------------------------
    def check_start(self, trajectory: CameraTrajectory, what: str = "The trajectory") -> None:
        """Raise unless ``trajectory`` starts at this memory's camera (same pose and field of view)."""
        first = trajectory[0].to(self.device)
        cam = self.camera.rescale(first.width, first.height) if (first.width, first.height) != (self.camera.width, self.camera.height) else self.camera
        a, b = first.c2w.reshape(4, 4), cam.c2w.reshape(4, 4)
        Ka, Kb = first.K.reshape(3, 3), cam.K.reshape(3, 3)
        moved = float((a[:3, 3] - b[:3, 3]).norm())
        turned = float((a[:3, :3] - b[:3, :3]).abs().max())
        focal = float((Ka[:2, :2] - Kb[:2, :2]).abs().max() / Kb[0, 0])
        scale = max(1.0, float(b[:3, 3].norm()))
        if moved > 1e-3 * scale or turned > 1e-3 or focal > 1e-3:
            raise ShapeMismatchError(
                f"{what} does not start at the camera the memory was built from (moved {moved:.3g}, rotated, or another field of "
                "view). Connect the same Camera Trajectory to the memory node, or start this trajectory at the memory's camera."
            )

    def render(self, trajectory: CameraTrajectory, radius: float | None = None):
        """The Global memory rendered along ``trajectory``: geometry.RenderOutput with rgb
        (T,3,H,W), depth (T,H,W), mask (T,H,W) True where the memory has a point, index."""
        self._check_not_empty()
        return self.global_memory.render(_trajectory(trajectory).to(self.device), radius=radius)

    def known_depth(self, trajectory: CameraTrajectory) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth at the pixel centres of every frame (T,H,W) where the memory has a surface, and
        that coverage (T,H,W) bool (the geometric backbone's exact per-pixel depth)."""
        from .backbones.geometric import pixel_centre_depth

        traj = _trajectory(trajectory).to(self.device)
        self._check_not_empty()
        out = self.global_memory.render(traj, radius=1)
        depths = torch.stack([pixel_centre_depth(self.global_memory.points, out.index[t], cam)[0] for t, cam in enumerate(traj)])
        return depths, depths > 0

    def frame_depth(self, trajectory: CameraTrajectory) -> torch.Tensor:
        """Depth (T,H,W) of every frame: the memory's surface, holes completed from the background."""
        depth, known = self.known_depth(trajectory)
        empty = ~known.flatten(1).any(1)
        if bool(empty.any()):
            bad = [int(i) for i in empty.nonzero()[:, 0]]
            raise EmptyMemoryError(
                f"The memory sees nothing from frame(s) {bad[:8]} of the trajectory; add those frames to the memory first "
                "(WorldStereo Update Memory) or use a trajectory that looks at the scene."
            )
        return complete_depth(depth, known)

    # ------------------------------------------------------------------------------------------
    def add_frames(self, frames: torch.Tensor, trajectory: CameraTrajectory, depth: torch.Tensor | None = None, *, depth_kind: str = "disparity") -> "WorldMemory":
        """A copy of this memory that also holds ``frames`` (T,3,H,W) seen along ``trajectory``.

        Where the memory already has a surface, a frame keeps the memory's depth; elsewhere the
        depth comes from ``depth`` (T,H,W) (any depth model's output, ``depth_kind`` ``"depth"`` or
        ``"disparity"``, fitted per frame by scale and shift to the memory's depth) or, without it,
        is completed from the neighbouring background. Only those new pixels enter the Global
        memory; every frame becomes a Spatial-Stereo view.
        """
        check_choice("depth kind", depth_kind, ("depth", "disparity"))
        traj = _trajectory(trajectory)
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ShapeMismatchError(f"frames must have shape (T,3,H,W), got {tuple(frames.shape)}.")
        if len(frames) != len(traj):
            raise ShapeMismatchError(
                f"There are {len(frames)} frames but the trajectory has {len(traj)} cameras; give one camera per frame "
                f"(set the trajectory's frames to {len(frames)})."
            )
        if tuple(frames.shape[-2:]) != (traj.height, traj.width):
            raise ShapeMismatchError(
                f"The frames are {frames.shape[-1]}x{frames.shape[-2]} but the trajectory is {traj.width}x{traj.height}; "
                "make the trajectory the frames' size (or resize the frames)."
            )
        if depth is not None and tuple(depth.shape) != (len(frames), *frames.shape[-2:]):
            raise ShapeMismatchError(f"depth must be (T,H,W) = {(len(frames), *frames.shape[-2:])} like the frames, got {tuple(depth.shape)}.")
        out = self.clone()
        traj = traj.to(out.device)
        frames = frames.to(out.device, torch.float32)
        known_depth, known = out.known_depth(traj)
        if depth is None:
            full = complete_depth(known_depth, known) if bool(known.flatten(1).any(1).all()) else _complete_each(known_depth, known, out)
        else:
            full = torch.stack([_fit_depth(depth[t].to(out.device).float(), known_depth[t], known[t], depth_kind, out) for t in range(len(traj))])
            full = torch.where(known, known_depth, full)
        conf = torch.where(known, 1.0, NEW_CONTENT_CONFIDENCE)
        with _holder_of(out) as holder:
            holder.update_geometric_memory(frames, full, traj, mask=~known, confidence=conf)
            holder.remember_frames(frames, full, traj, conf)
        return out

    def _check_not_empty(self) -> None:
        if len(self.global_memory) == 0:
            raise EmptyMemoryError("The memory holds no points; build it with a depth map or a point cloud first.")


# ----------------------------------------------------------------------------------------------
def generate_with_memory(model, memory: WorldMemory, condition_image, camera_trajectory, **kwargs):
    """:func:`~ws_engine.pipeline.generate_video` that continues ``memory`` (which stays unchanged).

    The trajectory must start at the memory's camera. Returns ``(result, memory')``: the
    :class:`~ws_engine.model.GenerationResult` and a new WorldMemory that also holds the frames.
    Other keyword arguments are those of generate_video (not depth, point_cloud, reset_memory).
    """
    from .pipeline import _as_model, generate_video

    for key in ("depth", "depth_model", "point_cloud", "reset_memory", "return_result"):
        if key in kwargs:
            raise ConfigError(f"{key} cannot be given with a memory: the memory already holds the scene's start.")
    model = _as_model(model)
    traj = _trajectory(camera_trajectory)
    memory.check_start(traj)
    out = memory.clone(model.device)
    with model.using_memory(out):
        _, result = generate_video(model, condition_image, traj, reset_memory=False, return_result=True, **kwargs)
    return result, out


def _holder(global_memory_config, spatial_memory_config, device):
    """A training-free WorldStereo that owns memories of these configs (no weights)."""
    from .model import WorldStereo

    return WorldStereo(global_memory_config=global_memory_config, spatial_memory_config=spatial_memory_config, device=device)


@contextmanager
def _holder_of(memory: WorldMemory):
    holder = _holder(memory.global_memory.config, memory.spatial_memory.config, memory.device)
    with holder.using_memory(memory):
        yield holder


def _complete_each(known_depth: torch.Tensor, known: torch.Tensor, memory: WorldMemory) -> torch.Tensor:
    """complete_depth per frame; a frame that sees nothing known takes the memory's median distance."""
    out = torch.empty_like(known_depth)
    for t in range(len(known_depth)):
        if bool(known[t].any()):
            out[t] = complete_depth(known_depth[t], known[t])
        else:
            out[t] = _median_depth(memory)
    return out


def _median_depth(memory: WorldMemory) -> float:
    pts = memory.global_memory.points[:: max(1, len(memory) // 20000)]
    return float((pts - memory.camera.position.reshape(1, 3)).norm(dim=1).median())


def _fit_depth(values: torch.Tensor, known_depth: torch.Tensor, known: torch.Tensor, kind: str, memory: WorldMemory) -> torch.Tensor:
    """A depth model's map (H,W) in scene units: scale and shift fitted to the memory's depth
    (in inverse depth for disparity) over the pixels both know."""
    target = torch.where(known, 1.0 / known_depth.clamp(min=1e-6), 0.0) if kind == "disparity" else known_depth
    usable = known & (values > 0) if kind == "disparity" else known
    if int(usable.sum()) >= MIN_FIT_PIXELS:
        x, y = values[usable].double(), target[usable].double()
        A = torch.stack([x, torch.ones_like(x)], 1)
        a, b = torch.linalg.lstsq(A, y[:, None]).solution[:, 0].tolist()
        if a <= 0:  # the map does not follow the memory's depth: take its scale only
            a, b = float(y.median() / x.median().clamp(min=1e-9)), 0.0
    else:  # nothing to fit to: median depth of the memory
        median = _median_depth(memory)
        m = float(values[values > 0].median()) if bool((values > 0).any()) else 1.0
        a, b = ((1.0 / median) / m, 0.0) if kind == "disparity" else (median / m, 0.0)
    mapped = a * values.double() + b
    if kind == "disparity":
        floor = 1.0 / (1000.0 * _median_depth(memory))  # farther than 1000 x the median: unknown
        depth = torch.where(mapped > floor, 1.0 / mapped.clamp(min=floor), 0.0)
    else:
        depth = mapped.clamp(min=0.0)
    depth = depth.float()
    missing = depth <= 0
    if bool(missing.any()) and bool((~missing).any()):
        depth = complete_depth(depth, ~missing)
    elif bool(missing.all()):
        depth = torch.full_like(depth, _median_depth(memory))
    return depth
