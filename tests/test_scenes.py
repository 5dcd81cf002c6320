"""The procedural demo room: exact depth, multi-view consistent band-limited textures, its cameras."""

import math

import pytest
import torch
import torch.nn.functional as F

from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.errors import ConfigError, InvalidCameraError, ShapeMismatchError, UnknownNameError
from ws_engine.geometry import project, unproject
from ws_engine.io import load_image, save_image
from ws_engine.scenes import TRAJECTORY_KINDS, ProceduralRoom


@pytest.fixture(scope="module")
def room() -> ProceduralRoom:
    return ProceduralRoom()


FRAMES = [0, 3, 6, 9, 12, 15]  # rendered frames of the default trajectory (the first and the last among them)


@pytest.fixture(scope="module")
def orbit(room):
    """The default trajectory at the demo's size (16 frames, 512x512) and renders of ``FRAMES`` of it:
    (trajectory, cameras of FRAMES, images, depths)."""
    traj = room.trajectory()
    cameras = traj[FRAMES]
    images, depths = room.render(cameras)
    return traj, cameras, images, depths


# helpers ---------------------------------------------------------------------------------------
def depth_discontinuities(depth: torch.Tensor, relative: float = 0.03) -> torch.Tensor:
    """(H,W) bool: pixels within one pixel of a neighbour whose depth differs by more than ``relative``."""
    jump_x = (depth[:, 1:] - depth[:, :-1]).abs() > relative * torch.minimum(depth[:, 1:], depth[:, :-1])
    jump_y = (depth[1:] - depth[:-1]).abs() > relative * torch.minimum(depth[1:], depth[:-1])
    edge = torch.zeros_like(depth, dtype=torch.bool)
    edge[:, 1:] |= jump_x
    edge[:, :-1] |= jump_x
    edge[1:] |= jump_y
    edge[:-1] |= jump_y
    return F.max_pool2d(edge[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def texture_gradient(image: torch.Tensor) -> torch.Tensor:
    """(H,W): the largest colour change (any channel) from a pixel to its right or lower neighbour."""
    grad = torch.zeros(image.shape[-2:])
    grad[:, :-1] = (image[:, :, 1:] - image[:, :, :-1]).abs().amax(0)
    grad[:-1] = torch.maximum(grad[:-1], (image[:, 1:] - image[:, :-1]).abs().amax(0))
    return grad


def warp_from(image0, depth0, cam0, depth1, cam1):
    """Image 0 resampled (bilinear) at the projections of view 1's pixels, and where view 0 sees them.

    Returns the warped colours (3,H*W) and a visibility mask (H*W,): inside view 0, in front of it,
    and not occluded there (depth test against view 0's depth, bilinear, 1 % tolerance).
    """
    H, W = depth1.shape
    uv, z = project(unproject(depth1, cam1).reshape(-1, 3), cam0)
    grid = torch.stack([uv[:, 0] / (W - 1) * 2 - 1, uv[:, 1] / (H - 1) * 2 - 1], -1)[None, None]
    color = F.grid_sample(image0[None], grid, mode="bilinear", align_corners=True)[0, :, 0]
    seen_depth = F.grid_sample(depth0[None, None], grid, mode="bilinear", align_corners=True)[0, 0, 0]
    inside = (grid[0, 0].abs() <= 1).all(-1) & (z > 0)
    return color, inside & ((seen_depth - z).abs() < 0.01 * z)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / (a - b).square().mean().item())


# exact geometry ---------------------------------------------------------------------------------
def test_rendered_depth_lies_on_the_surfaces(room, orbit):
    _, traj, _, depths = orbit
    for i in (0, len(traj) - 1):
        points = unproject(depths[i], traj[i]).reshape(-1, 3)
        assert room.distance_to_surface(points).max() < 1e-4
    # equirectangular: depth is the distance along the ray, as unproject reads it
    pano = CameraParameters.equirectangular(128, 64, c2w=room.camera().c2w)
    image, depth = room.render(pano)
    assert image.shape == (1, 3, 64, 128) and depth.shape == (1, 64, 128)
    assert room.distance_to_surface(unproject(depth[0], pano).reshape(-1, 3)).max() < 1e-4
    # pinhole depth is z in the camera: read as a ray length it would put off-centre points off the surfaces
    rays = unproject(depths[0], traj[0]) - traj[0].position
    as_ray_length = traj[0].position + depths[0, ..., None] * rays / rays.norm(dim=-1, keepdim=True)
    assert room.distance_to_surface(as_ray_length.reshape(-1, 3)).max() > 0.1


def test_distance_to_surface_is_the_unsigned_distance(room):
    floor_y = room.room_hi[1].item()
    lo, hi = room.box_lo[0], room.box_hi[0]
    c, r = room.sphere_center, room.sphere_radius
    above_floor = torch.tensor([[-2.0, floor_y - 0.3, 0.0]])  # near the floor, away from everything else
    assert room.distance_to_surface(above_floor).item() == pytest.approx(0.3, abs=1e-6)
    box_top = torch.stack([(lo + hi) / 2])
    box_top[0, 1] = lo[1] - 0.05  # 5 cm above the top face of box 0
    assert room.distance_to_surface(box_top).item() == pytest.approx(0.05, abs=1e-6)
    inside_box = torch.stack([(lo + hi) / 2])
    assert room.distance_to_surface(inside_box).item() == pytest.approx(((hi - lo) / 2).min().item(), abs=1e-6)
    beside_sphere = (c + torch.tensor([r + 0.1, 0.0, 0.0]))[None]
    assert room.distance_to_surface(beside_sphere).item() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ShapeMismatchError):
        room.distance_to_surface(torch.zeros(4, 2))


def test_sample_surface_points_normals_and_area_weighting(room):
    points, normals = room.sample_surface(20000, torch.Generator().manual_seed(1))
    assert points.shape == normals.shape == (20000, 3)
    assert room.distance_to_surface(points).max() < 1e-5
    assert torch.allclose(normals.norm(dim=-1), torch.ones(20000), atol=1e-5)
    # normals agree with finite differences of the distance field just off the surface
    h, eps = 0.01, 1e-3
    clear = (room.distance_to_surface(points + 3 * h * normals) - 3 * h).abs() < 1e-5  # no other surface near
    assert clear.float().mean() > 0.9
    q = (points + h * normals)[clear]
    dist = room.distance_to_surface
    grad = torch.stack([(dist(q + eps * e) - dist(q - eps * e)) / (2 * eps) for e in torch.eye(3)], -1)
    assert ((grad * normals[clear]).sum(-1) > 0.999).all()
    # normals face the free space: a step along them stays inside the room, outside every box
    step = (points + 2 * h * normals)[clear]
    assert ((step > room.room_lo) & (step < room.room_hi)).all()
    assert not ((step[:, None] > room.box_lo) & (step[:, None] < room.box_hi)).all(-1).any()
    # visible-ish and area-weighted: nothing under the boxes; the floor gets its share of the area
    on_floor = points[:, 1] > room.room_hi[1] - 1e-6
    dims, box_dims = room.room_hi - room.room_lo, room.box_hi - room.box_lo
    footprint = box_dims[:, [0, 2]].prod(-1).sum()
    room_area = 2 * (dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2]) - footprint
    box_area = (2 * box_dims[:, 1] * box_dims[:, [0, 2]].sum(-1)).sum() + footprint  # sides and tops
    total = room_area + box_area + 4 * math.pi * room.sphere_radius**2
    expected = ((dims[0] * dims[2] - footprint) / total).item()
    assert on_floor.float().mean().item() == pytest.approx(expected, abs=0.015)
    floor_xz = points[on_floor][:, None, [0, 2]]
    assert not ((floor_xz > room.box_lo[:, [0, 2]]) & (floor_xz < room.box_hi[:, [0, 2]])).all(-1).any()
    # deterministic with a generator
    again = room.sample_surface(20000, torch.Generator().manual_seed(1))
    assert torch.equal(points, again[0]) and torch.equal(normals, again[1])
    with pytest.raises(ConfigError):
        room.sample_surface(0)


# appearance ---------------------------------------------------------------------------------------
def test_trajectory_frames_match_frame0_warped_by_true_depth(orbit):
    """The property the demo relies on: bilinear resampling of frame 0 scores >= 35 dB where it sees."""
    _, traj, images, depths = orbit
    for i in range(1, len(traj)):
        color, seen = warp_from(images[0], depths[0], traj[0], depths[i], traj[i])
        assert seen.float().mean() > 0.7  # most of each frame was seen by the first camera
        assert psnr(color[:, seen], images[i].reshape(3, -1)[:, seen]) >= 35.0
    assert seen.float().mean() < 0.95  # the orbit uncovers what frame 0 did not see (holes to fill)
    # the check can fail: an image with texture finer than a pixel does not survive the warp
    noise = torch.rand(3, *depths.shape[-2:], generator=torch.Generator().manual_seed(0))
    color, seen = warp_from(noise, depths[0], traj[0], depths[3], traj[3])
    assert psnr(color[:, seen], noise.reshape(3, -1)[:, seen]) < 20.0


def test_texture_is_band_limited_away_from_silhouettes(room):
    image, depth = room.render(room.camera())
    grad = texture_gradient(image[0])
    smooth = grad[~depth_discontinuities(depth[0])]
    assert len(smooth) > 0.95 * grad.numel()
    assert smooth.median() < 0.01
    assert smooth.quantile(0.95) < 0.03  # colour changes by less than 0.03 per pixel nearly everywhere
    # the steepest: creases and box tops seen at grazing angles, where a pixel spans a long stretch
    assert (smooth > 0.06).float().mean() < 0.015
    assert smooth.max() < 0.3
    # the helper flags what it should: silhouettes have large colour steps
    assert grad[depth_discontinuities(depth[0])].max() > 0.3


def test_condition_view_is_a_readable_room(room, tmp_path):
    image, depth = room.render(room.camera(256, 256))
    assert image.shape == (1, 3, 256, 256) and depth.shape == (1, 256, 256)
    assert image.min() >= 0 and image.max() <= 1 and (depth > 0).all()
    # several distinct colours: coarse colour bins covering at least 1 % of the picture each
    bins = (image[0] * 4).clamp(max=3.999).long()
    keys = bins[0] * 16 + bins[1] * 4 + bins[2]
    assert (torch.bincount(keys.flatten(), minlength=64) > 0.01 * keys.numel()).sum() >= 6
    # every object is in view and occludes something: points on each box and on the sphere, and jumps
    points = unproject(depth[0], room.camera(256, 256)).reshape(-1, 3)
    on_box = ((points[:, None] >= room.box_lo - 1e-4) & (points[:, None] <= room.box_hi + 1e-4)).all(-1)
    assert (on_box.sum(0) > 200).all()
    on_sphere = ((points - room.sphere_center).norm(dim=-1) - room.sphere_radius).abs() < 1e-4
    assert on_sphere.sum() > 500
    assert 0.005 < depth_discontinuities(depth[0]).float().mean() < 0.1
    # it survives a PNG round trip (what the demo writes)
    back = load_image(save_image(tmp_path / "condition.png", image[0]))
    assert (back - image[0]).abs().max() <= 0.5 / 255 + 1e-6


# cameras ------------------------------------------------------------------------------------------
def test_trajectory_starts_at_the_condition_camera_and_stays_inside(room, orbit):
    traj = orbit[0]
    assert len(traj) == 16 and (traj.width, traj.height) == (512, 512)
    assert traj[0].allclose(room.camera())
    margin = 0.2
    assert ((traj.positions > room.room_lo + margin) & (traj.positions < room.room_hi - margin)).all()
    assert (room.distance_to_surface(traj.positions) > margin).all()
    # the pivot (what the condition camera looks at) stays at the image centre along the orbit
    uv, z = project(room.target[None], traj.cameras)
    assert torch.allclose(uv[:, 0], torch.full((16, 2), 255.5), atol=1e-2) and (z > 0).all()
    for kind in TRAJECTORY_KINDS:
        path = room.trajectory(8, 64, 64, kind=kind)
        assert path[0].allclose(room.camera(64, 64))
        assert ((path.positions > room.room_lo + 0.1) & (path.positions < room.room_hi - 0.1)).all()
    assert not torch.allclose(room.trajectory(8, kind="orbit_right").positions, room.trajectory(8).positions)


def test_bad_inputs_raise_before_work(room):
    with pytest.raises(UnknownNameError):
        room.trajectory(kind="barrel_roll")
    with pytest.raises(ConfigError, match="leaves the free space"):
        room.trajectory(kind="forward", distance=10.0)
    outside = torch.eye(4)
    outside[:3, 3] = torch.tensor([0.0, 0.0, 9.0])
    with pytest.raises(InvalidCameraError, match="free space"):
        room.render(CameraParameters.from_fov(60, 32, 32, c2w=outside))
    in_box = torch.eye(4)
    in_box[:3, 3] = (room.box_lo[1] + room.box_hi[1]) / 2
    with pytest.raises(InvalidCameraError, match="Camera 1"):
        room.render(CameraParameters.stack([room.camera(32, 32), CameraParameters.from_fov(60, 32, 32, c2w=in_box)]))
    with pytest.raises(ConfigError):
        room.render(room.camera(32, 32), chunk=0)
    with pytest.raises(ShapeMismatchError):
        room.render(torch.eye(4))


def test_render_batches_chunks_and_extent(room):
    traj = room.trajectory(3, 48, 40)
    image, depth = room.render(traj)
    assert image.shape == (3, 3, 40, 48) and depth.shape == (3, 40, 48) and image.dtype == torch.float32
    single_image, single_depth = room.render(traj[2])
    assert torch.equal(single_image[0], image[2]) and torch.equal(single_depth[0], depth[2])
    chunked_image, chunked_depth = room.render(traj, chunk=777)
    assert torch.allclose(chunked_image, image) and torch.allclose(chunked_depth, depth)
    in_double_image, in_double_depth = room.render(traj.to(dtype=torch.float64))
    assert (in_double_depth - depth).abs().max() < 1e-4 and (in_double_image - image).abs().max() < 1e-3
    assert room.extent == pytest.approx(float((room.room_hi - room.room_lo).norm()))
    assert 7.0 < room.extent < 10.0
