"""Geometry: unproject/project, the z-buffer splatting renderer, correspondences, depth tools."""

import math

import pytest
import torch

from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.errors import EmptyPointCloudError, InvalidDepthError, ShapeMismatchError
from ws_engine.geometry import (
    complete_depth,
    correspondences,
    normals_from_depth,
    pixel_grid,
    project,
    render_points,
    splat_offsets,
    unproject,
)


def wavy_depth(h: int, w: int) -> torch.Tensor:
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return 2.0 + 0.5 * torch.sin(6 * u) * torch.cos(4 * v) + u


def posed_camera(width=96, height=64, fov=70.0):
    c2w = CameraTrajectory.orbit_left(25, 2, pivot_depth=3.0).c2w[1]
    c2w[:3, 3] += torch.tensor([0.3, -0.2, 0.1])
    return CameraParameters.from_fov(fov, width, height, c2w=c2w)


@pytest.mark.parametrize("model", ["pinhole", "equirectangular"])
def test_unproject_then_render_reproduces_image_and_depth(model):
    H, W = 48, 96
    cam = posed_camera(W, H) if model == "pinhole" else CameraParameters.equirectangular(W, H, c2w=posed_camera().c2w)
    depth = wavy_depth(H, W)
    image = torch.rand(H, W, 3)
    pts = unproject(depth, cam).reshape(-1, 3)
    out = render_points(pts, image.reshape(-1, 3), cam, radius=1)
    assert out.rgb.shape == (1, 3, H, W) and out.depth.shape == (1, H, W) and out.mask.dtype == torch.bool
    assert out.mask.all()
    assert torch.allclose(out.depth[0], depth, rtol=1e-5)
    assert torch.equal(out.rgb[0].permute(1, 2, 0), image)
    assert torch.equal(out.index[0].flatten(), torch.arange(H * W))


def test_project_inverts_unproject_batched():
    cams = CameraTrajectory.orbit_right(40, 3, width=40, height=30, pivot_depth=2.0).cameras
    depth = torch.stack([wavy_depth(30, 40) * (1 + 0.1 * i) for i in range(3)])
    pts = unproject(depth, cams)  # (3,H,W,3)
    uv, z = project(pts.reshape(3, -1, 3), cams)
    assert torch.allclose(uv, pixel_grid(30, 40).reshape(1, -1, 2).expand(3, -1, -1), atol=1e-3)
    assert torch.allclose(z, depth.reshape(3, -1), rtol=1e-5)


def test_equirectangular_axes():
    cam = CameraParameters.equirectangular(360, 180)
    dirs = torch.tensor([[0.0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, -1, 0.0001], [0, 1, 0.0001]])
    uv, r = project(dirs * 3, cam)
    assert torch.allclose(r, torch.full((5,), 3.0), atol=1e-3)
    assert uv[0].tolist() == pytest.approx([179.5, 89.5], abs=1e-3)  # +z at the centre
    assert uv[1, 0].item() == pytest.approx(269.5, abs=1e-3)  # +x (right) is 90 degrees right of centre
    assert uv[2, 0].item() == pytest.approx(89.5, abs=1e-3)
    assert uv[3, 1].item() == pytest.approx(-0.5, abs=0.01)  # up (-y) is the top edge
    assert uv[4, 1].item() == pytest.approx(179.5, abs=0.01)


def test_render_z_buffer_behind_and_outside():
    cam = CameraParameters(torch.tensor([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]]), None, 10, 10)
    pts = torch.tensor(
        [
            [0.0, 0.0, 2.0],  # centre pixel, far
            [0.0, 0.0, 1.0],  # same pixel, nearer: wins
            [0.0, 0.0, -1.0],  # behind the camera: never drawn
            [5.0, 0.0, 1.0],  # far outside the image
            [0.0, 0.0, 0.0],  # at the camera centre
        ]
    )
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1, 1], [1.0, 0, 1]])
    out = render_points(pts, cols, cam)
    assert out.mask.sum() == 1
    v, u = (4, 4) if out.mask[0, 4, 4] else (5, 5)
    assert out.mask[0, v, u] and out.depth[0, v, u] == 1.0 and out.index[0, v, u] == 1
    assert out.rgb[0, :, v, u].tolist() == [0.0, 1.0, 0.0]
    assert (out.rgb[0].sum(0)[~out.mask[0]] == 0).all() and (out.index[0][~out.mask[0]] == -1).all()


def test_projection_rounding_to_nearest_pixel():
    cam = CameraParameters(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]), None, 8, 6)
    pts = torch.tensor([[2.4, 3.6, 1.0], [7.45, 0.2, 1.0], [-0.6, 1.0, 1.0], [1.0, 5.6, 1.0]])
    out = render_points(pts, torch.ones(4, 1), cam)
    assert out.index[0, 4, 2] == 0 and out.index[0, 0, 7] == 1
    assert out.mask.sum() == 2  # u=-0.6 and v=5.6 round outside the 8x6 image


def test_radius_is_a_disk_around_the_nearest_pixel():
    assert splat_offsets(1) == [(0, 0)]
    assert len(splat_offsets(2)) == 9 and len(splat_offsets(2.5)) == 21 and len(splat_offsets(3)) == 25 and len(splat_offsets(3.5)) == 37
    cam = CameraParameters(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]), None, 11, 11)
    pts = torch.tensor([[5.0, 5.0, 1.0], [10.0, 10.0, 2.0]])  # the far one hides behind the near one
    for r in (1, 2, 3, 4.5):
        out = render_points(pts, torch.eye(2), cam, radius=r)
        yy, xx = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
        disk = (yy - 5) ** 2 + (xx - 5) ** 2 < r * r
        assert torch.equal(out.mask[0], disk), r
        assert (out.index[0][disk] == 0).all()


def test_points_just_outside_cover_border_pixels():
    cam = CameraParameters(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]), None, 6, 5)
    outside = torch.tensor([[-1.0, 2.0, 1.0], [3.0, 5.2, 1.0]])  # nearest pixels (-1,2) and (3,5)
    assert not render_points(outside, torch.ones(2, 1), cam, radius=1).mask.any()
    out = render_points(outside, torch.ones(2, 1), cam, radius=2)
    assert out.mask[0, 1:4, 0].all() and out.mask[0, 4, 2:5].all()
    assert out.mask.sum() == 6 and (out.index[0, 1:4, 0] == 0).all() and (out.index[0, 4, 2:5] == 1).all()


def test_dilation_respects_depth_order():
    # a near point next to a far one: with radius 2 the near one covers its 3x3 block only
    cam = CameraParameters(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]), None, 9, 9)
    pts = torch.tensor([[2.0, 4.0, 1.0], [4.0 * 3, 4.0 * 3, 3.0]])  # near at (4,2), far at (4,4)
    out = render_points(pts, torch.eye(2), cam, radius=2)
    assert out.index[0, 4, 3] == 0  # shared neighbour pixel: the near point wins
    assert out.index[0, 4, 5] == 1 and out.depth[0, 4, 5] == 3.0


def test_batched_render_equals_single_renders():
    traj = CameraTrajectory.eloop(0.4, 4, width=64, height=48)
    pts = unproject(wavy_depth(48, 64), traj[0]).reshape(-1, 3)
    cols = torch.rand(pts.shape[0], 5)
    batch = render_points(pts, cols, traj, radius=2)
    assert batch.rgb.shape == (4, 5, 48, 64)
    for i in range(4):
        one = render_points(pts, cols, traj[i], radius=2)
        # the batched projection may round differently in the last bit: allow a few border pixels
        same = batch.index[i] == one.index[0]
        assert same.float().mean() > 0.995
        assert torch.allclose(batch.depth[i][same], one.depth[0][same], rtol=1e-5)
        assert torch.equal(batch.rgb[i][:, same], one.rgb[0][:, same])


def test_equirectangular_target_wraps_longitude():
    cam = CameraParameters.equirectangular(64, 32)
    behind = torch.tensor([[0.0001, 0.0, -2.0], [-0.0001, 0.0, -2.0]])  # straddle the seam behind
    out = render_points(behind, torch.ones(2, 1), cam, radius=2)
    cols = out.mask[0].any(0).nonzero().flatten().tolist()
    assert 0 in cols and 63 in cols and 32 not in cols


def test_render_errors():
    cam = CameraParameters.from_fov(60, 8, 8)
    with pytest.raises(EmptyPointCloudError):
        render_points(torch.zeros(0, 3), torch.zeros(0, 3), cam)
    with pytest.raises(ShapeMismatchError):
        render_points(torch.zeros(5, 4), torch.zeros(5, 3), cam)
    with pytest.raises(ShapeMismatchError):
        render_points(torch.zeros(5, 3), torch.zeros(4, 3), cam)
    with pytest.raises(ShapeMismatchError):
        render_points(torch.zeros(5, 3), torch.zeros(5, 3), cam, radius=0.5)
    with pytest.raises(ShapeMismatchError, match="numeric"):
        render_points([[0, 0, 1], [1, "x"]], torch.zeros(2, 3), cam)
    # arrays are accepted like tensors
    import numpy as np

    out = render_points(np.array([[0.0, 0.0, 1.0]]), np.ones((1, 3)), cam)
    assert out.mask.sum() == 1


def test_depth_errors():
    cam = CameraParameters.from_fov(60, 8, 6)
    with pytest.raises(InvalidDepthError, match="8x6"):
        unproject(torch.ones(8, 6), cam)
    with pytest.raises(InvalidDepthError, match="no valid pixel"):
        complete_depth(torch.zeros(6, 8))
    with pytest.raises(InvalidDepthError, match="no valid pixel"):
        correspondences(torch.full((6, 8), float("nan")), cam, cam)
    with pytest.raises(InvalidDepthError):
        normals_from_depth(torch.ones(3, 4, 5, 6), cam)


def test_correspondences_match_formula_and_detect_occlusion():
    K = torch.tensor([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    a = CameraParameters(K, None, 64, 48)
    c2w_b = torch.eye(4)
    c2w_b[0, 3] = 0.5
    b = CameraParameters(K, c2w_b, 64, 48)
    depth = torch.full((48, 64), 4.0)
    corr = correspondences(depth, a, b)
    uv = pixel_grid(48, 64)
    # a plane at z=4 shifts by f * tx / z = 6.25 pixels to the left
    assert torch.allclose(corr.uv[..., 0], uv[..., 0] - 6.25, atol=1e-4)
    assert torch.allclose(corr.uv[..., 1], uv[..., 1], atol=1e-4)
    assert corr.valid[:, 7:].all() and not corr.valid[:, :6].any()  # left columns fall outside B
    # a near box in front of the plane hides part of the plane from B
    depth2 = depth.clone()
    depth2[20:28, 30:40] = 1.0
    corr2 = correspondences(depth2, a, b)
    assert corr2.valid[20:28, 30:40].all()
    # plane pixels just left of the box project into B where the box now is (box moves 25 px left)
    assert not corr2.valid[22:26, 10:14].any()
    assert corr2.valid[22:26, 45:50].all()
    # the same with B's depth given
    depth_b = render_points(unproject(depth2, a).reshape(-1, 3), torch.ones(64 * 48, 1), b, radius=2).depth[0]
    corr3 = correspondences(depth2, a, b, depth_b=depth_b)
    assert torch.equal(corr3.valid[22:26, 10:14], corr2.valid[22:26, 10:14])


def test_complete_depth_prefers_background():
    depth = torch.full((40, 60), 5.0)
    depth[:, :30] = 2.0  # near object on the left
    holes = depth.clone()
    holes[:, 26:38] = 0.0  # disocclusion band between the two
    filled = complete_depth(holes)
    assert torch.allclose(filled[:, 26:38], torch.full((40, 12), 5.0))
    assert torch.equal(filled[holes > 0], holes[holes > 0])
    ramp = torch.linspace(2, 3, 60).expand(40, 60).clone()
    holey = ramp.clone()
    holey[10:20, 20:30] = 0
    assert torch.allclose(complete_depth(holey), ramp, atol=0.02)
    one = torch.zeros(7, 9)
    one[3, 4] = 1.5
    assert torch.allclose(complete_depth(one), torch.full((7, 9), 1.5))
    batch = torch.stack([holes, holey])
    assert torch.allclose(complete_depth(batch)[1], complete_depth(holey))
    custom_mask = holes > 0
    assert torch.allclose(complete_depth(holes, custom_mask), filled)


def test_normals_of_planes():
    cam = CameraParameters.from_fov(60, 40, 30)
    n = normals_from_depth(torch.full((30, 40), 3.0), cam)
    assert torch.allclose(n, torch.tensor([0.0, 0.0, -1.0]).expand(30, 40, 3), atol=1e-5)
    # a plane tilted by 45 degrees about the y axis: z = 3 + x
    rays = unproject(torch.ones(30, 40), cam, world=False)
    depth = 3.0 / (1 - rays[..., 0])
    n = normals_from_depth(depth, cam)
    expect = torch.tensor([1.0, 0.0, -1.0]) / math.sqrt(2)
    assert torch.allclose(n[2:-2, 2:-2], expect.expand(26, 36, 3), atol=1e-4)
    # world frame follows the camera rotation; unknown pixels give zeros
    posed = posed_camera(40, 30)
    d = torch.full((30, 40), 3.0)
    d[0, 0] = 0
    nw = normals_from_depth(d, posed)
    assert torch.allclose(nw[5, 5], posed.R @ torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.equal(nw[0, 0], torch.zeros(3))
