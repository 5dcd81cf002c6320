"""Cameras and camera trajectories (OpenCV convention: x right, y down, z forward).

``CameraParameters`` holds intrinsics ``K`` in pixels (pixel centres at integer coordinates) and
camera-to-world poses ``c2w``, single (3x3 / 4x4) or batched (B,3,3 / B,4,4), for one image size.
``CameraTrajectory`` is an ordered batch of cameras plus a frame rate, with keyframe interpolation,
resampling and the presets users pick from (forward, orbit_left, ...; defined in ``presets.py``).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from ._camera_utils import _as_tensor, _check_frames, _finite, intrinsics_from_fov
from .errors import ConfigError, InvalidCameraError, ShapeMismatchError, check_choice
from .presets import PRESETS, TrajectoryPresets  # noqa: F401  (PRESETS is imported from here)
from .rotations import matrix_to_quaternion, quaternion_to_matrix, rotation_error, slerp

CAMERA_MODELS = ("pinhole", "equirectangular")
ROTATION_TOLERANCE = 1e-3


def equirectangular_K(width: int, height: int, dtype=torch.float32) -> torch.Tensor:
    """The nominal K of an equirectangular image: pixels per radian and the image centre."""
    return torch.tensor(
        [[width / (2 * math.pi), 0.0, (width - 1) / 2], [0.0, height / math.pi, (height - 1) / 2], [0.0, 0.0, 1.0]],
        dtype=dtype,
    )


class CameraParameters:
    """One camera or a batch of B cameras sharing an image size.

    Args:
        K: intrinsics (3,3) or (B,3,3) in pixels, pixel centres at integer coordinates.
        c2w: camera-to-world poses (4,4) or (B,4,4), OpenCV axes, rigid (no scale).
        width, height: image size in pixels.
        model: ``"pinhole"`` or ``"equirectangular"`` (K is then nominal, see ``equirectangular_K``).

    A (3,3) K with a (B,4,4) c2w is shared by all B cameras. Bad values raise
    :class:`~ws_engine.errors.InvalidCameraError`, mismatched batches :class:`ShapeMismatchError`.
    """

    def __init__(self, K, c2w=None, width: int = 512, height: int = 512, model: str = "pinhole", *, _checked: bool = False):
        if _checked:
            self._K, self._c2w, self.width, self.height, self.model, self.batched = K, c2w, width, height, model, _checked == "batched"
            return
        check_choice("camera model", model, CAMERA_MODELS)
        width, height = _check_size(width, height)
        K = _as_tensor(K, "K")
        c2w = torch.eye(4, dtype=K.dtype, device=K.device) if c2w is None else _as_tensor(c2w, "c2w").to(K.device)
        if K.shape[-2:] != (3, 3) or K.dim() not in (2, 3):
            raise ShapeMismatchError(f"K must have shape (3,3) or (B,3,3), got {tuple(K.shape)}.")
        if c2w.shape[-2:] != (4, 4) or c2w.dim() not in (2, 3):
            raise ShapeMismatchError(f"c2w must have shape (4,4) or (B,4,4), got {tuple(c2w.shape)}.")
        batched = K.dim() == 3 or c2w.dim() == 3
        dtype = torch.float64 if torch.float64 in (K.dtype, c2w.dtype) else torch.float32
        K, c2w = K.to(dtype), c2w.to(dtype)
        Kb = K if K.dim() == 3 else K[None]
        Cb = c2w if c2w.dim() == 3 else c2w[None]
        if Kb.shape[0] != Cb.shape[0]:
            if Kb.shape[0] == 1:
                Kb = Kb.expand(Cb.shape[0], 3, 3)
            elif Cb.shape[0] == 1:
                Cb = Cb.expand(Kb.shape[0], 4, 4)
            else:
                raise ShapeMismatchError(
                    f"K holds {Kb.shape[0]} cameras but c2w holds {Cb.shape[0]}; give one K per pose or a single shared K."
                )
        if Kb.shape[0] == 0:
            raise ShapeMismatchError("A camera batch needs at least one camera; got zero.")
        _validate(Kb, Cb, model)
        self._K, self._c2w = Kb.contiguous(), Cb.contiguous()
        self.width, self.height, self.model, self.batched = width, height, model, batched

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_fov(
        cls, fov: float = 60.0, width: int = 512, height: int = 512, c2w=None, fov_axis: str = "horizontal"
    ) -> "CameraParameters":
        """A centred pinhole camera with field of view ``fov`` degrees along ``fov_axis``."""
        width, height = _check_size(width, height)
        return cls(intrinsics_from_fov(fov, width, height, fov_axis), c2w, width, height)

    @classmethod
    def equirectangular(cls, width: int = 1024, height: int = 512, c2w=None) -> "CameraParameters":
        """An equirectangular (360x180 degree) camera; longitude spans the width, latitude the height."""
        width, height = _check_size(width, height)
        return cls(equirectangular_K(width, height), c2w, width, height, model="equirectangular")

    @classmethod
    def stack(cls, cameras: Sequence["CameraParameters"]) -> "CameraParameters":
        """Concatenate cameras (single or batched) of one size and model into one batch."""
        cameras = list(cameras)
        if not cameras:
            raise ShapeMismatchError("Cannot stack an empty list of cameras.")
        first = cameras[0]
        for i, c in enumerate(cameras):
            if not isinstance(c, CameraParameters):
                raise ShapeMismatchError(f"Item {i} is a {type(c).__name__}, not a CameraParameters.")
            if (c.width, c.height, c.model) != (first.width, first.height, first.model):
                raise ShapeMismatchError(
                    f"Camera {i} is {c.width}x{c.height} {c.model} but camera 0 is {first.width}x{first.height} "
                    f"{first.model}; rescale them to one size first (CameraParameters.rescale)."
                )
        dtype = torch.float64 if any(c.dtype == torch.float64 for c in cameras) else torch.float32
        K = torch.cat([c._K.to(dtype=dtype, device=first.device) for c in cameras])
        c2w = torch.cat([c._c2w.to(dtype=dtype, device=first.device) for c in cameras])
        return cls(K, c2w, first.width, first.height, first.model, _checked="batched")

    def _new(self, K: torch.Tensor, c2w: torch.Tensor, batched: bool, width=None, height=None) -> "CameraParameters":
        return CameraParameters(
            K, c2w, width or self.width, height or self.height, self.model, _checked="batched" if batched else True
        )

    # views ----------------------------------------------------------------------------------
    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.batched else t[0]

    @property
    def K(self) -> torch.Tensor:
        """Intrinsics (3,3) or (B,3,3)."""
        return self._out(self._K)

    @property
    def c2w(self) -> torch.Tensor:
        """Camera-to-world (4,4) or (B,4,4)."""
        return self._out(self._c2w)

    @property
    def w2c(self) -> torch.Tensor:
        """World-to-camera (4,4) or (B,4,4), the rigid inverse of ``c2w``."""
        return self._out(rigid_inverse(self._c2w))

    @property
    def R(self) -> torch.Tensor:
        """Camera-to-world rotation (3,3) or (B,3,3)."""
        return self._out(self._c2w[:, :3, :3])

    @property
    def position(self) -> torch.Tensor:
        """Camera centres in world coordinates (3,) or (B,3)."""
        return self._out(self._c2w[:, :3, 3])

    fx = property(lambda self: self._out(self._K[:, 0, 0]), doc="Focal length x in pixels, () or (B,).")
    fy = property(lambda self: self._out(self._K[:, 1, 1]), doc="Focal length y in pixels, () or (B,).")
    cx = property(lambda self: self._out(self._K[:, 0, 2]), doc="Principal point x in pixels, () or (B,).")
    cy = property(lambda self: self._out(self._K[:, 1, 2]), doc="Principal point y in pixels, () or (B,).")

    @property
    def Kb(self) -> torch.Tensor:
        """Intrinsics always batched (B,3,3)."""
        return self._K

    @property
    def c2wb(self) -> torch.Tensor:
        """Poses always batched (B,4,4)."""
        return self._c2w

    @property
    def device(self) -> torch.device:
        return self._K.device

    @property
    def dtype(self) -> torch.dtype:
        return self._K.dtype

    @property
    def num_cameras(self) -> int:
        return self._K.shape[0]

    def __len__(self) -> int:
        return self._K.shape[0]

    def __getitem__(self, index) -> "CameraParameters":
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            i = int(index)
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"camera index {i} out of range for {n} camera(s)")
            return self._new(self._K[i : i + 1], self._c2w[i : i + 1], batched=False)
        if isinstance(index, slice):
            K, c2w = self._K[index], self._c2w[index]
        else:
            idx = torch.as_tensor(index, device=self.device)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            K, c2w = self._K[idx.long()], self._c2w[idx.long()]
        if K.shape[0] == 0:
            raise IndexError("camera selection is empty")
        return self._new(K, c2w, batched=True)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def as_batch(self) -> "CameraParameters":
        """The same cameras with batched (B,...) views."""
        return self._new(self._K, self._c2w, batched=True)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "CameraParameters":
        """Move to ``device`` (``"cuda"`` without CUDA falls back to CPU) and/or cast to ``dtype``."""
        from .device import resolve_device

        dev = resolve_device(device) if device is not None else self.device
        return self._new(self._K.to(dev, dtype), self._c2w.to(dev, dtype), self.batched)

    def rescale(self, width: int, height: int) -> "CameraParameters":
        """The same cameras for an image resized to ``width`` x ``height`` (K scaled per axis)."""
        width, height = _check_size(width, height)
        if self.model == "equirectangular":
            K = equirectangular_K(width, height, self.dtype).to(self.device).expand_as(self._K).clone()
        else:
            sx, sy = width / self.width, height / self.height
            K = self._K.clone()
            K[:, 0, :] *= sx
            K[:, 1, :] *= sy
            # pixel centres at integer coordinates: (u + 0.5) scales, not u
            K[:, 0, 2] += 0.5 * sx - 0.5
            K[:, 1, 2] += 0.5 * sy - 0.5
        return self._new(K, self._c2w, self.batched, width, height)

    def with_poses(self, c2w: torch.Tensor) -> "CameraParameters":
        """New cameras with the same K and size at poses ``c2w`` (B,4,4); validates the poses."""
        return CameraParameters(self._K, c2w, self.width, self.height, self.model)

    def allclose(self, other: "CameraParameters", atol: float = 1e-5) -> bool:
        """Same size, model and (within ``atol``) the same K and c2w."""
        return (
            (self.width, self.height, self.model, len(self)) == (other.width, other.height, other.model, len(other))
            and torch.allclose(self._K.double(), other._K.double().to(self.device), atol=atol, rtol=0)
            and torch.allclose(self._c2w.double(), other._c2w.double().to(self.device), atol=atol, rtol=0)
        )

    def __repr__(self) -> str:
        n = f"{len(self)} cameras, " if self.batched else ""
        return f"CameraParameters({n}{self.width}x{self.height}, {self.model}, device={self.device})"


def rigid_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (...,4,4): [R|t]^-1 = [R^T | -R^T t]."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = torch.zeros_like(T)
    Rt = R.transpose(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def _check_size(width, height) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise InvalidCameraError(f"Image size must be whole numbers, got width={width!r}, height={height!r}.") from None
    if w != width or h != height or w <= 0 or h <= 0:
        raise InvalidCameraError(f"Image size must be positive whole numbers of pixels, got {width}x{height}.")
    return w, h


def _validate(K: torch.Tensor, c2w: torch.Tensor, model: str) -> None:
    """Raise InvalidCameraError for non-finite values, bad rotations or focal lengths <= 0."""
    for name, t in (("K", K), ("c2w", c2w)):
        bad = ~torch.isfinite(t).flatten(1).all(1)
        if bad.any():
            raise InvalidCameraError(
                f"{name} of camera {int(bad.nonzero()[0])} contains NaN or infinity; check the source of the poses."
            )
    err = rotation_error(c2w[:, :3, :3].double())
    bad = err > ROTATION_TOLERANCE
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InvalidCameraError(
            f"The rotation of c2w[{i}] is not orthonormal with determinant +1 (error {float(err[i]):.3g}). "
            "Pass rigid camera-to-world matrices: remove object scale or shear, and mirror no axis."
        )
    last = c2w[:, 3, :] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)
    bad = last.abs().amax(1) > 1e-5
    if bad.any():
        raise InvalidCameraError(f"The last row of c2w[{int(bad.nonzero()[0])}] must be [0, 0, 0, 1].")
    if model == "pinhole":
        bad = (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise InvalidCameraError(
                f"Focal lengths must be positive, camera {i} has fx={float(K[i, 0, 0]):.4g}, fy={float(K[i, 1, 1]):.4g}. "
                "Give K in pixels, e.g. CameraParameters.from_fov(fov=60, width=..., height=...)."
            )
        row = K[:, 2, :] - torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
        bad = (row.abs().amax(1) > 1e-6) | (K[:, 1, 0].abs() > 1e-6)
        if bad.any():
            raise InvalidCameraError(f"K[{int(bad.nonzero()[0])}] must be upper triangular with last row [0, 0, 1].")


# --------------------------------------------------------------------------------------------
# trajectories
# --------------------------------------------------------------------------------------------

INTERPOLATIONS = ("slerp", "catmull_rom")


class CameraTrajectory(TrajectoryPresets):
    """An ordered sequence of T cameras of one image size, and a frame rate.

    ``len(traj)`` is T, ``traj[i]`` a single :class:`CameraParameters`, ``traj[a:b]`` a trajectory;
    ``traj.c2w`` (T,4,4), ``traj.K`` (T,3,3), ``traj.width``, ``traj.height``, ``traj.cameras`` (batched).
    """

    def __init__(self, cameras: CameraParameters | Iterable[CameraParameters], fps: float = 16.0):
        cams = cameras.as_batch() if isinstance(cameras, CameraParameters) else CameraParameters.stack(list(cameras))
        fps = _finite("fps", fps)
        if fps <= 0:
            raise ConfigError(f"fps must be positive, got {fps}.")
        self.cameras, self.fps = cams, fps

    # views ----------------------------------------------------------------------------------
    c2w = property(lambda self: self.cameras.c2wb, doc="Camera-to-world poses (T,4,4).")
    w2c = property(lambda self: self.cameras.w2c, doc="World-to-camera poses (T,4,4).")
    K = property(lambda self: self.cameras.Kb, doc="Intrinsics (T,3,3).")
    width = property(lambda self: self.cameras.width)
    height = property(lambda self: self.cameras.height)
    model = property(lambda self: self.cameras.model)
    device = property(lambda self: self.cameras.device)
    positions = property(lambda self: self.cameras.c2wb[:, :3, 3], doc="Camera centres (T,3).")

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.cameras[index]
        return CameraTrajectory(self.cameras[index], self.fps)

    def __iter__(self):
        return iter(self.cameras)

    def __repr__(self) -> str:
        return f"CameraTrajectory({len(self)} frames, {self.width}x{self.height}, {self.fps:g} fps, {self.model})"

    def to(self, device=None, dtype=None) -> "CameraTrajectory":
        return CameraTrajectory(self.cameras.to(device, dtype), self.fps)

    def rescale(self, width: int, height: int) -> "CameraTrajectory":
        return CameraTrajectory(self.cameras.rescale(width, height), self.fps)

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_poses(cls, c2w, K=None, width: int = 512, height: int = 512, fps: float = 16.0, model: str = "pinhole", fov: float = 60.0):
        """Trajectory from camera-to-world poses (T,4,4) and K (3,3) or (T,3,3); K defaults to ``fov``."""
        if K is None:
            K = equirectangular_K(width, height) if model == "equirectangular" else intrinsics_from_fov(fov, width, height)
        c2w = _as_tensor(c2w, "c2w")
        if c2w.dim() == 2:
            c2w = c2w[None]
        return cls(CameraParameters(K, c2w, width, height, model), fps)

    @classmethod
    def from_keyframes(
        cls,
        poses,
        num_frames: int,
        interpolation: str = "slerp",
        *,
        times=None,
        K=None,
        width: int | None = None,
        height: int | None = None,
        fov: float = 60.0,
        fps: float = 16.0,
    ) -> "CameraTrajectory":
        """Interpolate keyframes into ``num_frames`` cameras.

        Args:
            poses: keyframe c2w (N,4,4), or keyframe cameras (CameraParameters batch, list of them,
                or a CameraTrajectory; their K is interpolated linearly too).
            interpolation: ``"slerp"`` (rotations by SLERP, positions linear) or ``"catmull_rom"``
                (rotations by SLERP, positions on a Catmull-Rom spline through the keyframes).
            times: increasing keyframe times in frames (N,), default evenly spread over the output.
        """
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        T = _check_frames(num_frames)
        if isinstance(poses, CameraTrajectory):
            poses = poses.cameras
        elif isinstance(poses, (list, tuple)) and poses and isinstance(poses[0], CameraParameters):
            poses = CameraParameters.stack(poses)
        if isinstance(poses, CameraParameters):
            cams = poses.as_batch()
            Kk, c2w = cams.Kb, cams.c2wb
            width, height, model = cams.width, cams.height, cams.model
        else:
            c2w = _as_tensor(poses, "poses")
            if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
                raise ShapeMismatchError(f"Keyframe poses must have shape (N,4,4), got {tuple(c2w.shape)}.")
            width, height, model = width or 512, height or 512, "pinhole"
            Kk = _as_tensor(K, "K") if K is not None else intrinsics_from_fov(fov, width, height)
            Kk = (Kk if Kk.dim() == 3 else Kk[None]).to(c2w)
            CameraParameters(Kk, c2w, width, height)  # validates
        N = c2w.shape[0]
        if N == 0:
            raise ShapeMismatchError("from_keyframes needs at least one keyframe.")
        if Kk.shape[0] == 1:
            Kk = Kk.expand(N, 3, 3)
        tk = torch.linspace(0, T - 1, N, dtype=torch.float64) if times is None else _as_tensor(times, "times", torch.float64)
        if tk.shape != (N,):
            raise ShapeMismatchError(f"times must hold one value per keyframe ({N}), got shape {tuple(tk.shape)}.")
        if N > 1 and not bool((tk[1:] > tk[:-1]).all()):
            raise ConfigError("Keyframe times must be strictly increasing.")
        c2w_out, K_out = _interpolate(c2w.double(), Kk.double(), tk, torch.arange(T, dtype=torch.float64), interpolation)
        dtype = c2w.dtype
        return cls(CameraParameters(K_out.to(dtype), c2w_out.to(dtype), width, height, model), fps)

    def concat(self, *others: "CameraTrajectory", relative: bool = False) -> "CameraTrajectory":
        """Join trajectories in order; also callable as ``CameraTrajectory.concat(a, b, ...)``.

        The result keeps the first trajectory's fps.

        With ``relative=True`` each following trajectory is moved so that its first camera sits on
        the previous trajectory's last camera, and that duplicate first frame is dropped (chaining
        presets such as forward then turn_left).
        """
        parts = [self]
        for o in others:
            if isinstance(o, (list, tuple)):
                parts.extend(o)
            else:
                parts.append(o)
        cams = [parts[0].cameras]
        for p in parts[1:]:
            if not isinstance(p, CameraTrajectory):
                raise ShapeMismatchError(f"concat takes CameraTrajectory objects, got {type(p).__name__}.")
            c = p.cameras
            if relative:
                last = cams[-1].c2wb[-1:].to(c.dtype)
                rel = rigid_inverse(c.c2wb[:1]) @ c.c2wb
                c = c._new(c.Kb, last @ rel, True)
                if len(c) == 1:
                    continue
                c = c[1:]
            cams.append(c)
        return CameraTrajectory(CameraParameters.stack(cams), self.fps)

    def reverse(self) -> "CameraTrajectory":
        """The same cameras in reverse order."""
        return self[torch.arange(len(self) - 1, -1, -1)]

    def resample(self, num_frames: int, interpolation: str = "slerp") -> "CameraTrajectory":
        """``num_frames`` cameras spread evenly along this trajectory (SLERP rotations, K linear)."""
        out = CameraTrajectory.from_keyframes(self.cameras, num_frames, interpolation, fps=self.fps)
        return out

    def relative_to_first(self) -> "CameraTrajectory":
        """Poses expressed in the first camera's frame, so frame 0 is the identity."""
        c2w = rigid_inverse(self.c2w[:1]) @ self.c2w
        c2w[0] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
        return CameraTrajectory(self.cameras._new(self.K, c2w, True), self.fps)

    def transform(self, world_from_old: torch.Tensor) -> "CameraTrajectory":
        """Apply a rigid transform (4,4) to every pose: ``c2w' = world_from_old @ c2w``."""
        M = _as_tensor(world_from_old, "transform").to(self.c2w)
        return CameraTrajectory(CameraParameters(self.K, M @ self.c2w, self.width, self.height, self.model), self.fps)


def _interpolate(c2w: torch.Tensor, K: torch.Tensor, tk: torch.Tensor, t: torch.Tensor, mode: str):
    """Interpolate keyframes (N,4,4)/(N,3,3) at times ``tk`` (N,) to times ``t`` (T,) (float64)."""
    N = c2w.shape[0]
    if N == 1:
        return c2w.expand(len(t), 4, 4).clone(), K.expand(len(t), 3, 3).clone()
    t = t.clamp(tk[0], tk[-1])
    seg = (torch.searchsorted(tk, t, right=True) - 1).clamp(0, N - 2)
    u = (t - tk[seg]) / (tk[seg + 1] - tk[seg])
    q = matrix_to_quaternion(c2w[:, :3, :3])
    R = quaternion_to_matrix(slerp(q[seg], q[seg + 1], u))
    p = c2w[:, :3, 3]
    if mode == "catmull_rom":
        p0 = p[(seg - 1).clamp(min=0)]
        p0 = torch.where((seg == 0)[:, None], 2 * p[seg] - p[seg + 1], p0)
        p3 = p[(seg + 2).clamp(max=N - 1)]
        p3 = torch.where((seg + 2 > N - 1)[:, None], 2 * p[seg + 1] - p[seg], p3)
        p1, p2 = p[seg], p[seg + 1]
        uu = u[:, None]
        pos = 0.5 * (
            2 * p1 + (-p0 + p2) * uu + (2 * p0 - 5 * p1 + 4 * p2 - p3) * uu**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * uu**3
        )
    else:
        pos = torch.lerp(p[seg], p[seg + 1], u[:, None])
    out = torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1)
    out[:, :3, :3], out[:, :3, 3] = R, pos
    Kt = torch.lerp(K[seg], K[seg + 1], u[:, None, None])
    return out, Kt
