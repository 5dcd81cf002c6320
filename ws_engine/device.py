"""Device selection: ``"cuda"`` on a machine without CUDA falls back to CPU with one warning."""

from __future__ import annotations

import warnings

import torch

_warned = False


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return a usable ``torch.device``; ``None`` means CUDA when available, else CPU.

    Asking for CUDA where there is none gives the CPU and one ``RuntimeWarning`` per process.
    """
    global _warned
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        if not _warned:
            warnings.warn(
                f"device={str(device)!r} was asked for but CUDA is not available here; running on the CPU. "
                "Pass device='cpu' to silence this warning.",
                RuntimeWarning,
                stacklevel=2,
            )
            _warned = True
        return torch.device("cpu")
    return dev
