"""The ``re10k`` format: RealEstate10K text (a first line, then per frame: timestamp in microseconds,
fx/W fy/H cx/W cy/H, two zeros, the 3×4 world-to-camera matrix row by row)."""

from __future__ import annotations

import numpy as np

from ..cameras import CameraTrajectory
from ..errors import TrajectoryFormatError
from ._common import (
    _build,
    _c2w_from_w2c,
    _external_K,
    _fmt,
    _Hints,
    _is_number,
    _pick,
    _pinhole_only,
    _read_tags,
    _size,
    _tag_line,
    _text_rows,
    _w2c,
    _warn_skew,
)

RE10K_ROW = 19


def _re10k_from_text(text: str, label: str, hints: _Hints):
    rows = _text_rows(text)
    if not rows:
        raise TrajectoryFormatError(f"{label} has no camera rows; a trajectory needs at least one.")
    for lineno, tokens in rows:
        if len(tokens) != RE10K_ROW or not all(map(_is_number, tokens)):
            raise TrajectoryFormatError(
                f"{label} line {lineno}: expected {RE10K_ROW} numbers (timestamp, fx/W fy/H cx/W cy/H, 0 0, "
                f"3x4 world-to-camera row by row), got {len(tokens)} values: {' '.join(tokens)[:80]!r}."
            )
    a = np.array([[float(t) for t in tokens] for _, tokens in rows])
    tags = _read_tags(text.splitlines()[:1], label)
    width, height = _size(tags.get("width"), tags.get("height"), hints, label)
    K = np.zeros((len(a), 3, 3))
    K[:, 0, 0], K[:, 1, 1] = a[:, 1] * width, a[:, 2] * height
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = a[:, 3] * width, a[:, 4] * height, 1.0
    w2c = np.concatenate([a[:, 7:].reshape(-1, 3, 4), np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(a), 1, 1))], axis=1)
    stamps = a[:, 0]
    from_stamps = None
    if len(a) > 1 and bool((np.diff(stamps) > 0).all()):
        from_stamps = 1e6 * (len(a) - 1) / (stamps[-1] - stamps[0])
    fps = _pick("fps", tags.get("fps", from_stamps), hints.fps, label)
    return _build(_c2w_from_w2c(w2c, label), K, width=width, height=height, fps=fps, label=label), {}


def _re10k_to_text(traj: CameraTrajectory) -> str:
    _pinhole_only(traj, "re10k")
    _warn_skew(traj, "re10k")
    K, w2c, W, H = _external_K(traj), _w2c(traj), traj.width, traj.height
    lines = [_tag_line(width=W, height=H, fps=traj.fps)]
    for i, (k, m) in enumerate(zip(K, w2c)):
        stamp = round(i * 1e6 / traj.fps)
        values = [k[0, 0] / W, k[1, 1] / H, k[0, 2] / W, k[1, 2] / H, 0.0, 0.0, *m[:3].ravel()]
        lines.append(" ".join([str(stamp)] + [_fmt(v) for v in values]))
    return "\n".join(lines) + "\n"
