"""``reconstruct``: frames + depths + cameras (+ memory) -> point cloud, mesh or neural field."""

from __future__ import annotations

import torch

from ..errors import ShapeMismatchError, check_choice
from .inputs import ProgressCallback, _tensor, check_options, prepare_observations
from .metrics import quality_metrics
from .neural_field import NEURAL_FIELD_OPTIONS, reconstruct_neural_field
from .point_cloud import POINT_CLOUD_OPTIONS, reconstruct_point_cloud
from .tsdf import MESH_OPTIONS, reconstruct_mesh
from .types import Mesh, Reconstruction

__all__ = ["RECONSTRUCTION_METHODS", "METHOD_OPTIONS", "reconstruct", "evaluate_reconstruction"]

RECONSTRUCTION_METHODS = ("point_cloud", "mesh", "neural_field")
METHOD_OPTIONS = {"point_cloud": POINT_CLOUD_OPTIONS, "mesh": MESH_OPTIONS, "neural_field": NEURAL_FIELD_OPTIONS}


def _check_memory(memory) -> None:
    if memory is None:
        return
    if not all(hasattr(memory, name) for name in ("points", "colors", "weights", "__len__")):
        raise ShapeMismatchError(f"memory must be a GlobalGeometricMemory or None, got {type(memory).__name__}.")


def reconstruct(
    frames,
    depths,
    cameras,
    method: str = "point_cloud",
    *,
    memory=None,
    confidences=None,
    progress_callback: ProgressCallback | None = None,
    **options,
) -> Reconstruction:
    """Reconstruct a scene from posed RGB-D frames.

    Args:
        frames: (T,3,H,W) in [0,1] (uint8 is divided by 255).
        depths: (T,H,W) metric depth (z in the camera), 0 where unknown.
        cameras: CameraTrajectory or batched pinhole CameraParameters, one per frame, OpenCV c2w.
        method: ``"point_cloud"`` | ``"mesh"`` (TSDF + marching cubes) | ``"neural_field"``.
        memory: a GlobalGeometricMemory; ``point_cloud`` starts from its fused points when it
            holds any (other methods read the frames only).
        confidences: optional (T,H,W) in [0,1] weighting each depth pixel (1 = seen by the memory).
        progress_callback: ``progress_callback(step, total, info)`` between frames/iterations; it
            may raise (e.g. GenerationCancelled) to stop.
        **options: method options (``METHOD_OPTIONS[method]`` lists names and defaults):
            point_cloud: voxel_size (fusion voxel; default one pixel at the median depth),
            max_points, remove_outliers=True, outlier_neighbors=16, outlier_std=2.5,
            normal_neighbors=16, knn_max_points=500_000, min_confidence=0;
            mesh: voxel_size (default longest side / resolution), resolution=256, truncation=4
            (voxels), min_confidence=0, min_component_faces=32;
            neural_field: resolution=96, iterations=250, rays_per_batch=4096, samples_per_ray=32,
            learning_rate=0.05, depth_weight=0.2, tv_weight=0.01, seed=0, export="points" |
            "mesh", max_points=300_000, density_threshold=1.0, eval_rays=16_384.
    Returns:
        Reconstruction(points, colors, normals, mesh, quality_metrics, method).

    Every input and option is checked before work starts (UnknownNameError for the method,
    ConfigError naming the valid options, ShapeMismatchError / InvalidDepthError for the data).
    """
    check_choice("reconstruction method", method, RECONSTRUCTION_METHODS)
    opts = check_options(method, options, METHOD_OPTIONS[method])
    _check_memory(memory)
    obs = prepare_observations(frames, depths, cameras, confidences)
    progress = progress_callback or (lambda step, total, info: None)
    mesh = None
    if method == "point_cloud":
        points, colors, normals, figures = reconstruct_point_cloud(obs, memory, opts, progress)
    elif method == "mesh":
        mesh, figures = reconstruct_mesh(obs, opts, progress)
        points, colors, normals = mesh.vertices, mesh.vertex_colors, mesh.vertex_normals
    else:
        points, colors, normals, mesh, figures = reconstruct_neural_field(obs, opts, progress)
    metrics = quality_metrics(points, obs, mesh)
    metrics.update(figures)
    return Reconstruction(points, colors, normals, mesh, metrics, method)


def evaluate_reconstruction(points, depths, cameras, *, mesh=None, max_samples: int = 20_000, seed: int = 0) -> dict:
    """The quality metrics of any reconstruction (points (N,3), optional Mesh) against depth maps
    (T,H,W) seen from ``cameras``; see :mod:`ws_engine.reconstruction.metrics`."""
    pts = _tensor(points, "points").float()
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ShapeMismatchError(f"points must have shape (N,3), got {tuple(pts.shape)}.")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ShapeMismatchError(f"mesh must be a ws_engine.reconstruction.Mesh or None, got {type(mesh).__name__}.")
    d = _tensor(depths, "depths")
    if d.dim() != 3:
        raise ShapeMismatchError(f"depths must have shape (T,H,W), got {tuple(d.shape)}.")
    T, H, W = d.shape
    frames = torch.zeros(1, 1, 1, 1).expand(T, 3, H, W)
    obs = prepare_observations(frames, d, cameras)
    return quality_metrics(pts.to(obs.depths.device), obs, mesh, max_samples, seed)

