"""Point clouds and meshes in and out: binary PLY through numpy, GLB/OBJ/PLY meshes through trimesh.

Import these from :mod:`ws_engine.io`. trimesh is imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, InputFileError, ShapeMismatchError, WorldStereoError
from .io_image import _all_finite, _existing_file, _output_path, _read_numpy

__all__ = ["POINT_CLOUD_SUFFIXES", "MESH_SUFFIXES", "save_ply", "load_point_cloud", "save_mesh", "load_mesh"]

MESH_SUFFIXES = (".glb", ".obj", ".ply")
GLTF_SUFFIXES = (".glb", ".gltf")
MESH_INPUT_SUFFIXES = (".glb", ".gltf", ".obj", ".off", ".stl")
POINT_CLOUD_SUFFIXES = (".ply", ".npy", ".npz", ".xyz", ".txt", ".csv") + MESH_INPUT_SUFFIXES

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


# point clouds -----------------------------------------------------------------------------------
def save_ply(path: str | os.PathLike, points, colors=None, normals=None) -> Path:
    """Write a point cloud as binary little-endian PLY and return the path.

    ``points`` (N,3) as float x,y,z; ``normals`` (N,3) as float nx,ny,nz; ``colors`` (N,3) in [0,1]
    (or uint8) as uchar red,green,blue.
    """
    path = _output_path(path, (".ply",), "a PLY point cloud")
    xyz = _float_rows(points, "points")
    if len(xyz) == 0:
        raise ShapeMismatchError("points is empty; a PLY file needs at least one point.")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if normals is not None:
        n = _float_rows(normals, "normals", len(xyz))
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        columns.update(nx=n[:, 0], ny=n[:, 1], nz=n[:, 2])
    if colors is not None:
        c = _colors_uint8(colors, len(xyz))
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        columns.update(red=c[:, 0], green=c[:, 1], blue=c[:, 2])
    table = np.empty(len(xyz), dtype=fields)
    for name, values in columns.items():
        table[name] = values
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by ws_engine", f"element vertex {len(xyz)}"]
    header += [f"property {ply_types[t]} {name}" for name, t in fields] + ["end_header", ""]
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(table.tobytes())
    return path


def load_point_cloud(path: str | os.PathLike) -> dict:
    """Read a point cloud: ``{"points": (N,3) float32, "colors": (N,3) in [0,1] | None, "normals": (N,3) | None}``.

    Formats: PLY (binary or ascii; uchar, ushort or float colours), ``.npy``/``.npz`` ((N,3) xyz or
    (N,6) xyz+rgb, rgb in [0,1] or 0..255; an ``.npz`` may hold ``points``/``colors``/``normals``),
    ``.xyz``/``.txt``/``.csv`` (columns x y z [r g b]) and the vertices of a mesh (GLB, glTF, OBJ, OFF, STL).
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_CLOUD_SUFFIXES:
        raise InputFileError(f"Cannot read a point cloud from {str(path)!r}: use one of {', '.join(POINT_CLOUD_SUFFIXES)}.")
    if suffix == ".ply":
        cloud = _read_ply_vertices(path)
    elif suffix in (".npy", ".npz"):
        cloud = _read_numpy_cloud(path)
    elif suffix in (".xyz", ".txt", ".csv"):
        cloud = _read_text_cloud(path)
    else:
        cloud = _trimesh_cloud(path, "a point cloud or mesh")
    return _cloud_tensors(cloud, path)


def _cloud_tensors(cloud: dict, path: Path) -> dict:
    """Check a {points, colors, normals} dict of arrays and return float32 tensors (colors in [0,1])."""
    points = cloud["points"]
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise InputFileError(f"{str(path)!r} holds no points (found an array of shape {points.shape}); export the point cloud again.")
    out = {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))}
    for key in ("colors", "normals"):
        values = cloud.get(key)
        if key == "colors" and values is not None and values.ndim == 2 and values.shape[1] == 4:
            values = values[:, :3]  # RGBA: alpha dropped
        if values is not None and values.shape != points.shape:
            raise InputFileError(f"{str(path)!r} has {len(points)} points but {key} of shape {values.shape}; export the file again.")
        if key == "colors" and values is not None:
            values = _unit_colors(values)
        out[key] = None if values is None else torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return out


def _unit_colors(colors: np.ndarray) -> np.ndarray:
    """Colours in [0,1] from 8/16-bit integers, or floats in [0,1] or 0..255 (told apart by the maximum)."""
    if colors.dtype.kind in "ui":
        return colors.astype(np.float32) / (65535.0 if colors.dtype.itemsize == 2 else 255.0)
    colors = colors.astype(np.float32)
    return colors / 255.0 if colors.size and colors.max() > 1.0 else colors


def _read_ply_vertices(path: Path) -> dict:
    """x,y,z and, if present, colours and normals of the ``vertex`` element of a PLY file."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise _unreadable(path, "PLY")
        fmt, elements = None, []  # elements: [name, count, [(property, dtype or None for lists)]]
        for raw in f:
            words = raw.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format" and len(words) >= 2:
                fmt = words[1]
            elif words[0] == "element" and len(words) == 3:
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property" and elements and len(words) >= 3:
                elements[-1][2].append((words[-1], None if words[1] == "list" else _PLY_TYPES.get(words[2 if words[1] == "list" else 1])))
        else:
            raise _unreadable(path, "PLY (no end_header line)")
        names = [e[0] for e in elements]
        if "vertex" not in names or fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise _unreadable(path, "PLY (no vertex element or unknown format)")
        index = names.index("vertex")
        _, count, props = elements[index]
        if any(t is None for e in elements[: index + 1] for _, t in e[2]):
            return _trimesh_cloud(path, "PLY")  # list or unknown properties up to the vertices: let trimesh parse it
        if fmt == "ascii":
            skip = sum(e[1] for e in elements[:index])
            lines = f.read().decode("ascii", "replace").splitlines()[skip : skip + count]
            table = np.loadtxt(lines, dtype=np.float64, ndmin=2) if lines else np.empty((0, len(props)))
            if table.shape != (count, len(props)):
                raise _unreadable(path, f"PLY (expected {count} vertex rows of {len(props)} values)")
            columns = {name: table[:, i].astype(t) for i, (name, t) in enumerate(props)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            skip = sum(e[1] * sum(np.dtype(t).itemsize for _, t in e[2]) for e in elements[:index])
            dtype = np.dtype([(name, order + t) for name, t in props])
            f.seek(f.tell() + skip)
            data = f.read(count * dtype.itemsize)
            if len(data) < count * dtype.itemsize:
                raise _unreadable(path, f"PLY (truncated: {count} vertices announced, {len(data) // dtype.itemsize} present)")
            table = np.frombuffer(data, dtype=dtype)
            columns = {name: table[name] for name in dtype.names}
    return _ply_columns(columns, path)


def _trimesh_cloud(path: Path, what: str) -> dict:
    """The vertices and vertex colours of any file trimesh reads, as a cloud dict."""
    geometry = _load_trimesh(path, what)
    return {"points": np.asarray(geometry.vertices), "colors": _trimesh_colors(geometry), "normals": None}


def _ply_columns(columns: dict, path: Path) -> dict:
    if not all(k in columns for k in "xyz"):
        raise _unreadable(path, "PLY (vertices without x, y, z)")
    stack = lambda names: np.stack([columns[n] for n in names], axis=1)  # noqa: E731
    color_names = next((names for names in _COLOR_NAMES if all(n in columns for n in names)), None)
    colors = None if color_names is None else stack(color_names)
    normals = stack(("nx", "ny", "nz")) if all(n in columns for n in ("nx", "ny", "nz")) else None
    return {"points": stack("xyz"), "colors": colors, "normals": normals}


def _read_numpy_cloud(path: Path) -> dict:
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                if "points" in data.files:
                    return {k: (data[k] if k in data.files else None) for k in ("points", "colors", "normals")}
        except (ValueError, OSError, EOFError) as exc:
            raise _unreadable(path, "a numpy archive (.npz written by numpy.savez)") from exc
    return _split_columns(_read_numpy(path), path)


def _read_text_cloud(path: Path) -> dict:
    try:
        table = np.loadtxt(path, comments=("#", "//"), delimiter="," if path.suffix.lower() == ".csv" else None, ndmin=2)
    except ValueError as exc:
        raise _unreadable(path, "a text point cloud (rows of x y z [r g b] numbers)") from exc
    return _split_columns(table, path)


def _split_columns(table: np.ndarray, path: Path) -> dict:
    """(N,3) xyz or (N,6) xyz+rgb rows into a cloud dict."""
    if table.ndim != 2 or table.shape[1] not in (3, 6) or not np.issubdtype(table.dtype, np.number):
        raise InputFileError(
            f"{str(path)!r} holds an array of shape {table.shape} ({table.dtype}); a point cloud has rows of "
            "x y z (N,3) or x y z r g b (N,6)."
        )
    return {"points": table[:, :3], "colors": table[:, 3:] if table.shape[1] == 6 else None, "normals": None}


# meshes -----------------------------------------------------------------------------------------
def save_mesh(path: str | os.PathLike, vertices, faces, vertex_colors=None, vertex_normals=None) -> Path:
    """Write a triangle mesh as GLB, OBJ or PLY (by suffix) through trimesh and return the path.

    ``vertices`` (V,3), ``faces`` (F,3) integer indices, ``vertex_colors`` (V,3) in [0,1] (or uint8)
    stored as GLB ``COLOR_0``, OBJ ``v x y z r g b`` or PLY red/green/blue; ``vertex_normals`` (V,3).
    ``faces=None`` writes the vertices as a point cloud (a GLB ``POINTS`` primitive: what viewers
    that read only glTF, such as ComfyUI's 3D preview, show). OBJ and PLY keep the engine's
    coordinates; GLB follows glTF (+y up, the camera looking along -z): (x, -y, -z) of the
    engine's OpenCV world, so viewers show the scene upright; its vertex colours are linear, as glTF's
    COLOR_0 is defined (8-bit), where PLY and OBJ keep the colours as given (sRGB). Readers here convert back.
    """
    import trimesh

    path = _output_path(path, MESH_SUFFIXES, "a mesh")
    gltf = path.suffix.lower() in GLTF_SUFFIXES
    v = _gltf_axes(_float_rows(vertices, "vertices"), gltf)
    colors = None if vertex_colors is None else _colors_uint8(vertex_colors, len(v))
    if colors is not None and gltf:
        colors = _gltf_colors(colors, to_linear=True)
    if faces is None:
        geometry = trimesh.PointCloud(v, colors=colors)
    else:
        f = torch.as_tensor(faces).detach().cpu()
        if f.dim() != 2 or f.shape[1] != 3 or len(f) == 0 or f.is_floating_point() or f.dtype == torch.bool:
            raise ShapeMismatchError(f"faces must be a non-empty integer array of shape (F,3), got {tuple(f.shape)} ({f.dtype}).")
        if int(f.min()) < 0 or int(f.max()) >= len(v):
            raise ShapeMismatchError(f"faces index vertices 0..{len(v) - 1} but hold values in {int(f.min())}..{int(f.max())}.")
        normals = None if vertex_normals is None else _gltf_axes(_float_rows(vertex_normals, "vertex_normals", len(v)), gltf)
        geometry = trimesh.Trimesh(vertices=v, faces=f.long().numpy(), vertex_normals=normals, vertex_colors=colors, process=False)
    from .io import atomic_path

    with atomic_path(path) as tmp:
        geometry.export(tmp, file_type=path.suffix.lower()[1:])
    return path


def load_mesh(path: str | os.PathLike) -> dict:
    """Read a triangle mesh (scenes merged): ``{"vertices": (V,3) float32, "faces": (F,3) long, "vertex_colors": (V,3) | None}``."""
    path = _existing_file(path)
    if path.suffix.lower() not in MESH_SUFFIXES + MESH_INPUT_SUFFIXES:
        raise InputFileError(f"Cannot read a mesh from {str(path)!r}: use one of {', '.join(sorted(set(MESH_SUFFIXES + MESH_INPUT_SUFFIXES)))}.")
    geometry = _load_trimesh(path, "a mesh")
    faces = np.asarray(getattr(geometry, "faces", np.empty((0, 3))))
    if len(faces) == 0:
        raise InputFileError(f"{str(path)!r} has no faces (a point cloud?); read it with load_point_cloud instead.")
    colors = _trimesh_colors(geometry)
    return {
        "vertices": torch.from_numpy(np.ascontiguousarray(geometry.vertices, dtype=np.float32)),
        "faces": torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)),
        "vertex_colors": None if colors is None else torch.from_numpy(np.ascontiguousarray(colors[:, :3], dtype=np.float32) / 255.0),
    }


def _load_trimesh(path: Path, what: str):
    """A trimesh Trimesh or PointCloud from any file trimesh reads; scenes are merged (transforms applied)."""
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
        if isinstance(loaded, trimesh.Scene):
            if not loaded.geometry:
                raise InputFileError(f"{str(path)!r} holds an empty scene; export the object again.")
            loaded = loaded.to_geometry()
    except WorldStereoError:
        raise
    except Exception as exc:  # trimesh raises many types for malformed files
        raise _unreadable(path, what) from exc
    if not isinstance(loaded, (trimesh.Trimesh, trimesh.PointCloud)) or len(loaded.vertices) == 0:
        raise InputFileError(f"{str(path)!r} holds no vertices that can be read as {what}; export it again as GLB, OBJ or PLY.")
    if path.suffix.lower() in GLTF_SUFFIXES:
        loaded.vertices = _gltf_axes(np.asarray(loaded.vertices), True)
        colors = _trimesh_colors(loaded)
        if colors is not None:
            rgba = np.concatenate([_gltf_colors(colors[:, :3], to_linear=False), colors[:, 3:]], axis=1)
            if isinstance(loaded, trimesh.PointCloud):
                loaded.colors = rgba
            else:
                loaded.visual.vertex_colors = rgba
    return loaded


def _gltf_colors(rgb: np.ndarray, to_linear: bool) -> np.ndarray:
    """uint8 colours (N,3) sRGB -> linear (``to_linear``) or back: glTF's COLOR_0 holds linear values."""
    c = rgb.astype(np.float64) / 255.0
    if to_linear:
        c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    else:
        c = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(np.clip(c, 0, None), 1 / 2.4) - 0.055)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)


def _gltf_axes(rows: np.ndarray, convert: bool) -> np.ndarray:
    """glTF (+y up, -z forward) <-> the engine's OpenCV axes (y down, z forward): (x, -y, -z), its own inverse."""
    return rows * np.array([1.0, -1.0, -1.0], dtype=rows.dtype) if convert else rows


def _trimesh_colors(geometry) -> np.ndarray | None:
    """Per-vertex RGBA uint8 (V,4) of a trimesh geometry, or None when it has no colours."""
    import trimesh

    if isinstance(geometry, trimesh.PointCloud):
        colors = np.asarray(geometry.colors)
        return colors if len(colors) == len(geometry.vertices) else None
    visual = geometry.visual
    if visual.kind == "texture":
        visual = visual.to_color()  # samples the texture at each vertex's UV
    return np.asarray(visual.vertex_colors) if visual.kind in ("vertex", "face") else None


# shared checks ----------------------------------------------------------------------------------
def _float_rows(values, name: str, rows: int | None = None) -> np.ndarray:
    """(N,3) finite float32 numpy from a tensor or array; ``rows`` checks N."""
    array = torch.as_tensor(values).detach().cpu().float()
    if array.dim() != 2 or array.shape[1] != 3 or (rows is not None and len(array) != rows):
        expected = "(N,3)" if rows is None else f"({rows},3)"
        raise ShapeMismatchError(f"{name} must have shape {expected}, got {tuple(array.shape)}.")
    if not _all_finite(array):
        raise ConfigError(f"{name} contains NaN or infinite values; drop those rows first (e.g. x[torch.isfinite(x).all(1)]).")
    return array.numpy()


def _colors_uint8(colors, rows: int) -> np.ndarray:
    """(N,3) uint8 from colours (N,3|4) in [0,1] (or uint8); alpha dropped."""
    c = torch.as_tensor(colors).detach().cpu()
    if c.dim() != 2 or c.shape[1] not in (3, 4) or len(c) != rows:
        raise ShapeMismatchError(f"colors must have shape ({rows},3) in [0,1], got {tuple(c.shape)}.")
    if c.dtype != torch.uint8:
        c = c.float()
        if not _all_finite(c):
            raise ConfigError("colors contain NaN or infinite values; replace them (e.g. torch.nan_to_num) first.")
        c = c.clamp(0, 1).mul(255).round().to(torch.uint8)
    return c[:, :3].contiguous().numpy()


def _unreadable(path: Path, what: str) -> InputFileError:
    return InputFileError(f"Cannot read {str(path)!r} as {what}: the file is corrupt or in another format. Export it again (PLY, GLB or OBJ).")

