"""PLY point clouds with numpy only: the vertex element of binary (little/big-endian) and ascii files.

``read_ply(path) -> {"points": (N,3) float32, "colors": (N,3) float32 in [0,1] | None, "normals": (N,3) float32 | None}``.
Colours may be uchar, ushort or float (floats above 1 are read as 0..255); they are returned as
stored (sRGB-encoded, as images are), not converted to linear.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import AddonError

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


def _bad(path, why: str) -> AddonError:
    return AddonError(f"Cannot read '{path}' as a PLY point cloud: {why}. Export it again as a PLY file.")


def _header(f, path) -> tuple[str, list]:
    """The format and elements [(name, count, [(property, dtype | None for lists)])] of a PLY header."""
    if f.readline().strip() != b"ply":
        raise _bad(path, "it does not start with 'ply'")
    fmt, elements = None, []
    for raw in f:
        words = raw.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            is_list = words[1] == "list"
            elements[-1][2].append((words[-1], None if is_list else _TYPES.get(words[1], "?")))
    raise _bad(path, "the header has no end_header line")


def read_ply(path: str | os.PathLike) -> dict:
    """The vertices of a PLY file: points (N,3), colors (N,3) in [0,1] or None, normals (N,3) or None."""
    if not os.path.isfile(path):
        raise AddonError(f"The point cloud file '{path}' does not exist.")
    with open(path, "rb") as f:
        fmt, elements = _header(f, path)
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise _bad(path, "it has no vertex element")
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise _bad(path, f"unknown format {fmt!r}")
        index = names.index("vertex")
        _, count, props = elements[index]
        if any(t is None or t == "?" for e in elements[: index + 1] for _, t in e[2]):
            raise _bad(path, "list or unknown properties come before or in the vertices")
        if fmt == "ascii":
            skip = sum(e[1] for e in elements[:index])
            lines = f.read().decode("ascii", "replace").splitlines()[skip : skip + count]
            try:
                table = np.loadtxt(lines, dtype=np.float64, ndmin=2) if lines else np.empty((0, len(props)))
            except ValueError as exc:
                raise _bad(path, f"a vertex row is not numbers ({exc})") from exc
            if table.shape != (count, len(props)):
                raise _bad(path, f"expected {count} vertex rows of {len(props)} values, found {table.shape}")
            columns = {name: table[:, i].astype(t) for i, (name, t) in enumerate(props)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + t) for name, t in props])
            f.seek(sum(e[1] * np.dtype([(n, t) for n, t in e[2]]).itemsize for e in elements[:index]), os.SEEK_CUR)
            data = f.read(count * dtype.itemsize)
            if len(data) < count * dtype.itemsize:
                raise _bad(path, f"it is truncated ({count} vertices announced, {len(data) // dtype.itemsize} present)")
            table = np.frombuffer(data, dtype=dtype)
            columns = {name: table[name] for name in dtype.names}
    if not all(k in columns for k in "xyz"):
        raise _bad(path, "the vertices have no x, y, z")
    if count == 0:
        raise _bad(path, "it holds no points")
    stack = lambda keys: np.stack([columns[k] for k in keys], axis=1)
    points = stack("xyz").astype(np.float32)
    if not np.isfinite(points).all():
        raise _bad(path, "some coordinates are NaN or infinite")
    color_names = next((c for c in _COLOR_NAMES if all(n in columns for n in c)), None)
    colors = None if color_names is None else unit_colors(stack(color_names))
    normals = stack(("nx", "ny", "nz")).astype(np.float32) if all(n in columns for n in ("nx", "ny", "nz")) else None
    return {"points": points, "colors": colors, "normals": normals}


def unit_colors(colors: np.ndarray) -> np.ndarray:
    """(N,3) float32 in [0,1] from 8/16-bit integers or floats in [0,1] (or 0..255, told by the maximum)."""
    if colors.dtype.kind in "ui":
        return colors.astype(np.float32) / (65535.0 if colors.dtype.itemsize == 2 else 255.0)
    colors = colors.astype(np.float32)
    if colors.size and colors.max() > 1.0:
        colors = colors / 255.0
    return np.clip(colors, 0.0, 1.0)


def write_ply(path: str | os.PathLike, points, colors=None, normals=None, ascii: bool = False) -> None:
    """Write points (N,3) [normals (N,3) float] [colors (N,3) uint8, or floats in [0,1] stored as uchar]."""
    points = np.asarray(points, dtype=np.float32)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = [points[:, 0], points[:, 1], points[:, 2]]
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        cols += [normals[:, 0], normals[:, 1], normals[:, 2]]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8:
            colors = np.round(np.clip(colors, 0, 1) * 255).astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        cols += [colors[:, 0], colors[:, 1], colors[:, 2]]
    names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'ascii' if ascii else 'binary_little_endian'} 1.0", f"element vertex {len(points)}"]
    header += [f"property {names[t]} {n}" for n, t in fields] + ["end_header", ""]
    table = np.empty(len(points), dtype=fields)
    for (name, _), values in zip(fields, cols):
        table[name] = values
    with open(path, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        if ascii:
            f.writelines((" ".join(repr(v) for v in row) + "\n").encode("ascii") for row in table.tolist())
        else:
            f.write(table.tobytes())
