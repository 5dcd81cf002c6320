"""Atomic writes: a failed write leaves the old file and no temporary behind."""

import os
import stat

import pytest

from ws_engine.io import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    # the permissions of any ordinary new file (mkstemp alone would give 0600)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_leaves_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "memory.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".safetensors" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]


# images -----------------------------------------------------------------------------------------
import json  # noqa: E402
import math  # noqa: E402
import struct  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ws_engine.errors import ConfigError, InputFileError, OutputPathError, ShapeMismatchError  # noqa: E402
from ws_engine.io import (  # noqa: E402
    load_image,
    load_image_with_alpha,
    load_mesh,
    load_point_cloud,
    read_image_array,
    read_video,
    save_depth_png16,
    save_frame_grid,
    save_image,
    save_mesh,
    save_ply,
    save_video,
)


def _pixels(shape, dtype=np.uint8, seed=0):
    high = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def _chw(array):
    return torch.from_numpy(array).permute(2, 0, 1)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_8bit_modes_load_exactly(tmp_path, mode):
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    array = _pixels((7, 9, channels))
    path = tmp_path / f"{mode}.png"
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    rgb, alpha = load_image_with_alpha(path)
    expected = array[..., :3] if channels >= 3 else np.repeat(array[..., :1], 3, axis=2)
    assert rgb.dtype == torch.float32 and rgb.shape == (3, 7, 9)
    assert torch.equal(rgb, _chw(expected.astype(np.float32) / 255))
    if channels in (2, 4):
        assert torch.equal(alpha, torch.from_numpy(array[..., -1].astype(np.float32) / 255))
        assert torch.equal(load_image(path), rgb)  # alpha dropped
    else:
        assert alpha is None


def test_palette_image_loads_its_colours(tmp_path):
    palette_rgb = _pixels((16, 3), seed=1)
    indices = _pixels((6, 8), seed=2) % 16
    image = Image.fromarray(indices, "P")
    image.putpalette(palette_rgb.flatten().tolist())
    image.save(tmp_path / "p.png")
    assert torch.equal(load_image(tmp_path / "p.png"), _chw(palette_rgb[indices].astype(np.float32) / 255))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_png_loads_to_full_precision(tmp_path, channels):
    array = _pixels((5, 6, channels), np.uint16, seed=3)
    bgr = array[..., 0] if channels == 1 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(tmp_path / "deep.png"), bgr)
    rgb, alpha = load_image_with_alpha(tmp_path / "deep.png")
    expected = torch.from_numpy(array.astype(np.float64) / 65535)
    expected_rgb = expected[..., :3] if channels >= 3 else expected.expand(5, 6, 3)
    assert torch.allclose(rgb.double(), expected_rgb.permute(2, 0, 1), atol=0.5 / 65535, rtol=0)
    assert (alpha is None) == (channels != 4)
    # the native reader keeps the dtype and RGB(A) order
    native = read_image_array(tmp_path / "deep.png")
    assert native.dtype == np.uint16 and np.array_equal(native, array[..., 0] if channels == 1 else array)


def test_cmyk_and_exif_orientation(tmp_path):
    array = _pixels((4, 6, 3), seed=4)
    Image.fromarray(array).convert("CMYK").save(tmp_path / "cmyk.tif")
    expected = np.asarray(Image.open(tmp_path / "cmyk.tif").convert("RGB"))
    assert torch.equal(load_image(tmp_path / "cmyk.tif"), _chw(expected.astype(np.float32) / 255))

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise for display
    Image.fromarray(array).save(tmp_path / "turned.png", exif=exif)
    loaded = load_image(tmp_path / "turned.png")
    assert loaded.shape == (3, 6, 4)
    assert torch.equal(loaded, _chw(np.rot90(array, k=-1).astype(np.float32).copy() / 255))


def test_arrays_tensors_and_pil_in_every_layout():
    array = _pixels((5, 7, 3), seed=5)
    expected = _chw(array.astype(np.float32) / 255)
    chw = torch.from_numpy(array).permute(2, 0, 1)
    sources = [array, Image.fromarray(array), chw, chw.float() / 255, chw[None].float() / 255, torch.from_numpy(array).float() / 255,
               torch.from_numpy(array)[None].float() / 255, array.astype(np.float64) / 255, (array.astype(np.uint16) * 257)]  # fmt: skip
    for source in sources:
        assert torch.allclose(load_image(source), expected, atol=1e-6), type(source)
    gray = load_image(torch.from_numpy(array[..., 0]))
    assert gray.shape == (3, 5, 7) and torch.equal(gray[0], gray[2])
    assert load_image(array, size=(10, 3)).shape == (3, 10, 3)
    overshoot = chw.float() / 255 * 1.01 - 0.005  # within FLOAT_TOLERANCE: clamped
    assert overshoot.min() < 0 and overshoot.max() > 1
    assert torch.equal(load_image(overshoot), overshoot.clamp(0, 1))


@pytest.mark.parametrize(
    ("source", "error", "words"),
    [
        (torch.rand(3, 4, 4) * 255, ConfigError, "Divide"),
        (torch.full((3, 4, 4), float("nan")), ConfigError, "NaN"),
        (torch.rand(2, 3, 4, 4), ShapeMismatchError, "one image"),
        (np.zeros((4, 4, 3), np.int64), ConfigError, "uint8"),
        (np.zeros((0, 4, 3), np.uint8), ShapeMismatchError, "empty"),
        (42, ConfigError, "file path"),
    ],
)
def test_bad_image_values_are_explained(source, error, words):
    with pytest.raises(error, match=words):
        load_image(source)


def test_unreadable_image_files_are_input_file_errors(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_pixels((64, 64, 3))).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    cases = {"missing.png": "not found", "folder.png": "folder", "noise.png": "corrupt", "empty.png": "empty", "truncated.png": "corrupt"}
    for name, words in cases.items():
        with pytest.raises(InputFileError, match=words) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(InputFileError, match="corrupt"):
        read_image_array(tmp_path / "noise.png")


def test_read_image_array_float_tiff_and_numpy(tmp_path):
    depth = np.random.default_rng(6).random((5, 7)).astype(np.float32) * 10
    assert cv2.imwrite(str(tmp_path / "depth.tif"), depth)
    np.save(tmp_path / "depth.npy", depth)
    np.savez(tmp_path / "named.npz", other=np.zeros(3), depth=depth)
    np.savez(tmp_path / "first.npz", depth * 2)
    for name, expected in [("depth.tif", depth), ("depth.npy", depth), ("named.npz", depth), ("first.npz", depth * 2)]:
        array = read_image_array(tmp_path / name)
        assert array.dtype == np.float32 and np.array_equal(array, expected), name


def test_save_image_and_depth_png16_round_trip(tmp_path):
    image = torch.from_numpy(_pixels((3, 6, 5))).float() / 255
    save_image(tmp_path / "a.png", image)
    assert torch.equal(load_image(tmp_path / "a.png"), image)
    save_image(tmp_path / "a.jpg", image)
    assert load_image(tmp_path / "a.jpg").shape == (3, 6, 5)
    save_image(tmp_path / "gray.png", image[0])
    assert Image.open(tmp_path / "gray.png").mode == "L"
    with pytest.raises(OutputPathError, match=".png"):
        save_image(tmp_path / "a.bmp", image)

    depth = torch.rand(6, 5) * 4 + 0.5
    depth[0, 0] = 0
    save_depth_png16(tmp_path / "d.png", depth, max_depth=5.0)
    stored = read_image_array(tmp_path / "d.png")
    assert stored.dtype == np.uint16 and stored[0, 0] == 0
    assert np.allclose(stored / 65535 * 5.0, depth.numpy(), atol=5.0 / 65535)


def test_frame_grid_layout(tmp_path):
    video = torch.rand(5, 3, 10, 20)
    path = save_frame_grid(tmp_path / "grid.png", video)  # ceil(sqrt(5 * 10 / 20)) = 2 columns, 3 rows
    grid = load_image(path)
    assert grid.shape == (3, 3 * 10 + 2 * 2, 2 * 20 + 2)
    assert torch.allclose(grid[:, 12:22, 22:42], video[3], atol=0.5 / 255)  # frame 3: row 1, column 1
    assert torch.equal(grid[:, 24:, 22:], torch.ones(3, 10, 20))  # the empty sixth cell stays white
    wide = save_frame_grid(tmp_path / "wide.png", video, columns=5, pad=0, max_width=50)
    assert Image.open(wide).size == (50, 5)


# video ------------------------------------------------------------------------------------------
def _moving_gradient(frames, height, width):
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None]
    return torch.stack([torch.stack([(0.5 * x + 0.4 * y + 0.1 * t / frames), y.expand(height, width), x * y]) for t in range(frames)])


@pytest.mark.parametrize(("width", "height"), [(64, 48), (63, 47)])
def test_video_is_browser_ready_h264(tmp_path, width, height):
    import av

    video = _moving_gradient(12, height, width)
    path = save_video(tmp_path / "clip.mp4", video, fps=16)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    decoded, fps = read_video(path)
    assert decoded.shape == (12, 3, height + height % 2, width + width % 2) and fps == 16
    mse = float(((decoded[:, :, :height, :width] - video) ** 2).mean())
    assert -10 * math.log10(mse) > 30
    if width % 2:  # the padding column repeats the last one
        assert torch.allclose(decoded[..., -1], decoded[..., -2], atol=0.05)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first


def test_video_failures_leave_the_old_file(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old video")
    with pytest.raises(ConfigError, match="encoder refused"):  # libx264 opens the file, then rejects the size
        save_video(target, torch.zeros(1, 3, 2, 17000, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="NaN"):
        save_video(target, torch.full((2, 3, 8, 8), float("nan")))
    assert target.read_bytes() == b"old video"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputPathError, match="is a file"):
        save_video(tmp_path / "file" / "clip.mp4", torch.zeros(1, 3, 8, 8))
    with pytest.raises(OutputPathError, match=".mp4"):
        save_video(tmp_path / "clip.gif", torch.zeros(1, 3, 8, 8))
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(InputFileError, match="corrupt"):
        read_video(tmp_path / "noise.mp4")


# point clouds -----------------------------------------------------------------------------------
def test_ply_binary_round_trip_and_trimesh_agrees(tmp_path):
    import trimesh

    g = torch.Generator().manual_seed(0)
    points = torch.randn(100_000, 3, generator=g)
    colors = torch.rand(100_000, 3, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(100_000, 3, generator=g), dim=1)
    path = save_ply(tmp_path / "cloud.ply", points, colors, normals)
    cloud = load_point_cloud(path)
    quantized = (colors * 255).round() / 255
    assert torch.equal(cloud["points"], points) and torch.equal(cloud["normals"], normals)
    assert torch.allclose(cloud["colors"], quantized, atol=1e-6)
    other = trimesh.load(path)
    assert np.array_equal(np.asarray(other.vertices, dtype=np.float32), points.numpy())
    assert np.array_equal(other.colors[:, :3], (colors * 255).round().byte().numpy())
    assert len(path.read_bytes()) < 100_000 * 27 + 400  # binary: 27 bytes a point plus the header


def test_ascii_and_big_endian_ply(tmp_path):
    ascii_ply = tmp_path / "hand.ply"
    ascii_ply.write_text(
        "ply\nformat ascii 1.0\ncomment by hand\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\nproperty list uchar int vertex_indices\n"
        "end_header\n0 0 0 255 0 0\n1 0 0 0 1 0\n0 1 0.5 0 0 0\n3 0 1 2\n"
    )
    cloud = load_point_cloud(ascii_ply)
    assert torch.equal(cloud["points"], torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0.5]]))
    assert torch.allclose(cloud["colors"], torch.tensor([[1, 0, 0], [0, 1 / 255, 0], [0, 0, 0]]))  # uchar 1 is dark, not full
    assert cloud["normals"] is None

    table = np.array([(1.0, 2.0, 3.0, 0.25, 0.5, 1.0)], dtype=[(n, ">f8") for n in ("x", "y", "z", "red", "green", "blue")])
    header = "ply\nformat binary_big_endian 1.0\nelement vertex 1\n" + "".join(f"property double {n}\n" for n in table.dtype.names)
    (tmp_path / "big.ply").write_bytes((header + "end_header\n").encode() + table.tobytes())
    cloud = load_point_cloud(tmp_path / "big.ply")
    assert cloud["points"].tolist() == [[1, 2, 3]] and cloud["colors"].tolist() == [[0.25, 0.5, 1.0]]


def test_numpy_text_and_mesh_point_clouds(tmp_path):
    points = np.random.default_rng(7).random((50, 3)).astype(np.float32)
    rgb255 = np.random.default_rng(8).integers(0, 256, (50, 3)).astype(np.float32)
    np.save(tmp_path / "six.npy", np.concatenate([points, rgb255], axis=1))
    np.savez(tmp_path / "named.npz", points=points, colors=rgb255 / 255)
    np.savetxt(tmp_path / "cloud.xyz", points, header="x y z")
    for name in ("six.npy", "named.npz"):
        cloud = load_point_cloud(tmp_path / name)
        assert torch.equal(cloud["points"], torch.from_numpy(points))
        assert torch.allclose(cloud["colors"], torch.from_numpy(rgb255 / 255), atol=1e-6)
    text = load_point_cloud(tmp_path / "cloud.xyz")
    assert torch.allclose(text["points"], torch.from_numpy(points), atol=1e-6) and text["colors"] is None
    vertices, faces = torch.rand(4, 3), torch.tensor([[0, 1, 2], [0, 2, 3]])
    save_mesh(tmp_path / "m.glb", vertices, faces, vertex_colors=torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
    from_mesh = load_point_cloud(tmp_path / "m.glb")
    assert torch.allclose(from_mesh["points"], vertices) and from_mesh["colors"][1].tolist() == [0, 1, 0]


def test_bad_point_cloud_files(tmp_path):
    (tmp_path / "noise.ply").write_bytes(np.random.default_rng(0).bytes(300))
    save_ply(tmp_path / "cut.ply", torch.rand(100, 3))
    (tmp_path / "cut.ply").write_bytes((tmp_path / "cut.ply").read_bytes()[:-20])
    np.save(tmp_path / "wide.npy", np.zeros((5, 4)))
    cases = {"missing.ply": "not found", "noise.ply": "corrupt", "cut.ply": "truncated", "wide.npy": "x y z", "cloud.las": ".npz"}
    (tmp_path / "cloud.las").write_bytes(b"LASF")
    for name, words in cases.items():
        with pytest.raises(InputFileError, match=words):
            load_point_cloud(tmp_path / name)
    with pytest.raises(ShapeMismatchError):
        save_ply(tmp_path / "x.ply", torch.rand(5, 2))
    with pytest.raises(ShapeMismatchError, match=r"\(5,3\)"):
        save_ply(tmp_path / "x.ply", torch.rand(5, 3), colors=torch.rand(4, 3))


# meshes -----------------------------------------------------------------------------------------
def _tetrahedron():
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    colors = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.4, 0.6]])
    return vertices, faces, colors


def _glb_json(path):
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20 : 20 + length])


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_mesh_round_trip_keeps_vertex_colours(tmp_path, suffix):
    import trimesh

    vertices, faces, colors = _tetrahedron()
    path = save_mesh(tmp_path / f"mesh{suffix}", vertices, faces, vertex_colors=colors)
    mesh = load_mesh(path)
    assert torch.allclose(mesh["vertices"], vertices) and torch.equal(mesh["faces"], faces)
    quantized = (colors * 255).round() / 255
    # GLB stores linear colours in 8 bits (glTF's COLOR_0), so dark values come back within a few steps
    assert torch.allclose(mesh["vertex_colors"], quantized, atol=7 / 255 if suffix == ".glb" else 1e-6)
    other = trimesh.load(path, force="mesh", process=False)
    c = colors.double()
    stored = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) if suffix == ".glb" else c
    assert np.array_equal(other.visual.vertex_colors[:, :3], (stored * 255).round().byte().numpy())
    if suffix == ".glb":
        attributes = _glb_json(path)["meshes"][0]["primitives"][0]["attributes"]
        assert "COLOR_0" in attributes
    if suffix == ".obj":
        assert "v 1.00000000 0.00000000 0.00000000 0.00000000 1.00000000 0.00000000" in path.read_text()


def test_mesh_errors(tmp_path):
    vertices, faces, _ = _tetrahedron()
    with pytest.raises(OutputPathError, match=r"\.glb, \.obj, \.ply"):
        save_mesh(tmp_path / "mesh.fbx", vertices, faces)
    with pytest.raises(ShapeMismatchError, match="0..3"):
        save_mesh(tmp_path / "mesh.glb", vertices, faces + 1)
    with pytest.raises(ShapeMismatchError, match="integer"):
        save_mesh(tmp_path / "mesh.glb", vertices, faces.float())
    save_ply(tmp_path / "points.ply", vertices)
    with pytest.raises(InputFileError, match="load_point_cloud"):
        load_mesh(tmp_path / "points.ply")
    (tmp_path / "noise.glb").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputFileError, match="corrupt"):
        load_mesh(tmp_path / "noise.glb")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
