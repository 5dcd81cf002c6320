"""Shared by the bench scripts: the best wall time of a few runs."""

from __future__ import annotations

import time


def timed(fn, repeat: int = 1):
    """(best seconds over ``repeat`` runs of ``fn()``, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out
