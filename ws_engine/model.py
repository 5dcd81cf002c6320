"""``WorldStereo``: the two memories and a backbone, generating frame chunk by chunk along a trajectory."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbones import Backbone, ChunkInputs, build_backbone
from .cameras import CameraParameters, CameraTrajectory
from .device import resolve_device
from .errors import ConfigError, EmptyMemoryError, ModelLoadError, ShapeMismatchError
from .geometry import unproject
from .io import atomic_write_text
from .memory import GlobalGeometricMemory, SpatialStereoMemory

__all__ = ["WorldStereo", "GenerationResult", "DEFAULT_SPATIAL_MEMORY", "DEFAULT_GLOBAL_MEMORY"]

#: Spatial-Stereo memory defaults of the model: one entry per 16x16 patch, its colours pooled to a
#: 4x4 grid (48 features) and tied to the 3D points of its four quadrant centres.
DEFAULT_SPATIAL_MEMORY = {"memory_size": 16384, "feature_dim": 48, "num_correspondences": 4, "attention_window": 16}
#: Global memory defaults: two features per point (:data:`POINT_FEATURES`): its confidence (1 =
#: observed, lower = invented) and its footprint (the size of the pixel it came from, in scene units).
DEFAULT_GLOBAL_MEMORY = {"max_points": 2_000_000, "merge_threshold": 0.005, "feature_dim": 2}
POINT_FEATURES = ("confidence", "footprint")
PATCH = 16
SEEN_CONFIDENCE = 0.5
CONFIG_NAME = "config.json"


@dataclass
class GenerationResult:
    """Output of :meth:`WorldStereo.generate` for T frames.

    frames (T,3,H,W) in [0,1]; depth (T,H,W) (0 = unknown); confidence (T,H,W) in [0,1];
    holes (T,H,W) bool, the pixels the backbone invented in that frame (neither memory knew them);
    :attr:`seen` (T,H,W) bool, the pixels that go back to an observation (confidence >= 0.5),
    not to content invented in an earlier frame;
    prior (T,3,H,W), what the memories alone gave (the backbone's structural input);
    cameras, the trajectory.
    """

    frames: torch.Tensor
    depth: torch.Tensor
    confidence: torch.Tensor
    holes: torch.Tensor
    prior: torch.Tensor
    cameras: CameraTrajectory

    @property
    def seen(self) -> torch.Tensor:
        return self.confidence >= SEEN_CONFIDENCE


def _as_trajectory(trajectory) -> CameraTrajectory:
    if isinstance(trajectory, CameraTrajectory):
        return trajectory
    if isinstance(trajectory, CameraParameters):
        return CameraTrajectory(trajectory.as_batch())
    raise ShapeMismatchError(f"camera_trajectory must be a CameraTrajectory, got {type(trajectory).__name__}.")


class WorldStereo(torch.nn.Module):
    """Memories + backbone (the seed API).

    Args:
        vdm_config: ``{"backbone": "geometric" | "worldstereo", ...backbone options}``.
        global_memory_config: keyword arguments of :class:`GlobalGeometricMemory`.
        spatial_memory_config: keyword arguments of :class:`SpatialStereoMemory`.
        pretrained_path: a folder written by :meth:`save_pretrained` (its config is read; explicit
            configs given here override it), or None.
        device: ``"cuda"`` without CUDA falls back to the CPU with one warning.
    """

    def __init__(self, vdm_config=None, global_memory_config=None, spatial_memory_config=None, pretrained_path=None, device="cuda"):
        super().__init__()
        if pretrained_path is not None:
            saved = _read_config(pretrained_path)
            vdm_config = vdm_config if vdm_config is not None else saved.get("vdm_config")
            global_memory_config = global_memory_config if global_memory_config is not None else saved.get("global_memory_config")
            spatial_memory_config = spatial_memory_config if spatial_memory_config is not None else saved.get("spatial_memory_config")
        for name, value in (("vdm_config", vdm_config), ("global_memory_config", global_memory_config), ("spatial_memory_config", spatial_memory_config)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{name} must be a dict (or None for the defaults), got {type(value).__name__}.")
        self.device = resolve_device(device)
        self.vdm_config = {"backbone": "geometric", **(vdm_config or {})}
        self.global_memory_config = {**DEFAULT_GLOBAL_MEMORY, **(global_memory_config or {})}
        self.spatial_memory_config = {**DEFAULT_SPATIAL_MEMORY, **(spatial_memory_config or {})}
        self.backbone: Backbone = build_backbone(self.vdm_config)
        self.backbone.to(self.device)
        try:
            self.global_memory = GlobalGeometricMemory(**self.global_memory_config, device=self.device)
            self.spatial_memory = SpatialStereoMemory(**self.spatial_memory_config, device=self.device)
        except TypeError as e:
            raise ConfigError(f"A memory config has an unknown key: {e}. See GlobalGeometricMemory / SpatialStereoMemory for the keys.") from None
        self._patch_grid = _patch_grid(self.spatial_memory.feature_dim, self.spatial_memory.num_correspondences)

    # ------------------------------------------------------------------------------------------
    # configuration, saving, loading
    # ------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The three configs as plain dicts (what :meth:`save_pretrained` writes)."""
        return {
            "vdm_config": dict(self.vdm_config),
            "global_memory_config": self.global_memory.config,
            "spatial_memory_config": self.spatial_memory.config,
        }

    def save_pretrained(self, folder) -> Path:
        """Write ``config.json`` (atomically) into ``folder``; returns the folder."""
        folder = Path(folder)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, path_or_name="geometric", subfolder: str | None = None, *, local_files_only: bool = False, torch_dtype=None,
                        revision: str | None = None, device="cuda", **overrides) -> "WorldStereo":  # fmt: skip
        """``"geometric"``: the training-free model. A folder written by :meth:`save_pretrained`: its configs.
        A released WorldStereo 2.0 checkpoint (a hub id such as ``"hanshanxue/WorldStereo"`` or a local
        folder in its layout) with ``subfolder`` = ``worldstereo-camera`` / ``worldstereo-memory`` /
        ``worldstereo-memory-dmd``: the neural backbone (needs the ``neural`` extra)."""
        if isinstance(path_or_name, str) and path_or_name == "geometric":
            return cls(vdm_config={"backbone": "geometric", **overrides.pop("vdm_config", {})}, device=device, **overrides)
        folder = Path(str(path_or_name)).expanduser()
        local = folder / subfolder if subfolder else folder
        official = not (local / CONFIG_NAME).is_file() or "vdm_config" not in _read_config(local)
        if official:
            neural = {"backbone": "worldstereo", "pretrained": str(path_or_name), "subfolder": subfolder, "local_files_only": local_files_only,
                      "torch_dtype": str(torch_dtype).removeprefix("torch.") if torch_dtype is not None else "fp32", "revision": revision}  # fmt: skip
            return cls(vdm_config={**neural, **overrides.pop("vdm_config", {})}, device=device, **overrides)
        return cls(pretrained_path=local, device=device, **overrides)

    @property
    def transformer(self):
        """The neural backbone's transformer (official argument names in ``forward``)."""
        transformer = getattr(self.backbone, "transformer", None)
        if transformer is None:
            raise ConfigError(f"The {self.backbone.name!r} backbone has no transformer; load a neural model with from_pretrained().")
        return transformer

    def forward(self, *args, **kwargs):
        if not self.backbone.trainable:
            raise ConfigError(
                f"The {self.backbone.name!r} backbone is training-free: it has no weights, so there is nothing to train "
                "and no forward pass. Use generate() to make frames."
            )
        return self.backbone(*args, **kwargs)  # pragma: no cover - trainable backbones

    # ------------------------------------------------------------------------------------------
    # memories
    # ------------------------------------------------------------------------------------------
    @property
    def memory_state(self) -> dict:
        """A snapshot of both memories: tensors (``global_memory``, ``spatial_memory`` state dicts) and counts."""
        return {
            "global_memory": self.global_memory.state_dict(),
            "spatial_memory": self.spatial_memory.state_dict(),
            "num_points": len(self.global_memory),
            "num_entries": len(self.spatial_memory),
            "num_views": len(self.spatial_memory.views),
        }

    def reset_memory(self) -> None:
        """Empty both memories."""
        self.global_memory.clear()
        self.spatial_memory.clear()

    @contextmanager
    def using_memory(self, memory):
        """Work on ``memory``'s two memories (a :class:`~ws_engine.world_memory.WorldMemory`, moved to
        this model's device) inside the ``with`` block; the model's own memories come back after it."""
        if _patch_grid(memory.spatial_memory.feature_dim, memory.spatial_memory.num_correspondences) != self._patch_grid:
            raise ConfigError(
                f"The memory's Spatial-Stereo features ({memory.spatial_memory.feature_dim} per entry) do not fit this model "
                f"({self.spatial_memory.feature_dim}); build the memory with the model's spatial_memory_config."
            )
        memory.to(self.device)
        saved = self.global_memory, self.spatial_memory
        self.global_memory, self.spatial_memory = memory.global_memory, memory.spatial_memory
        try:
            yield self
        finally:
            self.global_memory, self.spatial_memory = saved

    def initialize_memory(self, image: torch.Tensor, camera: CameraParameters, depth: torch.Tensor | None = None, point_cloud=None,
                          remember: bool = True) -> None:  # fmt: skip
        """Start both memories from the condition image (3,H,W) seen by ``camera``.

        ``depth`` (H,W) (0 = unknown; ray distance for an equirectangular camera) is lifted into the
        Global memory; ``point_cloud`` (N,6) xyz+rgb or a dict with ``points``/``colors`` is added to it
        (world coordinates). ``remember``: also register the image as a Spatial-memory view (perspective
        cameras only; a panorama's caller registers its perspective frame 0 instead).
        """
        image = image.to(self.device)
        self.reset_memory()
        points, colors, footprints = [], [], []
        if depth is not None:
            depth = depth.to(self.device)
            valid = depth > 0
            points.append(unproject(depth, camera)[valid])
            colors.append(image.permute(1, 2, 0)[valid])
            footprints.append(_footprint(depth, camera)[valid])
        if point_cloud is not None:
            p, c = _parse_point_cloud(point_cloud, self.device)
            points.append(p)
            colors.append(c)
            footprints.append(torch.zeros(len(p), device=self.device))  # unknown: drawn one pixel wide
        if not points or sum(len(p) for p in points) == 0:
            raise EmptyMemoryError("Nothing to start the memory from: give a depth map with valid pixels or a point cloud.")
        points, colors, footprints = torch.cat(points), torch.cat(colors), torch.cat(footprints)
        # a panorama's pixels are finer than any merge radius near its poles: keep them all
        merge = 0.0 if camera.model == "equirectangular" else None
        self.global_memory.initialize(points, colors=colors, features=self._point_features(torch.ones(len(points), device=self.device), footprints),
                                      merge_threshold=merge)  # fmt: skip
        if remember and camera.model == "pinhole":
            self.remember_frames(image[None], depth[None] if depth is not None else None, CameraTrajectory(camera.as_batch()))

    def initialize_from_views(self, images: torch.Tensor, cameras: CameraParameters, depths: torch.Tensor) -> None:
        """Start both memories from posed views (e.g. the official ``pano_bank``): images (V,3,H,W),
        V pinhole cameras, depths (V,H,W) (0 = unknown) all lifted into the Global memory; every view
        is registered in the Spatial memory."""
        cams = _as_trajectory(cameras)
        _check_frames(images, depths, cams)
        self.reset_memory()
        images, depths = images.to(self.device), depths.to(self.device)
        points, colors, footprints = [], [], []
        for v, cam in enumerate(cams):
            valid = depths[v] > 0
            points.append(unproject(depths[v], cam.to(self.device))[valid])
            colors.append(images[v].permute(1, 2, 0)[valid])
            footprints.append(_footprint(depths[v], cam.to(self.device))[valid])
        points, colors, footprints = torch.cat(points), torch.cat(colors), torch.cat(footprints)
        if len(points) == 0:
            raise EmptyMemoryError("The views' depth maps have no valid pixels; give depths > 0.")
        self.global_memory.initialize(points, colors=colors, features=self._point_features(torch.ones(len(points), device=self.device), footprints))
        self.remember_frames(images, depths, cams)

    def _point_features(self, confidence: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor | None:
        """Per-point features (N,2) = (confidence, footprint) when the Global memory has feature_dim 2
        (:data:`POINT_FEATURES`); None for other memories (their features are the caller's)."""
        return torch.stack([confidence, footprint], 1) if self.global_memory.feature_dim == len(POINT_FEATURES) else None

    def update_geometric_memory(self, frames: torch.Tensor, depths: torch.Tensor, cameras, mask: torch.Tensor | None = None, confidence: torch.Tensor | None = None):
        """Lift frames (T,3,H,W) with depths (T,H,W) into the Global memory; ``mask`` (T,H,W) selects pixels.

        ``confidence`` (T,H,W) and the pixel footprint are stored per point when the memory has
        ``feature_dim=2`` (the default, :data:`POINT_FEATURES`).
        Returns the last UpdateResult (num_added, num_merged, total_points).
        """
        cams = _as_trajectory(cameras)
        frames, depths = frames.to(self.device), depths.to(self.device)
        _check_frames(frames, depths, cams)
        result = None
        for t, cam in enumerate(cams):
            keep = depths[t] > 0
            if mask is not None:
                keep &= mask[t].to(self.device, torch.bool)
            if bool(keep.any()):
                conf = torch.ones_like(depths[t]) if confidence is None else confidence[t].to(self.device)
                result = self.global_memory.update(
                    unproject(depths[t], cam)[keep], camera_pose=cam, colors=frames[t].permute(1, 2, 0)[keep], features=self._point_features(conf[keep], _footprint(depths[t], cam)[keep])
                )
        return result

    def extract_features(self, frames: torch.Tensor, depths: torch.Tensor | None = None, cameras=None, confidence: torch.Tensor | None = None) -> dict:
        """Spatial-Stereo features of frames (T,3,H,W): one per 16x16 patch.

        Returns ``features`` (T,P,D) (the patch's colours average-pooled to a g x g grid, D = 3g²),
        and with depths (T,H,W) and cameras also ``correspondences`` (T,P,K,3), the world points at
        the patch's K sub-cell centres, and ``confidences`` (T,P,K) (0 where the depth is unknown).
        """
        frames = frames.to(self.device)
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ShapeMismatchError(f"frames must have shape (T,3,H,W), got {tuple(frames.shape)}.")
        T, _, H, W = frames.shape
        g, kg = self._patch_grid
        Hp, Wp = H // PATCH, W // PATCH
        if Hp == 0 or Wp == 0:
            raise ShapeMismatchError(f"Frames of {H}x{W} are smaller than one {PATCH}x{PATCH} patch.")
        crop = frames[:, :, : Hp * PATCH, : Wp * PATCH]
        feats = F.adaptive_avg_pool2d(crop, (Hp * g, Wp * g))  # (T,3,Hp*g,Wp*g)
        feats = feats.reshape(T, 3, Hp, g, Wp, g).permute(0, 2, 4, 1, 3, 5).reshape(T, Hp * Wp, 3 * g * g)
        out = {"features": feats}
        if depths is None or cameras is None:
            return out
        cams = _as_trajectory(cameras)
        depths = depths.to(self.device)
        _check_frames(frames, depths, cams)
        step = PATCH // kg
        ys = torch.arange(Hp * kg, device=self.device) * step + step // 2
        xs = torch.arange(Wp * kg, device=self.device) * step + step // 2
        conf = torch.ones_like(depths) if confidence is None else confidence.to(self.device)
        corr, cc = [], []
        for t, cam in enumerate(cams):
            d = depths[t][ys][:, xs]  # (Hp*kg, Wp*kg)
            X = _unproject_at(d, cam, ys, xs)
            c = torch.where(d > 0, conf[t][ys][:, xs], 0.0)
            corr.append(X.reshape(Hp, kg, Wp, kg, 3).permute(0, 2, 1, 3, 4).reshape(Hp * Wp, kg * kg, 3))
            cc.append(c.reshape(Hp, kg, Wp, kg).permute(0, 2, 1, 3).reshape(Hp * Wp, kg * kg))
        out["correspondences"], out["confidences"] = torch.stack(corr), torch.stack(cc)
        return out

    def remember_frames(self, frames: torch.Tensor, depths: torch.Tensor | None, cameras, confidence: torch.Tensor | None = None) -> None:
        """Register frames (T,3,H,W) as views of the Spatial-Stereo memory and store their patch features."""
        cams = _as_trajectory(cameras)
        for t, cam in enumerate(cams):
            depth = None if depths is None else depths[t]
            conf = None if confidence is None else confidence[t]
            view = self.spatial_memory.add_view(cam, frames[t], depth=depth, confidence=conf)
            if depth is None:
                continue
            feats = self.extract_features(frames[t : t + 1], depth[None], cam, None if conf is None else conf[None])
            keep = feats["confidences"][0].amax(1) > 0
            f, x, c = feats["features"][0][keep], feats["correspondences"][0][keep], feats["confidences"][0][keep]
            M = self.spatial_memory.memory_size
            for i in range(0, len(f), M):  # a bank smaller than one frame's patches takes them in turns
                slots = self.spatial_memory.add_to_memory(f[i : i + M], x[i : i + M], c[i : i + M])
                self.spatial_memory.entry_view[slots] = view

    # ------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        condition_image: torch.Tensor,
        camera_trajectory,
        *,
        depth: torch.Tensor | None = None,
        point_cloud=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        use_geometric_memory: bool = True,
        use_spatial_memory: bool = True,
        generator: torch.Generator | None = None,
        progress_callback=None,
        prompt: str = "",
        reset_memory: bool = True,
    ) -> GenerationResult:
        """Frames along ``camera_trajectory`` (T cameras) from the condition image (3,H,W) of frame 0.

        With ``reset_memory`` the memories start from the image and its ``depth`` (H,W) and/or
        ``point_cloud``; without it they go on from what they hold (a second trajectory of the same
        scene). Frame 0 is the condition image. After each chunk both memories take the chunk's
        frames, so an interruption (e.g. ``progress_callback`` raising GenerationCancelled) leaves
        them consistent with the frames made so far. ``progress_callback(step, total, latent)`` is
        called after every chunk with the chunk's frames as ``latent``.
        """
        traj = _as_trajectory(camera_trajectory).to(self.device)
        image = condition_image.to(self.device)
        H, W = traj.height, traj.width
        if image.shape != (3, H, W):
            raise ShapeMismatchError(f"condition_image must be (3,{H},{W}) for this trajectory, got {tuple(image.shape)}.")
        if depth is not None and tuple(depth.shape) != (H, W):
            raise ShapeMismatchError(f"depth must be ({H},{W}) for this trajectory, got {tuple(depth.shape)}.")
        self.backbone.check(use_geometric_memory, use_spatial_memory)
        self.backbone.check_frames(len(traj))
        num_inference_steps = self.backbone.default_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = self.backbone.default_guidance if guidance_scale is None else guidance_scale
        m = self.backbone.size_multiple
        if H % m or W % m:
            raise ShapeMismatchError(f"The {self.backbone.name} backbone needs a height and width divisible by {m}, got {H}x{W}.")
        if reset_memory:
            self.initialize_memory(image, traj[0], depth, point_cloud)
        elif len(self.global_memory) == 0 and not self.spatial_memory.views:
            raise EmptyMemoryError("reset_memory=False needs memories that hold something; generate once with reset_memory=True first.")
        T = len(traj)
        frames = torch.zeros(T, 3, H, W, device=self.device)
        depths = torch.zeros(T, H, W, device=self.device)
        conf = torch.zeros(T, H, W, device=self.device)
        holes = torch.zeros(T, H, W, dtype=torch.bool, device=self.device)
        prior = torch.zeros(T, 3, H, W, device=self.device)
        frames[0], prior[0], conf[0] = image, image, 1.0
        if depth is not None:
            depths[0] = depth.to(self.device)
        if progress_callback is not None:
            progress_callback(1, T, frames[:1])
        chunk = max(1, self.backbone.chunk_size)
        for start in range(1, T, chunk):
            idx = torch.arange(start, min(start + chunk, T), device=self.device)
            cams = traj.cameras[idx]
            renders = None
            if use_geometric_memory and len(self.global_memory):
                renders = self.global_memory.render(cams, radius=self.backbone.render_radius)
            out = self.backbone.fill(
                ChunkInputs(image, cams, idx, renders, self.global_memory, self.spatial_memory, use_geometric_memory, use_spatial_memory,
                            num_inference_steps, guidance_scale, prompt, generator, None, frames[start - 1], traj.cameras[start - 1])
            )  # fmt: skip
            frames[idx] = out.frames.to(self.device)
            if out.depth is not None:
                depths[idx] = out.depth.to(self.device)
            conf[idx] = 1.0 if out.confidence is None else out.confidence.to(self.device)
            holes[idx] = out.extras.get("holes", torch.zeros_like(holes[idx])).to(self.device)
            prior[idx] = out.extras.get("prior", out.frames).to(self.device)
            chunk_traj = CameraTrajectory(cams)
            if use_geometric_memory and out.depth is not None:
                self.update_geometric_memory(frames[idx], depths[idx], chunk_traj, out.new_pixels, conf[idx])
            if use_spatial_memory:
                self.remember_frames(frames[idx], depths[idx] if out.depth is not None else None, chunk_traj, conf[idx])
            if progress_callback is not None:
                progress_callback(int(idx[-1]) + 1, T, frames[idx])
        return GenerationResult(frames, depths, conf, holes, prior, traj)


# ----------------------------------------------------------------------------------------------
def _patch_grid(feature_dim: int, num_correspondences: int) -> tuple[int, int]:
    """(g, kg): colours pooled to g x g per patch (feature_dim = 3g²), kg x kg correspondences."""
    g = round((feature_dim / 3) ** 0.5)
    kg = round(num_correspondences**0.5)
    if 3 * g * g != feature_dim or PATCH % max(g, 1) or g < 1:
        raise ConfigError(
            f"spatial_memory_config feature_dim={feature_dim} does not fit the patch features (RGB pooled to a g x g grid): "
            "use 3, 12, 48 or 192 (g = 1, 2, 4, 8)."
        )
    if kg * kg != num_correspondences or PATCH % kg:
        raise ConfigError(f"spatial_memory_config num_correspondences={num_correspondences} must be 1, 4, 16 or 64 (a square grid per patch).")
    return g, kg


def _footprint(depth: torch.Tensor, camera: CameraParameters) -> torch.Tensor:
    """Size (H,W) in scene units of each pixel's patch of surface: depth / focal length."""
    return depth / camera.Kb[0, 0, 0].to(depth)


def _unproject_at(depth: torch.Tensor, cam: CameraParameters, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """World points (h,w,3) of the pixels (ys x xs) with depths (h,w) seen by a pinhole camera."""
    K = cam.Kb[0].to(depth)
    x = (xs.to(depth) - K[0, 2]) / K[0, 0]
    y = (ys.to(depth) - K[1, 2]) / K[1, 1]
    P = torch.stack(torch.broadcast_tensors(x[None, :], y[:, None], torch.ones_like(depth)), -1) * depth[..., None]
    c2w = cam.c2wb[0].to(depth)
    return P @ c2w[:3, :3].T + c2w[:3, 3]


def _check_frames(frames: torch.Tensor, depths: torch.Tensor, cams: CameraTrajectory) -> None:
    T, H, W = len(cams), cams.height, cams.width
    if frames.dim() != 4 or tuple(frames.shape) != (T, 3, H, W):
        raise ShapeMismatchError(f"frames must be (T,3,H,W) = ({T},3,{H},{W}) for these cameras, got {tuple(frames.shape)}.")
    if tuple(depths.shape) != (T, H, W):
        raise ShapeMismatchError(f"depths must be (T,H,W) = ({T},{H},{W}) for these cameras, got {tuple(depths.shape)}.")


def _parse_point_cloud(point_cloud, device) -> tuple[torch.Tensor, torch.Tensor]:
    """points (N,3), colors (N,3) from (N,6) xyz+rgb, (N,3) xyz (grey), or a dict with points/colors."""
    if isinstance(point_cloud, dict):
        pts = torch.as_tensor(point_cloud["points"], dtype=torch.float32, device=device)
        cols = point_cloud.get("colors")
        cols = torch.full_like(pts, 0.5) if cols is None else torch.as_tensor(cols, dtype=torch.float32, device=device)
    else:
        pc = torch.as_tensor(point_cloud, dtype=torch.float32, device=device)
        if pc.dim() != 2 or pc.shape[1] not in (3, 6):
            raise ShapeMismatchError(f"point_cloud must be (N,6) xyz+rgb or (N,3) xyz, got {tuple(pc.shape)}.")
        pts, cols = pc[:, :3], (pc[:, 3:] if pc.shape[1] == 6 else torch.full_like(pc, 0.5))
    if pts.dim() != 2 or pts.shape[1] != 3 or cols.shape != pts.shape:
        raise ShapeMismatchError(f"point_cloud points and colors must both be (N,3), got {tuple(pts.shape)} and {tuple(cols.shape)}.")
    if cols.numel() and float(cols.max()) > 1.0:
        cols = cols / 255.0
    return pts, cols.clamp(0, 1)


def _read_config(path) -> dict:
    folder = Path(path)
    file = folder / CONFIG_NAME if folder.is_dir() else folder
    if not file.is_file():
        raise ModelLoadError(
            f"No {CONFIG_NAME} in {os.fspath(path)!r}. Pass 'geometric' for the training-free model, or a folder written by "
            "WorldStereo.save_pretrained()."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{file} is not a readable JSON config ({e}); re-create it with WorldStereo.save_pretrained().") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} must hold a JSON object with vdm_config / global_memory_config / spatial_memory_config.")
    if "vdm_config" not in config and ("base_model" in config or "controlnet_cfg" in config):
        # an official WorldStereo 2.0 variant folder (config.json + model.safetensors)
        return {"vdm_config": {"backbone": "worldstereo", "pretrained": str(file.parent)}}
    return config
