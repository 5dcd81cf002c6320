"""Trajectory plots: the picture shows the cameras where they are."""

import numpy as np
import pytest
import torch
from PIL import Image

from ws_engine import CameraTrajectory
from ws_engine.errors import ConfigError, OutputPathError, ShapeMismatchError
from ws_engine.plot import START_COLOR, plot_trajectory, save_trajectory_plot

SIZE = (256, 512)


def _mask(image: torch.Tensor, rgb, tolerance: int = 40) -> torch.Tensor:
    """(H,W) bool: pixels within ``tolerance`` (0..255 per channel) of ``rgb``."""
    pixels = (image * 255).round().permute(1, 2, 0)
    return (pixels - torch.tensor(rgb, dtype=torch.float32)).abs().max(-1).values <= tolerance


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero()[:, 0].float()


def test_plot_is_an_image_that_depends_on_the_path():
    forward = plot_trajectory(CameraTrajectory.forward(2.0, 16), size=SIZE)
    orbit = plot_trajectory(CameraTrajectory.orbit_left(60, 16, pivot_depth=2.0), size=SIZE)
    for image in (forward, orbit):
        assert image.shape == (3, *SIZE) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert 0.01 < (image < 0.9).any(0).float().mean() < 0.5  # drawn, but mostly white background
    assert (forward - orbit).abs().max(0).values.gt(0.2).float().mean() > 0.01


def test_forward_motion_goes_up_the_top_view_and_right_in_the_side_view():
    image = plot_trajectory(CameraTrajectory.forward(2.0, 16), size=SIZE)
    half = SIZE[1] // 2
    start = _mask(image, START_COLOR)
    last = _mask(image, (220, 30, 30))  # the gradient's end colour: the last camera
    top_start, top_last = start[:, :half], last[:, :half]
    assert top_start.sum() > 50 and top_last.sum() > 50
    assert _rows(top_last).mean() < _rows(top_start).mean() - 0.3 * SIZE[0]  # later cameras are higher up
    side_start, side_last = start[:, half:], last[:, half:]
    assert side_last.nonzero()[:, 1].float().mean() > side_start.nonzero()[:, 1].float().mean() + 0.2 * half


def test_up_motion_goes_up_the_side_view():
    image = plot_trajectory(CameraTrajectory.up(1.0, 8), size=SIZE)
    side = image[:, :, SIZE[1] // 2 :]
    assert _rows(_mask(side, (220, 30, 30))).mean() < _rows(_mask(side, START_COLOR)).mean() - 0.2 * SIZE[0]


def test_static_single_and_panoramic_trajectories_still_draw():
    static = plot_trajectory(CameraTrajectory.static(5), size=SIZE)
    single = plot_trajectory(CameraTrajectory.forward(1.0, 1), size=SIZE)
    pano = CameraTrajectory.from_poses(torch.eye(4).repeat(4, 1, 1), width=64, height=32, model="equirectangular")
    for image in (static, single, plot_trajectory(pano, size=SIZE)):
        assert torch.isfinite(image).all()
        assert _mask(image, START_COLOR).sum() > 30  # the (only) camera is drawn and highlighted


def test_points_are_drawn_faintly_beneath(tmp_path):
    trajectory = CameraTrajectory.forward(1.0, 8)
    points = torch.rand(50_000, 3) * torch.tensor([2.0, 2.0, 1.0]) - torch.tensor([1.0, 1.0, -0.2])
    plain = plot_trajectory(trajectory, size=SIZE)
    with_points = plot_trajectory(trajectory, size=SIZE, points=points, colors=torch.zeros(50_000, 3))
    background = (plain == 1).all(0)
    dotted = background & (with_points < 1).any(0)
    assert dotted.float().mean() > 0.02
    assert torch.allclose(with_points[:, dotted], torch.tensor(166 / 255))  # faint: black points become light grey
    path = save_trajectory_plot(trajectory, tmp_path / "plot.png", size=SIZE, frustum_scale=0.1)
    assert Image.open(path).size == (SIZE[1], SIZE[0])


def test_plot_arguments_are_checked(tmp_path):
    trajectory = CameraTrajectory.forward(1.0, 4)
    with pytest.raises(ConfigError, match="CameraTrajectory"):
        plot_trajectory(np.eye(4))
    with pytest.raises(ConfigError, match="size"):
        plot_trajectory(trajectory, size=(10, 10))
    with pytest.raises(ConfigError, match="frustum_scale"):
        plot_trajectory(trajectory, frustum_scale=-1.0)
    with pytest.raises(ShapeMismatchError, match="points"):
        plot_trajectory(trajectory, points=torch.rand(10, 2))
    with pytest.raises(OutputPathError, match=".png"):
        save_trajectory_plot(trajectory, tmp_path / "plot.jpg")
