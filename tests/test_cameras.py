"""Cameras and trajectories: conventions, presets, interpolation, errors."""

import math
import warnings

import numpy as np
import pytest
import torch

from ws_engine import device as device_mod
from ws_engine.cameras import PRESETS, CameraParameters, CameraTrajectory, rigid_inverse
from ws_engine.errors import ConfigError, InvalidCameraError, ShapeMismatchError, UnknownNameError, WorldStereoError
from ws_engine.geometry import project
from ws_engine.rotations import axis_angle_to_matrix, matrix_to_quaternion, quaternion_to_matrix, slerp


def random_pose(gen: torch.Generator) -> torch.Tensor:
    axis = torch.randn(3, generator=gen, dtype=torch.float64)
    R = axis_angle_to_matrix(axis, torch.rand((), generator=gen, dtype=torch.float64) * 3)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, torch.randn(3, generator=gen, dtype=torch.float64)
    return T


START = random_pose(torch.Generator().manual_seed(3))


def in_first_camera(traj: CameraTrajectory) -> torch.Tensor:
    """Camera centres (T,3) expressed in the first camera's frame."""
    rel = rigid_inverse(traj.c2w[:1].double()) @ traj.c2w.double()
    return rel[:, :3, 3]


def pixel_of(point_in_first_cam, traj: CameraTrajectory, i: int) -> torch.Tensor:
    """Where a point given in the first camera's frame appears in frame i."""
    world = traj.c2w[0].double() @ torch.tensor([*point_in_first_cam, 1.0], dtype=torch.float64)
    uv, z = project(world[None, :3], traj[i].to(dtype=torch.float64))
    assert z.item() > 0
    return uv[0]


def test_single_and_batched_views():
    cam = CameraParameters.from_fov(90.0, 640, 480)
    assert cam.K.shape == (3, 3) and cam.c2w.shape == (4, 4) and not cam.batched and len(cam) == 1
    assert cam.fx.item() == pytest.approx(320.0) and cam.cx.item() == pytest.approx(319.5)
    assert cam.cy.item() == pytest.approx(239.5)
    poses = torch.stack([random_pose(torch.Generator().manual_seed(i)) for i in range(4)])
    batch = CameraParameters(cam.K, poses, 640, 480)
    assert batch.batched and len(batch) == 4 and batch.K.shape == (4, 3, 3)
    assert torch.allclose(batch.w2c @ batch.c2w, torch.eye(4, dtype=torch.float64).expand(4, 4, 4), atol=1e-12)
    one = batch[2]
    assert not one.batched and torch.equal(one.c2w, poses[2])
    assert len(batch[1:3]) == 2 and [c.c2w for c in batch][3].shape == (4, 4)
    with pytest.raises(IndexError):
        batch[4]


def test_rescale_keeps_rays():
    cam = CameraParameters(torch.tensor([[500.0, 0, 300.2], [0, 480.0, 190.7], [0, 0, 1]]), None, 640, 400)
    small = cam.rescale(320, 200)
    pts = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    uv, _ = project(pts, cam)
    uv2, _ = project(pts, small)
    # pixel centres at integers: (u + 0.5) scales with the image
    assert torch.allclose(uv2 + 0.5, (uv + 0.5) * 0.5, atol=1e-4)


def test_known_translation_moves_point_to_formula_pixel():
    K = torch.tensor([[400.0, 0, 255.5], [0, 400.0, 255.5], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.5, -0.25, 1.0])
    cam = CameraParameters(K, c2w, 512, 512)
    X = torch.tensor([[1.0, 0.5, 5.0]])
    uv, z = project(X, cam)
    x, y, zc = 1.0 - 0.5, 0.5 + 0.25, 5.0 - 1.0
    assert z.item() == pytest.approx(zc)
    assert uv[0, 0].item() == pytest.approx(400 * x / zc + 255.5)
    assert uv[0, 1].item() == pytest.approx(400 * y / zc + 255.5)


@pytest.mark.parametrize(
    "name,direction",
    [("forward", (0, 0, 1)), ("backward", (0, 0, -1)), ("left", (-1, 0, 0)), ("right", (1, 0, 0)), ("up", (0, -1, 0)), ("down", (0, 1, 0))],
)
def test_translation_presets_move_along_first_camera_axes(name, direction):
    traj = CameraTrajectory.preset(name, num_frames=9, distance=2.0, start=START)
    pos = in_first_camera(traj)
    assert torch.allclose(pos[-1], 2.0 * torch.tensor(direction, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(pos[4], 1.0 * torch.tensor(direction, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(traj.c2w[:, :3, :3], traj.c2w[:1, :3, :3].expand(9, 3, 3), atol=1e-6)  # no rotation


def test_seed_example_and_scene_depth():
    traj = CameraTrajectory.forward(distance=2.0, num_frames=16)
    assert len(traj) == 16 and traj.c2w.shape == (16, 4, 4) and traj.K.shape == (16, 3, 3)
    assert traj.c2w[-1, 2, 3].item() == pytest.approx(2.0)
    scaled = CameraTrajectory.forward(distance=0.5, num_frames=4, scene_depth=6.0)
    assert scaled.c2w[-1, 2, 3].item() == pytest.approx(3.0)


def test_turn_left_yaws_left_as_seen_in_image():
    traj = CameraTrajectory.turn_left(angle=20, num_frames=5, start=START)
    u0 = pixel_of((0, 0, 3.0), traj, 0)
    u1 = pixel_of((0, 0, 3.0), traj, 4)
    assert u0[0].item() == pytest.approx(traj.K[0, 0, 2].item(), abs=1e-4)
    assert u1[0] > u0[0] + 50  # what was straight ahead now sits right of centre
    assert u1[1].item() == pytest.approx(u0[1].item(), abs=1e-4)
    assert torch.allclose(in_first_camera(traj), torch.zeros(5, 3, dtype=torch.float64), atol=1e-6)  # in place
    right = CameraTrajectory.turn_right(angle=20, num_frames=5)
    assert pixel_of((0, 0, 3.0), right, 4)[0] < u0[0] - 50


def test_tilt_up_moves_scene_down_in_image():
    traj = CameraTrajectory.tilt_up(angle=10, num_frames=3, start=START)
    v_end = pixel_of((0, 0, 3.0), traj, 2)[1]
    assert v_end > traj.K[0, 1, 2] + 30
    assert pixel_of((0, 0, 3.0), CameraTrajectory.tilt_down(10, 3), 2)[1] < traj.K[0, 1, 2] - 30


@pytest.mark.parametrize("name,sign", [("orbit_left", -1), ("orbit_right", 1)])
def test_orbit_keeps_pivot_at_image_centre(name, sign):
    traj = CameraTrajectory.preset(name, num_frames=7, angle=40, pivot_depth=2.5, start=START)
    for i in range(7):
        uv = pixel_of((0, 0, 2.5), traj, i)
        assert torch.allclose(uv, traj.K[i, :2, 2].double(), atol=1e-3)
    pos = in_first_camera(traj)
    assert sign * pos[-1, 0] > 0.5  # moves to its side
    assert torch.allclose((pos - torch.tensor([0, 0, 2.5], dtype=torch.float64)).norm(dim=1), torch.full((7,), 2.5, dtype=torch.float64), atol=1e-5)


def test_zoom_changes_focal_only():
    zin = CameraTrajectory.zoom_in(factor=2.0, num_frames=5)
    assert zin.K[-1, 0, 0] == pytest.approx(2 * zin.K[0, 0, 0].item())
    assert torch.equal(zin.c2w, zin.c2w[:1].expand(5, 4, 4))
    zout = CameraTrajectory.zoom_out(factor=2.0, num_frames=5)
    assert zout.K[-1, 1, 1] == pytest.approx(0.5 * zout.K[0, 1, 1].item())


def test_eloop_returns_to_start_and_spiral_starts_there():
    loop = CameraTrajectory.eloop(radius_x=0.4, num_frames=25, radius_z=0.2, start=START)
    assert torch.allclose(loop.c2w[0], loop.c2w[-1], atol=1e-5)
    pos = in_first_camera(loop)
    assert pos[:, 0].max() > 0.35 and pos[:, 0].min() < -0.35 and pos[:, 2].max() > 0.35
    spiral = CameraTrajectory.spiral(radius=0.3, num_frames=20, focus_depth=2.0, start=START)
    assert torch.allclose(spiral.c2w[0], START.float(), atol=1e-5)
    for i in (5, 13, 19):  # looks at the focus point
        assert torch.allclose(pixel_of((0, 0, 2.0), spiral, i), spiral.K[i, :2, 2].double(), atol=1e-3)


def test_every_preset_builds_and_starts_at_start():
    for name in PRESETS:
        traj = CameraTrajectory.preset(name, num_frames=6, start=START, width=320, height=240)
        assert len(traj) == 6 and (traj.width, traj.height) == (320, 240)
        assert torch.allclose(traj.c2w[0], START.float(), atol=1e-5), name
    assert len(CameraTrajectory.forward(num_frames=1)) == 1


def test_quaternions_and_slerp():
    R = torch.stack([random_pose(torch.Generator().manual_seed(i))[:3, :3] for i in range(50)])
    R = torch.cat([R, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))[None]])  # 180 degrees
    q = matrix_to_quaternion(R)
    assert (q[:, 0] >= 0).all() and torch.allclose(quaternion_to_matrix(q), R, atol=1e-9)
    a = matrix_to_quaternion(torch.eye(3, dtype=torch.float64))
    b = matrix_to_quaternion(axis_angle_to_matrix(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor(math.pi / 2, dtype=torch.float64)))
    mid = quaternion_to_matrix(slerp(a, b, torch.tensor(0.5, dtype=torch.float64)))
    expect = axis_angle_to_matrix(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor(math.pi / 4, dtype=torch.float64))
    assert torch.allclose(mid, expect, atol=1e-9)


@pytest.mark.parametrize("interpolation", ["slerp", "catmull_rom"])
def test_from_keyframes_passes_through_keys(interpolation):
    keys = torch.stack([random_pose(torch.Generator().manual_seed(i)) for i in range(4)])
    traj = CameraTrajectory.from_keyframes(keys, 10, interpolation)
    assert len(traj) == 10
    for k, frame in zip(range(4), (0, 3, 6, 9)):
        assert torch.allclose(traj.c2w[frame].double(), keys[k], atol=1e-6)
    # rotation halfway between two keys is the SLERP midpoint
    half = CameraTrajectory.from_keyframes(keys[:2], 3, interpolation)
    q = slerp(matrix_to_quaternion(keys[0, :3, :3]), matrix_to_quaternion(keys[1, :3, :3]), torch.tensor(0.5, dtype=torch.float64))
    assert torch.allclose(half.c2w[1, :3, :3].double(), quaternion_to_matrix(q), atol=1e-6)


def test_catmull_rom_is_smooth_and_linear_is_piecewise():
    keys = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    keys[:, :3, 3] = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], dtype=torch.float64)
    lin = in_first_camera(CameraTrajectory.from_keyframes(keys, 31, "slerp"))
    cr = in_first_camera(CameraTrajectory.from_keyframes(keys, 31, "catmull_rom"))
    # linear stays on the polygon (x or z is 0/1 on each edge); the spline bulges off it near the corners
    on_edges = ((lin[:, 0] - lin[:, 0].round()).abs() < 1e-5) | ((lin[:, 2] - lin[:, 2].round()).abs() < 1e-5)
    assert on_edges.all()
    assert (cr[:, 0] > 1.01).any()
    # second differences (acceleration) jump at linear corners but not on the spline
    assert (lin[2:] - 2 * lin[1:-1] + lin[:-2]).norm(dim=1).max() > 2 * (cr[2:] - 2 * cr[1:-1] + cr[:-2]).norm(dim=1).max()


def test_resample_reverse_concat_relative():
    traj = CameraTrajectory.orbit_left(60, 13, start=START, pivot_depth=2.0)
    res = traj.resample(25)
    assert len(res) == 25 and torch.allclose(res.c2w[::2], traj.c2w, atol=1e-5)
    assert torch.allclose(res.c2w[-1], traj.c2w[-1], atol=1e-6)
    rev = traj.reverse()
    assert torch.equal(rev.c2w[0], traj.c2w[-1]) and torch.equal(rev.c2w[-1], traj.c2w[0])
    rel = traj.relative_to_first()
    assert torch.allclose(rel.c2w[0], torch.eye(4)) and torch.allclose(traj.c2w[0] @ rel.c2w[5], traj.c2w[5], atol=1e-5)
    a = CameraTrajectory.forward(1.0, 5)
    b = CameraTrajectory.turn_left(90, 4)
    plain = CameraTrajectory.concat(a, b)
    assert len(plain) == 9 and torch.equal(plain.c2w[5], b.c2w[0])
    chained = a.concat(b, relative=True)
    assert len(chained) == 8
    assert torch.allclose(chained.c2w[-1, :3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(chained.c2w[-1, :3, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)


def test_device_fallback_warns_once(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(device_mod, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert device_mod.resolve_device("cuda") == torch.device("cpu")
        assert device_mod.resolve_device("cuda:0") == torch.device("cpu")
        cam = CameraParameters.from_fov(60, 8, 8).to("cuda")
    assert cam.device == torch.device("cpu")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


# ---------------------------------------------------------------------------------- bad input


def test_bad_cameras_raise_typed_errors():
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    nan = torch.eye(4)
    nan[0, 3] = float("nan")
    with pytest.raises(InvalidCameraError, match="NaN"):
        CameraParameters(K, nan, 64, 64)
    scaled = torch.eye(4)
    scaled[:3, :3] *= 2.0
    with pytest.raises(InvalidCameraError, match="orthonormal"):
        CameraParameters(K, scaled, 64, 64)
    mirrored = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InvalidCameraError, match="determinant"):
        CameraParameters(K, mirrored, 64, 64)
    for f in (0.0, -10.0):
        bad = K.clone()
        bad[0, 0] = f
        with pytest.raises(InvalidCameraError, match="Focal lengths must be positive"):
            CameraParameters(bad, None, 64, 64)
    with pytest.raises(ShapeMismatchError, match="K holds 3 cameras but c2w holds 2"):
        CameraParameters(K.expand(3, 3, 3), torch.eye(4).expand(2, 4, 4), 64, 64)
    with pytest.raises(ShapeMismatchError):
        CameraParameters(torch.eye(4), None, 64, 64)
    with pytest.raises(InvalidCameraError):
        CameraParameters(K, None, 0, 64)
    for fov in (180.0, 0.0, "wide", None, float("nan")):
        with pytest.raises(InvalidCameraError, match="Field of view"):
            CameraParameters.from_fov(fov, 64, 64)
    with pytest.raises(UnknownNameError, match="fisheye"):
        CameraParameters(K, None, 64, 64, model="fisheye")
    with pytest.raises(ShapeMismatchError, match="one size"):
        CameraParameters.stack([CameraParameters.from_fov(60, 64, 64), CameraParameters.from_fov(60, 32, 64)])
    assert issubclass(InvalidCameraError, WorldStereoError) and issubclass(InvalidCameraError, ValueError)


def test_bad_trajectory_arguments():
    with pytest.raises(UnknownNameError, match="dolly_zoom"):
        CameraTrajectory.preset("dolly_zoom", 8)
    with pytest.raises(ConfigError, match="num_frames"):
        CameraTrajectory.forward(1.0, num_frames=0)
    with pytest.raises(ConfigError, match="num_frames"):
        CameraTrajectory.forward(1.0, num_frames=2.5)
    with pytest.raises(ConfigError):
        CameraTrajectory.forward(float("nan"), 4)
    with pytest.raises(ConfigError, match="scene_depth"):
        CameraTrajectory.forward(1.0, 4, scene_depth=-1)
    for bad in ("abc", 0, -2.0, None):
        with pytest.raises(ConfigError, match="factor"):
            CameraTrajectory.zoom_out(bad, 4)
    with pytest.raises(ConfigError, match="pivot_depth"):
        CameraTrajectory.orbit_left(30, 4, pivot_depth=0)
    with pytest.raises(UnknownNameError, match="cubic"):
        CameraTrajectory.from_keyframes(torch.eye(4)[None], 4, "cubic")
    with pytest.raises(ShapeMismatchError):
        CameraTrajectory.from_keyframes(torch.eye(3)[None], 4)
    with pytest.raises(ConfigError, match="increasing"):
        CameraTrajectory.from_keyframes(torch.eye(4).repeat(2, 1, 1), 4, times=[3, 1])
    with pytest.raises(ConfigError, match="fps"):
        CameraTrajectory(CameraParameters.from_fov(60, 8, 8), fps=0)
    with pytest.raises(InvalidCameraError):
        CameraTrajectory.from_poses(np.full((2, 4, 4), np.inf))
