"""Persistence of GlobalGeometricMemory: state dicts and safetensors files (config in the metadata)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import MemoryFileError, WorldStereoError
from ..io import atomic_path
from .ggm_utils import validate_state

FILE_FORMAT = "ws_engine.GlobalGeometricMemory"
FILE_VERSION = "1"


class MemoryPersistence:
    """``state_dict``/``load_state_dict`` and ``save``/``load`` of :class:`GlobalGeometricMemory`."""

    # ------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors (CPU copies): points, colors, weights, stamps, features (if F > 0), views (V,4,4; NaN = None),
        separation (the distance every stored pair is known to keep)."""
        views = torch.stack([v.float().cpu() if v is not None else torch.full((4, 4), math.nan) for v in self.views]) if self.views else torch.zeros(0, 4, 4)
        state = {
            "points": self.points.cpu().clone(),
            "colors": self.colors.cpu().clone(),
            "weights": self.weights.cpu().clone(),
            "stamps": self.stamps.cpu().clone(),
            "views": views,
            "separation": torch.tensor(self._separation, dtype=torch.float64),
        }
        if self.feature_dim:
            state["features"] = self.features.cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the content from ``state_dict()`` output; validates keys, shapes and values."""
        N, stamps = validate_state(state, self.feature_dim, self.max_points)
        pts = state["points"]
        self.clear()
        self._reserve(N)
        dev = self.device
        self._pts[:N], self._col[:N] = pts.to(dev, torch.float32), state["colors"].to(dev, torch.float32)
        self._pts_t[:, :N] = self._pts[:N].T
        self._wt[:N], self._stamp[:N] = state["weights"].to(dev, torch.float32), stamps.to(dev)
        if self.feature_dim:
            self._feat[:N] = state["features"].to(dev, torch.float32)
        self._tail = N
        self._next_stamp = int(stamps[-1]) + 1 if N else 0
        sep = state.get("separation")
        # unknown separation: the next merging update re-thins the cloud once
        self._separation = float(sep) if isinstance(sep, torch.Tensor) and sep.numel() == 1 else 0.0
        self.views = [None if bool(torch.isnan(v).any()) else v.to(dev) for v in state["views"]]
        self.version += 1

    def save(self, path) -> Path:
        """Write the memory to a safetensors file (config as JSON in its metadata), atomically."""
        from safetensors.torch import save_file

        meta = {"format": FILE_FORMAT, "version": FILE_VERSION, "config": json.dumps(self.config)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "GlobalGeometricMemory":
        """A new memory from a file written by ``save`` (raises MemoryFileError for other files)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MemoryFileError(f"No memory file at {path}; check the path.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
            raise MemoryFileError(f"{path} is not a readable safetensors file ({exc}); it may be truncated. Save it again.") from None
        if meta.get("format") != FILE_FORMAT:
            raise MemoryFileError(f"{path} was not written by GlobalGeometricMemory.save (format {meta.get('format')!r}).")
        try:
            config = json.loads(meta["config"])
            memory = cls(**config, device=device)
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryFileError(f"{path} has an unreadable config ({exc}).") from None
        try:
            memory.load_state_dict(state)
        except WorldStereoError as exc:
            raise MemoryFileError(f"{path} holds inconsistent data: {exc}") from None
        return memory
