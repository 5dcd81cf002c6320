"""Trajectory presets: the camera motions users pick by name (forward, orbit_left, spiral, ...).

``TrajectoryPresets`` is a mixin of :class:`~ws_engine.cameras.CameraTrajectory`: every preset is
called on it (``CameraTrajectory.forward(2.0, 16)``, ``CameraTrajectory.preset("forward", 16)``).
A preset describes its motion as poses relative to the first camera; ``_build`` places them at
``start`` with the intrinsics of ``fov`` (or ``K``) and returns the trajectory through the host
class's ``from_poses``. Distances are scene units, multiplied by ``scene_depth`` when given.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ._camera_utils import _as_tensor, _check_frames, _finite, intrinsics_from_fov
from .errors import ConfigError, ShapeMismatchError, check_choice
from .rotations import axis_angle_to_matrix, look_at

if TYPE_CHECKING:
    from .cameras import CameraTrajectory

__all__ = ["PRESETS", "TrajectoryPresets"]

PRESETS = (
    "static", "forward", "backward", "left", "right", "up", "down", "turn_left", "turn_right",
    "tilt_up", "tilt_down", "orbit_left", "orbit_right", "zoom_in", "zoom_out", "spiral", "eloop",
)  # fmt: skip


class TrajectoryPresets:
    """The presets of :class:`~ws_engine.cameras.CameraTrajectory` (see ``PRESETS``), as classmethods.

    Every preset takes ``num_frames`` and the camera arguments ``width``, ``height``, ``fov``
    (degrees, horizontal; ignored when ``K`` (3,3) is given), ``start`` (the first camera-to-world
    pose, default identity), ``fps`` and ``scene_depth`` (the unit of distances, default 1).
    """

    @classmethod
    def preset(cls, name: str, num_frames: int = 16, **kwargs) -> "CameraTrajectory":
        """Build a preset by name (see ``PRESETS``)."""
        check_choice("trajectory preset", name, PRESETS)
        return getattr(cls, name)(num_frames=num_frames, **kwargs)

    # building blocks ------------------------------------------------------------------------
    @classmethod
    def _build(cls, rel_c2w, width, height, fov, K, start, fps, K_scale=None) -> "CameraTrajectory":
        """Trajectory from poses relative to the first camera (T,4,4) placed at ``start``."""
        base = intrinsics_from_fov(fov, width, height) if K is None else _as_tensor(K, "K").to(torch.float32)
        if base.shape != (3, 3):
            raise ShapeMismatchError(f"K must have shape (3,3), got {tuple(base.shape)}.")
        Ks = base.double().expand(len(rel_c2w), 3, 3).clone()
        if K_scale is not None:  # focal change about the principal point
            Ks[:, 0, 0] *= K_scale
            Ks[:, 1, 1] *= K_scale
            Ks[:, 0, 1] *= K_scale
        start = torch.eye(4, dtype=torch.float64) if start is None else _as_tensor(start, "start", torch.float64)
        if start.shape != (4, 4):
            raise ShapeMismatchError(f"start must be a (4,4) camera-to-world pose, got {tuple(start.shape)}.")
        c2w = start @ rel_c2w
        return cls.from_poses(c2w.float(), Ks.float(), width, height, fps)

    @staticmethod
    def _t(num_frames: int) -> torch.Tensor:
        T = _check_frames(num_frames)
        return torch.linspace(0.0, 1.0, T, dtype=torch.float64) if T > 1 else torch.zeros(1, dtype=torch.float64)

    @staticmethod
    def _scale(value: float, scene_depth, name: str) -> float:
        v = _finite(name, value)
        if scene_depth is not None:
            d = _finite("scene_depth", scene_depth)
            if d <= 0:
                raise ConfigError(f"scene_depth must be positive, got {scene_depth}.")
            v *= d
        return v

    @classmethod
    def _translate(cls, direction, distance, num_frames, scene_depth) -> torch.Tensor:
        """Relative poses (T,4,4) moving by ``distance`` along ``direction`` (first camera's axes)."""
        t = cls._t(num_frames)
        d = cls._scale(distance, scene_depth, "distance")
        rel = torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1)
        rel[:, :3, 3] = t[:, None] * d * torch.tensor(direction, dtype=torch.float64)
        return rel

    @classmethod
    def _rotate(cls, axis, angle, num_frames) -> torch.Tensor:
        """Relative poses (T,4,4) turning in place by ``angle`` degrees about ``axis``."""
        t = cls._t(num_frames)
        ang = math.radians(_finite("angle", angle)) * t
        rel = torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1)
        rel[:, :3, :3] = axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64).expand(len(t), 3), ang)
        return rel

    @classmethod
    def _orbit(cls, sign, angle, pivot_depth, num_frames, scene_depth) -> torch.Tensor:
        """Relative poses (T,4,4) circling a pivot ``pivot_depth`` ahead while looking at it."""
        t = cls._t(num_frames)
        d = cls._scale(pivot_depth, scene_depth, "pivot_depth")
        if d <= 0:
            raise ConfigError(f"pivot_depth must be positive, got {pivot_depth}.")
        a = sign * math.radians(_finite("angle", angle)) * t  # azimuth; sign -1 = move left
        s, c = torch.sin(a), torch.cos(a)
        rel = torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1)
        # position on the circle around the pivot (0,0,d); the camera keeps looking at the pivot
        rel[:, 0, 3], rel[:, 2, 3] = d * s, d * (1 - c)
        rel[:, 0, 0], rel[:, 0, 2], rel[:, 2, 0], rel[:, 2, 2] = c, -s, s, c
        return rel

    @classmethod
    def _zoom(cls, factor, num_frames, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative poses (T,4,4) of a camera that stays put, and its focal scale (T,) up to
        ``factor`` (down to 1/``factor`` with ``inverse``)."""
        t = cls._t(num_frames)
        f = _finite("factor", factor)
        if f <= 0:
            raise ConfigError(f"Zoom factor must be positive, got {factor}.")
        return torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1), (1.0 / f if inverse else f) ** t

    @classmethod
    def _looking(cls, pos: torch.Tensor, focus_depth, scene_depth) -> torch.Tensor:
        """Relative poses at positions (T,3): fixed orientation, or looking at (0,0,focus)."""
        rel = torch.eye(4, dtype=torch.float64).repeat(len(pos), 1, 1)
        rel[:, :3, 3] = pos
        if focus_depth is not None:
            f = cls._scale(focus_depth, scene_depth, "focus_depth")
            if f <= 0:
                raise ConfigError(f"focus_depth must be positive, got {focus_depth}.")
            target = torch.tensor([0.0, 0.0, f], dtype=torch.float64)
            if bool(((pos - target).norm(dim=-1) < 1e-9).any()):
                raise ConfigError("focus_depth lies on the path; choose a focus farther than the motion.")
            rel[:, :3, :3] = look_at(pos, target.expand_as(pos), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
        return rel

    # the presets ----------------------------------------------------------------------------
    @classmethod
    def static(cls, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """The first camera repeated."""
        return cls._build(cls._translate((0, 0, 0), 0.0, num_frames, None), width, height, fov, K, start, fps)

    @classmethod
    def forward(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Dolly along the first camera's +z (into the image) by ``distance`` (x ``scene_depth``)."""
        return cls._build(cls._translate((0, 0, 1), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def backward(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Dolly along -z (out of the image)."""
        return cls._build(cls._translate((0, 0, -1), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def left(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Truck left (-x); the scene moves right in the image."""
        return cls._build(cls._translate((-1, 0, 0), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def right(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Truck right (+x)."""
        return cls._build(cls._translate((1, 0, 0), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def up(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Pedestal up (-y, since y points down)."""
        return cls._build(cls._translate((0, -1, 0), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def down(cls, distance: float = 1.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Pedestal down (+y)."""
        return cls._build(cls._translate((0, 1, 0), distance, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def turn_left(cls, angle: float = 30.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Yaw in place to the left by ``angle`` degrees; the scene moves right in the image."""
        return cls._build(cls._rotate((0, 1, 0), -angle, num_frames), width, height, fov, K, start, fps)

    @classmethod
    def turn_right(cls, angle: float = 30.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Yaw in place to the right by ``angle`` degrees."""
        return cls._build(cls._rotate((0, 1, 0), angle, num_frames), width, height, fov, K, start, fps)

    @classmethod
    def tilt_up(cls, angle: float = 15.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Pitch up in place by ``angle`` degrees; the scene moves down in the image."""
        return cls._build(cls._rotate((1, 0, 0), angle, num_frames), width, height, fov, K, start, fps)

    @classmethod
    def tilt_down(cls, angle: float = 15.0, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Pitch down in place by ``angle`` degrees."""
        return cls._build(cls._rotate((1, 0, 0), -angle, num_frames), width, height, fov, K, start, fps)

    @classmethod
    def orbit_left(cls, angle: float = 30.0, num_frames: int = 16, *, pivot_depth: float = 1.0, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Circle left by ``angle`` degrees around a pivot ``pivot_depth`` (x scene_depth) ahead, looking at it."""
        return cls._build(cls._orbit(-1, angle, pivot_depth, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def orbit_right(cls, angle: float = 30.0, num_frames: int = 16, *, pivot_depth: float = 1.0, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Circle right by ``angle`` degrees around a pivot ``pivot_depth`` ahead, looking at it."""
        return cls._build(cls._orbit(1, angle, pivot_depth, num_frames, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def zoom_in(cls, factor: float = 1.5, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Focal length grows to ``factor`` times the start (camera does not move)."""
        rel, focal_scale = cls._zoom(factor, num_frames)
        return cls._build(rel, width, height, fov, K, start, fps, K_scale=focal_scale)

    @classmethod
    def zoom_out(cls, factor: float = 1.5, num_frames: int = 16, *, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """Focal length shrinks to 1/``factor`` of the start."""
        rel, focal_scale = cls._zoom(factor, num_frames, inverse=True)
        return cls._build(rel, width, height, fov, K, start, fps, K_scale=focal_scale)

    @classmethod
    def spiral(cls, radius: float = 0.2, num_frames: int = 16, *, revolutions: float = 1.0, distance: float = 0.0, focus_depth: float | None = 1.0, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """A widening spiral in the image plane (radius 0 to ``radius``), moving ``distance`` forward,
        looking at a point ``focus_depth`` ahead (None keeps the orientation)."""
        t = cls._t(num_frames)
        r = cls._scale(radius, scene_depth, "radius") * t
        phi = 2 * math.pi * _finite("revolutions", revolutions) * t
        pos = torch.stack([r * torch.cos(phi), r * torch.sin(phi), cls._scale(distance, scene_depth, "distance") * t], -1)
        return cls._build(cls._looking(pos, focus_depth, scene_depth), width, height, fov, K, start, fps)

    @classmethod
    def eloop(cls, radius_x: float = 0.3, num_frames: int = 16, *, radius_z: float = 0.15, radius_y: float = 0.0, focus_depth: float | None = 1.0, width=512, height=512, fov=60.0, K=None, start=None, fps=16.0, scene_depth=None):
        """An elliptical loop that leaves from and returns to the start: right, forward, left, back.

        The ellipse has half-axes ``radius_x`` (sideways) and ``radius_z`` (depth), optional
        vertical bob ``radius_y``; the camera looks at a point ``focus_depth`` ahead (None: fixed).
        """
        t = cls._t(num_frames)
        phi = 2 * math.pi * t
        rx = cls._scale(radius_x, scene_depth, "radius_x")
        rz = cls._scale(radius_z, scene_depth, "radius_z")
        ry = cls._scale(radius_y, scene_depth, "radius_y")
        pos = torch.stack([rx * torch.sin(phi), -ry * torch.sin(2 * phi), rz * (1 - torch.cos(phi))], -1)
        return cls._build(cls._looking(pos, focus_depth, scene_depth), width, height, fov, K, start, fps)
