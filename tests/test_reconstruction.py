"""3D reconstruction on an analytic scene: a box room seen from inside with a sphere in it.

Depth, colour and normals are exact (ray casting with ``camera_rays``), so every method is checked
against the true surface: TSDF mesh accuracy, colours and face orientation; outlier removal and
normals of the point cloud; the neural field's fit; coverage and reprojection-error metrics; and
the validation of every user input.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from ws_engine.cameras import CameraTrajectory
from ws_engine.errors import (
    ConfigError,
    GenerationCancelled,
    InvalidCameraError,
    InvalidDepthError,
    ShapeMismatchError,
    UnknownNameError,
)
from ws_engine.geometry import camera_rays, unproject
from ws_engine.io import atomic_path
from ws_engine.memory import GlobalGeometricMemory
from ws_engine.reconstruction import (
    METHOD_OPTIONS,
    RECONSTRUCTION_METHODS,
    Mesh,
    Reconstruction,
    evaluate_reconstruction,
    reconstruct,
)
from ws_engine.rotations import look_at

ROOM_LO = torch.tensor([-2.0, -1.5, -2.0])
ROOM_HI = torch.tensor([2.0, 1.0, 2.0])
SPHERE_C = torch.tensor([0.3, 0.4, 0.6])
SPHERE_R = 0.5
EXTENT = float((ROOM_HI - ROOM_LO).norm())  # 6.2


# ------------------------------------------------------------------------------------------------
# the analytic scene (also used by bench/bench_reconstruction.py)
# ------------------------------------------------------------------------------------------------
def texture(p: torch.Tensor) -> torch.Tensor:
    """Smooth RGB (…,3) in [0.15, 0.85] at world points (…,3); the sphere shows 1 - texture."""
    x, y, z = p.unbind(-1)
    return torch.stack(
        [
            0.5 + 0.35 * torch.sin(2.1 * x + 1.3 * z),
            0.5 + 0.35 * torch.sin(1.7 * y + 0.9 * x + 1),
            0.5 + 0.35 * torch.sin(1.1 * z - 1.9 * y + 2),
        ],
        -1,
    )


def room_cameras(n: int = 8, size: int = 128, fov: float = 70.0) -> CameraTrajectory:
    """n cameras on a circle inside the room; even ones look at the sphere, odd ones along the circle."""
    th = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    pos = torch.stack([1.3 * th.cos(), torch.full_like(th, -0.3), 1.3 * th.sin()], 1)
    along = torch.stack([-th.sin(), torch.zeros_like(th), th.cos()], 1)
    target = torch.where((torch.arange(n) % 2 == 0)[:, None], SPHERE_C.double().expand(n, 3), pos + along)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = look_at(pos, target, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).expand(n, 3))
    c2w[:, :3, 3] = pos
    return CameraTrajectory.from_poses(c2w.float(), width=size, height=size, fov=fov)


def render_scene(traj: CameraTrajectory):
    """Exact frames (T,3,H,W), depth (T,H,W), world points (T,H,W,3) and normals (T,H,W,3)."""
    cams = traj.cameras
    d = torch.einsum("tij,thwj->thwi", cams.c2wb[:, :3, :3].float(), camera_rays(cams))
    o = cams.c2wb[:, None, None, :3, 3].float().expand_as(d)
    t_walls, axis = torch.where(d > 0, (ROOM_HI - o) / d, (ROOM_LO - o) / d).min(-1)
    oc = o - SPHERE_C
    a, b, c = (d * d).sum(-1), (oc * d).sum(-1), (oc * oc).sum(-1) - SPHERE_R**2
    disc = b * b - a * c
    t_sphere = (-b - disc.clamp(min=0).sqrt()) / a
    on_sphere = (disc > 0) & (t_sphere > 0) & (t_sphere < t_walls)
    depth = torch.where(on_sphere, t_sphere, t_walls)  # rays have camera z = 1: t is the depth
    p = o + depth[..., None] * d
    wall_normal = -torch.nn.functional.one_hot(axis, 3).float() * torch.sign(d)
    normals = torch.where(on_sphere[..., None], (p - SPHERE_C) / SPHERE_R, wall_normal)
    colors = torch.where(on_sphere[..., None], 1 - texture(p), texture(p))
    return colors.permute(0, 3, 1, 2).contiguous(), depth, p, normals


def surface_distance(p: torch.Tensor) -> torch.Tensor:
    """Unsigned distance (N,) of points (N,3) to the nearest scene surface."""
    to_walls = torch.minimum(p - ROOM_LO, ROOM_HI - p).amin(-1).abs()
    to_sphere = ((p - SPHERE_C).norm(dim=-1) - SPHERE_R).abs()
    return torch.minimum(to_walls, to_sphere)


def surface_normal_and_color(p: torch.Tensor):
    """Normal towards free space (N,3) and true colour (N,3) of the surface nearest to points (N,3)."""
    to_walls = torch.cat([p - ROOM_LO, ROOM_HI - p], -1).abs()  # (N,6)
    wall = to_walls.argmin(-1)
    wall_normal = torch.nn.functional.one_hot(wall % 3, 3).float() * torch.where(wall < 3, 1.0, -1.0)[:, None]
    on_sphere = ((p - SPHERE_C).norm(dim=-1) - SPHERE_R).abs() < to_walls.amin(-1)
    normal = torch.where(on_sphere[:, None], (p - SPHERE_C) / (p - SPHERE_C).norm(dim=-1, keepdim=True), wall_normal)
    color = torch.where(on_sphere[:, None], 1 - texture(p), texture(p))
    return normal, color


@pytest.fixture(scope="module")
def scene():
    traj = room_cameras()
    frames, depth, points, normals = render_scene(traj)
    return traj, frames, depth, points, normals


@pytest.fixture(scope="module")
def mesh_rec(scene):
    traj, frames, depth, _, _ = scene
    return reconstruct(frames, depth, traj, "mesh", resolution=160)


# ------------------------------------------------------------------------------------------------
# mesh
# ------------------------------------------------------------------------------------------------
def test_scene_is_consistent(scene):
    traj, frames, depth, points, _ = scene
    assert torch.allclose(unproject(depth, traj), points, atol=1e-4)
    assert float(surface_distance(points.reshape(-1, 3)).max()) < 1e-4


def test_mesh_lies_on_the_surface_with_its_colours_and_faces_the_cameras(mesh_rec):
    mesh = mesh_rec.mesh
    assert isinstance(mesh, Mesh) and mesh_rec.method == "mesh"
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    assert mesh.faces.shape[1] == 3 and int(mesh.faces.max()) < mesh.num_vertices
    dist = surface_distance(mesh.vertices)
    assert float(dist.mean()) < 0.01 * EXTENT / 4
    assert float(dist.quantile(0.95)) < 0.01 * EXTENT / 2
    # no spurious sheets where observed space meets unobserved space: every face is on the surface
    assert float(dist.max()) < 4 * mesh_rec.quality_metrics["voxel_size"]
    normal, color = surface_normal_and_color(mesh.vertices)
    assert float((mesh.vertex_colors - color).abs().mean()) < 0.03
    a, b, c = mesh.vertices[mesh.faces].unbind(1)
    true_n = surface_normal_and_color((a + b + c) / 3)[0]
    facing = (mesh.face_normals() * true_n).sum(1)
    assert float((facing > 0).float().mean()) > 0.99  # true normals point into the room, at the cameras
    assert float((mesh.vertex_normals * normal).sum(1).mean()) > 0.9
    assert torch.equal(mesh_rec.points, mesh.vertices) and torch.equal(mesh_rec.colors, mesh.vertex_colors)


def test_mesh_metrics_are_plain_numbers(mesh_rec):
    m = mesh_rec.quality_metrics
    json.dumps(m)
    assert all(type(v) in (int, float) for v in m.values())
    assert m["num_faces"] == mesh_rec.mesh.num_faces > 1000
    assert m["num_points"] == mesh_rec.mesh.num_vertices
    assert m["coverage"] > 0.97
    assert m["mean_reprojection_error"] < 0.3
    assert 0 < m["num_multi_view_points"] <= m["num_points"]
    assert abs(m["extent"] - EXTENT) < 0.05 * EXTENT


def test_mesh_weights_depth_by_confidence(scene):
    traj, frames, depth, _, _ = scene
    bad = depth.clone()
    bad[2] *= 1.3
    conf = torch.ones_like(depth)
    conf[2] = 0.0
    ignored = reconstruct(frames, bad, traj, "mesh", confidences=conf, resolution=96)
    trusted = reconstruct(frames, bad, traj, "mesh", resolution=96)
    assert float(surface_distance(ignored.points).quantile(0.95)) < 0.01 * EXTENT / 2
    assert float(surface_distance(trusted.points).quantile(0.95)) > 2 * float(surface_distance(ignored.points).quantile(0.95))


def test_mesh_removes_small_fragments(scene):
    traj, frames, depth, _, _ = scene
    speck = depth[1:2].clone()
    speck[0, 56:66, 56:66] = 0.8  # a flake floating in front of camera 1 (no other view to carve it)
    kept = reconstruct(frames[1:2], speck, traj[1:2], "mesh", resolution=96, min_component_faces=0)
    cleaned = reconstruct(frames[1:2], speck, traj[1:2], "mesh", resolution=96, min_component_faces=400)
    assert float(surface_distance(kept.points).max()) > 0.2
    assert float(surface_distance(cleaned.points).max()) < 0.1
    assert cleaned.mesh.num_faces < kept.mesh.num_faces


def test_mesh_round_trips_through_a_ply_file(mesh_rec, tmp_path):
    import trimesh

    path = tmp_path / "scene.ply"
    with atomic_path(path) as tmp:
        mesh_rec.mesh.to_trimesh().export(tmp)
    loaded = trimesh.load(path, process=False)
    assert len(loaded.vertices) == mesh_rec.mesh.num_vertices and len(loaded.faces) == mesh_rec.mesh.num_faces
    assert torch.allclose(torch.as_tensor(loaded.vertices, dtype=torch.float32), mesh_rec.mesh.vertices, atol=1e-5)
    rgb = torch.as_tensor(loaded.visual.vertex_colors[:, :3], dtype=torch.float32) / 255
    assert float((rgb - mesh_rec.mesh.vertex_colors).abs().max()) <= 0.5 / 255 + 1e-6


# ------------------------------------------------------------------------------------------------
# point cloud
# ------------------------------------------------------------------------------------------------
def test_point_cloud_from_memory_drops_outliers_and_orients_normals(scene):
    traj, frames, depth, points, _ = scene
    gen = torch.Generator().manual_seed(3)
    surface = points.reshape(-1, 3)
    outliers = torch.rand(4000, 3, generator=gen) * 12 - 6
    outliers = outliers[surface_distance(outliers) > 0.3][:200]
    assert len(outliers) == 200
    memory = GlobalGeometricMemory(merge_threshold=0.01)
    memory.initialize(torch.cat([surface, outliers]), colors=torch.rand(len(surface) + 200, 3, generator=gen))
    true_points = memory.points[surface_distance(memory.points) < 1e-3]
    rec = reconstruct(frames, depth, traj, "point_cloud", memory=memory)
    assert rec.quality_metrics["from_memory"] == 1
    assert float(torch.cdist(rec.points, outliers).min()) > 1e-3  # every injected outlier is gone
    assert len(rec.points) >= 0.95 * len(true_points)  # and the surface stays
    assert float(surface_distance(rec.points).max()) < 1e-3
    true_normal = surface_normal_and_color(rec.points)[0]
    cos = (rec.normals * true_normal).sum(1)
    assert torch.allclose(rec.normals.norm(dim=1), torch.ones(len(rec.points)), atol=1e-4)
    assert float(cos.abs().mean()) > 0.95
    assert float((cos > 0).float().mean()) > 0.98  # facing the free space the cameras are in
    # the same on a proxy cloud of ~20k points (what clouds above knn_max_points go through)
    proxied = reconstruct(frames, depth, traj, "point_cloud", memory=memory, knn_max_points=20_000)
    assert float(torch.cdist(proxied.points, outliers).min()) > 1e-3
    assert len(proxied.points) >= 0.95 * len(true_points)
    cos = (proxied.normals * surface_normal_and_color(proxied.points)[0]).sum(1)
    assert float(cos.abs().mean()) > 0.95 and float((cos > 0).float().mean()) > 0.98


def test_point_cloud_fuses_depth_maps_without_memory(scene):
    traj, frames, depth, _, _ = scene
    rec = reconstruct(frames, depth, traj)  # method defaults to point_cloud
    m = rec.quality_metrics
    assert rec.method == "point_cloud" and m["from_memory"] == 0
    assert m["num_points"] == len(rec.points) < 0.8 * depth.numel()  # overlapping views were merged
    dist = surface_distance(rec.points)
    assert float(dist.quantile(0.99)) < 0.01
    assert float((rec.colors - surface_normal_and_color(rec.points)[1]).abs().mean()) < 0.02
    assert m["coverage"] > 0.95 and m["mean_reprojection_error"] < 0.3 and m["num_faces"] == 0
    small = reconstruct(frames, depth, traj, max_points=5000, remove_outliers=False)
    assert len(small.points) <= 5000 and small.quality_metrics["num_outliers_removed"] == 0
    assert float(surface_distance(small.points).quantile(0.9)) < 0.05


# ------------------------------------------------------------------------------------------------
# neural field
# ------------------------------------------------------------------------------------------------
FAST_FIELD = dict(resolution=48, iterations=30, rays_per_batch=1024, samples_per_ray=24, eval_rays=4096, max_points=20_000)


def test_neural_field_fits_the_frames(scene):
    traj, frames, depth, _, _ = scene
    steps = []
    rec = reconstruct(frames, depth, traj, "neural_field", progress_callback=lambda s, t, i: steps.append((s, t)), **FAST_FIELD)
    m = rec.quality_metrics
    assert steps == [(i + 1, 30) for i in range(30)]
    assert m["iterations"] == 30 and m["final_loss"] < m["initial_loss"]
    assert m["psnr"] > 24
    voxel = m["field_voxel_size"]
    dist = surface_distance(rec.points)
    assert float(dist.median()) < 0.5 * voxel and float(dist.quantile(0.9)) < 1.5 * voxel
    assert float((rec.normals * surface_normal_and_color(rec.points)[0]).sum(1).mean()) > 0.8
    assert m["coverage"] > 0.8 and rec.mesh is None
    again = reconstruct(frames, depth, traj, "neural_field", **FAST_FIELD)
    assert torch.equal(again.points, rec.points)  # seeded: reproducible


def test_neural_field_mesh_export(scene):
    traj, frames, depth, _, _ = scene
    rec = reconstruct(frames, depth, traj, "neural_field", export="mesh", **{**FAST_FIELD, "iterations": 5})
    mesh = rec.mesh
    assert rec.quality_metrics["num_faces"] == mesh.num_faces > 500
    dist = surface_distance(mesh.vertices)
    assert float(dist.quantile(0.9)) < 1.5 * rec.quality_metrics["field_voxel_size"]
    a, b, c = mesh.vertices[mesh.faces].unbind(1)
    facing = (mesh.face_normals() * surface_normal_and_color((a + b + c) / 3)[0]).sum(1)
    assert float((facing > 0).float().mean()) > 0.95


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def test_mesh_coverage_is_measured_on_its_triangles(scene, mesh_rec):
    traj, _, depth, _, _ = scene
    mesh = mesh_rec.mesh
    as_mesh = evaluate_reconstruction(mesh.vertices, depth, traj, mesh=mesh)
    as_points = evaluate_reconstruction(mesh.vertices, depth, traj)
    assert as_mesh["coverage"] > 0.97 and as_mesh["num_faces"] == mesh.num_faces
    assert as_points["coverage"] < as_mesh["coverage"]  # vertices alone leave gaps near the cameras
    with pytest.raises(ShapeMismatchError, match="Mesh"):
        evaluate_reconstruction(mesh.vertices, depth, traj, mesh=mesh.to_trimesh())


def test_coverage_and_reprojection_error(scene):
    traj, _, depth, points, _ = scene
    exact = points.reshape(-1, 3)
    m = evaluate_reconstruction(exact, depth, traj)
    assert m["coverage"] > 0.98  # 3x3 splats overlap a pixel across silhouettes
    assert m["mean_reprojection_error"] < 0.01
    assert m["num_multi_view_points"] > 0.3 * len(exact)
    half = evaluate_reconstruction(exact[exact[:, 0] < 0], depth, traj)
    assert half["coverage"] < 0.75
    drifted = depth.clone()
    drifted[4] *= 1.1  # one frame's depth is 10% off: its observations shift in the other views
    off = evaluate_reconstruction(exact, drifted, traj)
    assert off["mean_reprojection_error"] > 1.0 and off["mean_reprojection_error"] > 100 * m["mean_reprojection_error"]


# ------------------------------------------------------------------------------------------------
# the record and the inputs
# ------------------------------------------------------------------------------------------------
def test_reconstruction_reads_like_a_dict(mesh_rec):
    assert isinstance(mesh_rec, Reconstruction)
    assert set(mesh_rec.keys()) >= {"points", "colors", "normals", "mesh", "quality_metrics", "method"}
    assert mesh_rec["points"] is mesh_rec.points and mesh_rec["mesh"] is mesh_rec.mesh
    assert "quality_metrics" in mesh_rec
    with pytest.raises(KeyError, match="fields are"):
        mesh_rec["nope"]


def test_progress_callback_can_cancel(scene):
    traj, frames, depth, _, _ = scene
    seen = []

    def stop_after_two(step, total, info):
        seen.append((step, total, info))
        if step == 2:
            raise GenerationCancelled("stopped by the user")

    with pytest.raises(GenerationCancelled):
        reconstruct(frames, depth, traj, "mesh", resolution=48, progress_callback=stop_after_two)
    assert [s[:2] for s in seen] == [(1, 9), (2, 9)] and "frame" in seen[0][2]


def test_methods_and_options_are_listed():
    assert RECONSTRUCTION_METHODS == ("point_cloud", "mesh", "neural_field")
    assert set(METHOD_OPTIONS) == set(RECONSTRUCTION_METHODS)
    assert {"outlier_neighbors", "outlier_std", "max_points"} <= set(METHOD_OPTIONS["point_cloud"])


def test_uint8_frames_are_scaled(scene):
    traj, frames, depth, _, _ = scene
    rec = reconstruct((frames * 255).round().to(torch.uint8), depth, traj, remove_outliers=False)
    assert 0.1 < float(rec.colors.mean()) < 0.9


BAD_INPUTS = {  # case: (the arguments to change, given t=trajectory, f=frames, d=depth), error, message)
    "unknown method": (lambda t, f, d: dict(method="voxels"), UnknownNameError, "point_cloud"),
    "unknown option": (lambda t, f, d: dict(outlier_neighbours=8), ConfigError, "outlier_neighbors"),
    "option of another method": (lambda t, f, d: dict(method="mesh", outlier_std=2.0), ConfigError, "truncation"),
    "bad option value": (lambda t, f, d: dict(outlier_std=-1.0), ConfigError, "outlier_std"),
    "bad option type": (lambda t, f, d: dict(method="mesh", resolution=1.5), ConfigError, "integer"),
    "bad export": (lambda t, f, d: dict(method="neural_field", export="obj"), ConfigError, "points, mesh"),
    "channels last": (lambda t, f, d: dict(frames=f.permute(0, 2, 3, 1)), ShapeMismatchError, "permute"),
    "frames out of range": (lambda t, f, d: dict(frames=f * 255), ConfigError, "255"),
    "depth size": (lambda t, f, d: dict(depths=d[:, :64]), InvalidDepthError, "match the frames"),
    "depth count": (lambda t, f, d: dict(depths=d[:3]), InvalidDepthError, "one map per frame"),
    "no valid depth": (lambda t, f, d: dict(depths=torch.zeros_like(d)), InvalidDepthError, "valid depth"),
    "no confident depth": (lambda t, f, d: dict(confidences=torch.zeros_like(d)), InvalidDepthError, "confidence 0"),
    "confidence range": (lambda t, f, d: dict(confidences=torch.full_like(d, 2.0)), ConfigError, r"\[0,1\]"),
    "camera count": (lambda t, f, d: dict(cameras=t[:5]), ShapeMismatchError, "one camera per frame"),
    "camera size": (lambda t, f, d: dict(cameras=t.rescale(64, 64)), ShapeMismatchError, "rescale"),
    "camera type": (lambda t, f, d: dict(cameras="front"), ShapeMismatchError, "CameraTrajectory"),
    "memory type": (lambda t, f, d: dict(memory=[1, 2, 3]), ShapeMismatchError, "GlobalGeometricMemory"),
    "panorama": (lambda t, f, d: dict(cameras=CameraTrajectory.from_poses(t.c2w, width=128, height=128, model="equirectangular")),
                 InvalidCameraError, "pinhole"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_before_any_work(scene, case):
    traj, frames, depth, _, _ = scene
    change, error, message = BAD_INPUTS[case]
    args = dict(frames=frames, depths=depth, cameras=traj, method="point_cloud") | change(traj, frames, depth)
    calls = []
    with pytest.raises(error, match=message):
        reconstruct(args.pop("frames"), args.pop("depths"), args.pop("cameras"), progress_callback=lambda *a: calls.append(a),
                    **args)  # fmt: skip
    assert calls == []  # nothing started
