"""Trajectory files: round trips, cross-format agreement, the official examples, conventions, bad input."""

import copy
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ws_engine.cameras import CameraParameters, CameraTrajectory
from ws_engine.errors import (
    ConfigError,
    InvalidCameraError,
    TrajectoryFormatError,
    UnknownNameError,
    WorldStereoError,
)
from ws_engine.rotations import axis_angle_to_matrix
from ws_engine.trajectory_io import (
    JSON_FORMATS,
    TRAJECTORY_FORMATS,
    detect_format,
    load_trajectory,
    save_trajectory,
    trajectory_from_dict,
    trajectory_to_dict,
)

W, H = 640, 360
FILE_NAMES = {
    "worldstereo": "trajectory.json",
    "camera_json": "camera.json",
    "transforms_json": "transforms.json",
    "re10k": "trajectory.txt",
    "colmap": "sparse",
}


def make_trajectory() -> CameraTrajectory:
    """An orbit then a zoom (K varies), from a tilted start, with fx != fy and an off-centre principal point."""
    start = torch.eye(4)
    start[:3, :3] = axis_angle_to_matrix(torch.tensor([0.3, 1.0, -0.2]), torch.tensor(0.7))
    start[:3, 3] = torch.tensor([1.5, -0.4, 2.0])
    K = torch.tensor([[500.0, 0.0, 300.3], [0.0, 480.0, 170.8], [0.0, 0.0, 1.0]])
    orbit = CameraTrajectory.orbit_left(40.0, 12, K=K, width=W, height=H, fps=24.0, start=start)
    zoom = CameraTrajectory.zoom_in(1.7, 6, K=K, width=W, height=H, fps=24.0, start=orbit.c2w[-1])
    return orbit.concat(zoom)


def assert_same(a: CameraTrajectory, b: CameraTrajectory, atol: float = 1e-5) -> None:
    assert (a.width, a.height, a.model, len(a)) == (b.width, b.height, b.model, len(b))
    assert a.fps == pytest.approx(b.fps, abs=1e-5)
    torch.testing.assert_close(a.c2w.double(), b.c2w.double(), atol=atol, rtol=0)
    torch.testing.assert_close(a.K.double(), b.K.double(), atol=atol, rtol=0)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def traj():
    t = make_trajectory()
    assert not torch.equal(t.K[0], t.K[-1]) and len(set(t.positions[:, 0].tolist())) > 5  # non-trivial
    return t


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", TRAJECTORY_FORMATS)
def test_every_format_round_trips_and_is_detected(tmp_path, traj, fmt):
    path = save_trajectory(traj, tmp_path / FILE_NAMES[fmt], fmt)
    assert path.exists() and detect_format(path) == fmt
    assert_same(load_trajectory(path, relative_to_first=False), traj)
    assert_same(load_trajectory(str(path), format=fmt, relative_to_first=False), traj)
    # by default only camera.json is rebased on its first camera (frame 0 = the condition image)
    assert_same(load_trajectory(path), traj.relative_to_first() if fmt == "camera_json" else traj)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_json_formats_round_trip_as_dicts_and_pasted_text(traj, fmt):
    d = trajectory_to_dict(traj, fmt)
    assert_same(trajectory_from_dict(d, relative_to_first=False), traj)
    assert_same(trajectory_from_dict(json.dumps(d), format=fmt, relative_to_first=False), traj)
    pasted = load_trajectory("  \n" + json.dumps(d, indent=1), relative_to_first=False)  # a ComfyUI text box
    assert_same(pasted, traj)


def test_cross_format_conversions_agree(tmp_path, traj):
    path = save_trajectory(traj, tmp_path / "camera.json", "camera_json", meta={"motion_list": ["orbit", "zoom"]})
    current, meta = load_trajectory(path, return_meta=True, relative_to_first=False)
    for fmt in ("worldstereo", "transforms_json", "colmap", "re10k"):
        path = save_trajectory(current, tmp_path / FILE_NAMES[fmt], fmt, meta=meta)
        current, new_meta = load_trajectory(path, return_meta=True)
        assert_same(current, traj)
        meta = {**meta, **new_meta}
    assert meta["motion_list"] == ["orbit", "zoom"]  # camera.json -> worldstereo keeps it in "meta"
    assert meta["frame_names"] == [f"images/frame_{i:05d}.png" for i in range(len(traj))]  # transforms -> colmap


def test_meta_round_trips_where_the_format_holds_it(tmp_path, traj):
    names = [f"shot_{i}.jpg" for i in range(len(traj))]
    for fmt, meta in [
        ("camera_json", {"motion_list": ["right-1.0"]}),
        ("worldstereo", {"motion_list": ["right-1.0"], "source": "blender", "frame_names": names}),
        ("transforms_json", {"frame_names": names}),
        ("colmap", {"frame_names": names}),
    ]:
        path = save_trajectory(traj, tmp_path / FILE_NAMES[fmt], fmt, meta=meta)
        _, loaded = load_trajectory(path, return_meta=True, relative_to_first=False)
        assert loaded == meta, fmt


def test_worldstereo_writes_a_shared_K_once_and_reads_either_layout(traj):
    static = CameraTrajectory.right(1.0, 5, width=W, height=H)
    d = trajectory_to_dict(static)
    assert "K" in d and all(set(f) == {"c2w"} for f in d["frames"])
    d_varying = trajectory_to_dict(traj)
    assert "K" not in d_varying and all(set(f) == {"c2w", "K"} for f in d_varying["frames"])
    mixed = copy.deepcopy(d)
    mixed["frames"][2]["K"] = [[400.0, 0, 100.0], [0, 400.0, 90.0], [0, 0, 1]]  # a frame overrides the shared K
    loaded = trajectory_from_dict(mixed)
    assert loaded.K[2, 0, 0] == 400.0 and loaded.K[1, 0, 0] == static.K[1, 0, 0]


def test_equirectangular_round_trips_where_a_format_can_hold_it(tmp_path):
    pano = CameraTrajectory.forward(1.0, 4, width=1024, height=512, K=None)
    pano = CameraTrajectory(CameraParameters.equirectangular(1024, 512, pano.c2w), fps=10)
    for fmt in ("worldstereo", "transforms_json"):
        assert_same(load_trajectory(save_trajectory(pano, tmp_path / FILE_NAMES[fmt], fmt)), pano)
    for fmt in ("camera_json", "re10k", "colmap"):
        with pytest.raises(ConfigError, match="pinhole cameras only"):
            save_trajectory(pano, tmp_path / FILE_NAMES[fmt], fmt)


# --------------------------------------------------------------------------------------------
# conventions
# --------------------------------------------------------------------------------------------


def test_external_formats_put_pixel_centres_at_plus_half(tmp_path):
    centred = CameraTrajectory.static(2, width=W, height=H)  # engine: cx = (W-1)/2
    assert float(centred.K[0, 0, 2]) == (W - 1) / 2
    d = trajectory_to_dict(centred, "camera_json")
    assert d["intrinsic"][0][0][2] == W / 2 and d["intrinsic"][0][1][2] == H / 2
    t = trajectory_to_dict(centred, "transforms_json")
    assert (t["cx"], t["cy"]) == (W / 2, H / 2)
    cameras = (save_trajectory(centred, tmp_path / "sparse", "colmap") / "cameras.txt").read_text()
    assert cameras.splitlines()[-1].split()[-2:] == [repr(W / 2), repr(H / 2)]
    row = save_trajectory(centred, tmp_path / "t.txt", "re10k").read_text().splitlines()[1].split()
    assert (float(row[3]), float(row[4])) == (0.5, 0.5)
    assert trajectory_to_dict(centred)["K"][0][2] == (W - 1) / 2  # own format: engine convention


def test_camera_json_stores_world_to_camera():
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    d = trajectory_to_dict(CameraTrajectory.from_poses(c2w[None], width=W, height=H), "camera_json")
    assert d["extrinsic"][0][0][3] == -1.0 and d["extrinsic"][0][2][3] == -3.0


def test_nerfstudio_axis_flip():
    # An OpenGL camera at (0,0,5) with the identity rotation looks down world -z (it sees the origin)
    transform = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 5.0], [0, 0, 0, 1.0]]
    d = {"camera_model": "OPENCV", "fl_x": 500.0, "fl_y": 500.0, "cx": 320.0, "cy": 180.0, "w": W, "h": H,
         "frames": [{"file_path": "a.png", "transform_matrix": transform}]}  # fmt: skip
    cam = trajectory_from_dict(d)
    c2w = cam.c2w[0].double()
    assert torch.equal(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))  # OpenCV +z = world -z
    assert torch.equal(c2w[:3, 1], torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))  # image down = world -y
    assert torch.equal(c2w[:3, 3], torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    origin = cam.w2c[0].double() @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    uvw = cam.K[0].double() @ origin[:3]
    assert origin[2] == 5.0 and torch.allclose(uvw[:2] / uvw[2], torch.tensor([319.5, 179.5], dtype=torch.float64))
    # and back: the engine's identity camera is transform_matrix diag(1, -1, -1, 1)
    back = trajectory_to_dict(CameraTrajectory.static(1, width=W, height=H), "transforms_json")
    assert back["frames"][0]["transform_matrix"] == np.diag([1.0, -1.0, -1.0, 1.0]).tolist()


def test_transforms_json_writes_per_frame_intrinsics_only_when_they_vary(traj):
    static = trajectory_to_dict(CameraTrajectory.right(1.0, 3, width=W, height=H), "transforms_json")
    assert all(set(f) == {"file_path", "transform_matrix"} for f in static["frames"])
    varying = trajectory_to_dict(traj, "transforms_json")
    assert all({"fl_x", "fl_y", "cx", "cy"} <= set(f) for f in varying["frames"])
    assert varying["frames"][-1]["fl_x"] == pytest.approx(500.0 * 1.7, rel=1e-6)


def test_re10k_reads_real_layout_without_header():
    """A RealEstate10K file: URL line, normalised intrinsics, microsecond timestamps at 30 fps."""
    rows = [f"{t} 0.9 1.6 0.5 0.5 0 0 1 0 0 {0.1 * i} 0 1 0 0 0 0 1 0" for i, t in enumerate([0, 33333, 66667, 100000])]
    text = "https://www.youtube.com/watch?v=abc\n" + "\n".join(rows) + "\n"
    traj = load_trajectory(text, width=W, height=H)
    assert traj.fps == pytest.approx(30.0, rel=1e-6) and len(traj) == 4
    assert float(traj.K[0, 0, 0]) == pytest.approx(0.9 * W) and float(traj.K[0, 1, 2]) == pytest.approx(H / 2 - 0.5)
    assert torch.allclose(traj.positions[:, 0], -0.1 * torch.arange(4.0))  # w2c translation t -> centre -R^T t
    with pytest.raises(TrajectoryFormatError, match="width= and height="):
        load_trajectory(text)


def test_colmap_reads_other_models_orders_by_name_and_accepts_any_path(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write(folder / "cameras.txt", "# comment\n1 SIMPLE_PINHOLE 640 360 500 320 180\n2 OPENCV 640 360 510 520 300 170 0.1 0 0 0\n")
    write(folder / "images.txt", "\n".join([
        "# header",
        "1 1 0 0 0 0 0 1 2 frame_10.png", "10.0 20.0 -1 11.5 4.0 7",  # a 2D points line
        "2 1 0 0 0 0 0 2 1 frame_2.png", "",
        "3 1 0 0 0 0 0 3 1 frame_1.png",  # points line left out by some writers
        "",
    ]))  # fmt: skip
    for path in (folder, folder / "cameras.txt", folder / "images.txt", tmp_path):  # tmp_path: not a model
        if path == tmp_path:
            with pytest.raises(TrajectoryFormatError, match="without cameras.txt"):
                load_trajectory(path)
            continue
        with pytest.warns(UserWarning, match="distortion of OPENCV"):
            traj, meta = load_trajectory(path, return_meta=True)
        assert meta["frame_names"] == ["frame_1.png", "frame_2.png", "frame_10.png"]
        assert torch.allclose(traj.positions[:, 2], torch.tensor([-3.0, -2.0, -1.0]))
        assert traj.K[0].tolist() == [[500.0, 0.0, 319.5], [0.0, 500.0, 179.5], [0.0, 0.0, 1.0]]
        assert traj.K[2].tolist() == [[510.0, 0.0, 299.5], [0.0, 520.0, 169.5], [0.0, 0.0, 1.0]]
        assert traj.fps == 16.0


def test_stored_size_wins_over_arguments_and_arguments_fill_gaps(traj):
    d = trajectory_to_dict(traj, "camera_json")
    with pytest.warns(UserWarning, match="stores width=640"):
        assert load_trajectory(d, width=800, height=H).width == W
    del d["width"], d["height"], d["fps"]
    loaded = load_trajectory(d, width=700, height=400, fps=30)
    assert (loaded.width, loaded.height, loaded.fps) == (700, 400, 30.0)
    inferred = load_trajectory(d)  # from 2 * (cx, cy) of frame 0 in the file
    assert (inferred.width, inferred.height, inferred.fps) == (round(2 * 300.8), round(2 * 171.3), 16.0)


def test_failed_save_leaves_the_previous_file(tmp_path, traj):
    path = save_trajectory(traj, tmp_path / "t.json")
    before = path.read_text()
    with pytest.raises(ConfigError, match="JSON values"):
        save_trajectory(traj, path, meta={"handle": object()})
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.json"]


# --------------------------------------------------------------------------------------------
# the official examples (../shared)
# --------------------------------------------------------------------------------------------


def yaw_pitch(forward: torch.Tensor) -> tuple[float, float]:
    """Degrees: yaw to +x (right) from +z, pitch up (-y is up in OpenCV)."""
    x, y, z = forward.double().tolist()
    return math.degrees(math.atan2(x, z)), math.degrees(math.asin(-y))


def motion_angles(token: str) -> tuple[float, float] | None:
    """(phi, theta) of a motion like 'rotation_right-phi53.47-theta0', None for a pure translation."""
    m = re.search(r"phi(-?[\d.]+)(?:-theta(-?[\d.]+))?", token)
    return (float(m.group(1)), float(m.group(2) or 0.0)) if m else None


def test_examples_load_with_their_true_size(examples):
    for scene in examples:
        raw = json.loads((scene / "camera.json").read_text())
        traj, meta = load_trajectory(scene / "camera.json", return_meta=True)
        with Image.open(scene / "image.png") as image:
            width, height = image.size
        assert len(traj) == 81 and (traj.width, traj.height) == (width, height), scene.name
        assert meta["motion_list"] == raw["motion_list"]
        # frame 0 loads at the identity (it is the condition image's camera); the file's
        # extrinsic[0] is [I | (0, 0, d)]: its world origin is the orbit pivot d ahead
        d = raw["extrinsic"][0][2][3]
        assert torch.equal(traj.c2w[0], torch.eye(4))
        assert np.allclose(meta["world_from_first"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -d], [0, 0, 0, 1]])
        kept = load_trajectory(scene / "camera.json", relative_to_first=False)
        assert d > 0 and torch.allclose(kept.positions[0], torch.tensor([0.0, 0.0, -d]))
        assert torch.allclose(kept.relative_to_first().c2w, traj.c2w, atol=1e-5)
        assert float(traj.K[0, 0, 2]) == width / 2 - 0.5 and float(traj.K[0, 1, 2]) == height / 2 - 0.5


def test_examples_first_motion_matches_the_loaded_poses(examples):
    """Frames 0..40 are the first motion: yaw/pitch of camera 40 equal its phi/theta, else no rotation."""
    for scene in examples:
        traj, meta = load_trajectory(scene / "camera.json", return_meta=True)
        angles = motion_angles(meta["motion_list"][0])
        if angles is None:
            assert torch.allclose(traj.c2w[40, :3, :3], torch.eye(3), atol=1e-5), scene.name
        else:
            assert yaw_pitch(traj.c2w[40, :3, 2]) == pytest.approx(angles, abs=1e-3), scene.name


def test_city_example_turns_right_then_trucks_right(examples):
    scene = next((s for s in examples if s.name == "photorealistic-outdoor-city-062"), None)
    if scene is None:
        pytest.skip("photorealistic-outdoor-city-062 not among the examples")
    traj, meta = load_trajectory(scene / "camera.json", return_meta=True)
    assert meta["motion_list"][1].startswith("right-")
    assert yaw_pitch(traj.c2w[40, :3, 2])[0] == pytest.approx(53.47, abs=0.01)  # turned right
    c2w = traj.c2w.double()
    assert torch.allclose(c2w[40:, :3, :3], c2w[40, :3, :3].expand(41, 3, 3), atol=1e-6)  # then no rotation
    move = c2w[40, :3, :3].T @ (c2w[80, :3, 3] - c2w[40, :3, 3])  # in camera-40 coordinates
    assert move[0] > 3.0 and abs(move[1]) < 1e-4 and move[0] > 3 * abs(move[2])  # mostly to its right (+x)


def test_example_saved_with_its_meta_is_the_same_file(tmp_path, examples):
    for scene in examples:
        raw = json.loads((scene / "camera.json").read_text())
        traj, meta = load_trajectory(scene / "camera.json", return_meta=True)
        traj = traj.transform(torch.tensor(meta.pop("world_from_first")))  # back in the file's world
        back = json.loads(save_trajectory(traj, tmp_path / f"{scene.name}.json", "camera_json", meta=meta).read_text())
        assert back["motion_list"] == raw["motion_list"]
        assert np.allclose(back["extrinsic"], raw["extrinsic"], atol=1e-4)
        assert np.allclose(back["intrinsic"], raw["intrinsic"], atol=1e-4)


@pytest.mark.parametrize("fmt", TRAJECTORY_FORMATS)
def test_examples_survive_every_format(tmp_path, examples, fmt):
    for scene in examples:
        traj = load_trajectory(scene / "camera.json")
        assert_same(load_trajectory(save_trajectory(traj, tmp_path / scene.name / FILE_NAMES[fmt], fmt)), traj, atol=1e-4)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TrajectoryFormatError, match=r"nope\.json' does not exist"):
        load_trajectory(tmp_path / "nope.json")


def test_truncated_and_non_json_files_name_the_file_and_position(tmp_path, traj):
    text = save_trajectory(traj, tmp_path / "t.json").read_text()
    bad = write(tmp_path / "cut.json", text[: len(text) // 2])
    with pytest.raises(TrajectoryFormatError, match=r"cut\.json' is not valid JSON: .* at line \d+ column \d+"):
        load_trajectory(bad)
    with pytest.raises(TrajectoryFormatError, match=r"junk\.json' is not valid JSON: .* line 1 column 1"):
        load_trajectory(write(tmp_path / "junk.json", "this is not json"))
    with pytest.raises(TrajectoryFormatError, match="pasted JSON text is not valid JSON"):
        load_trajectory('{"format": "worldstereo-trajectory", ')
    with pytest.raises(TrajectoryFormatError, match="Cannot tell the format"):
        load_trajectory(write(tmp_path / "notes.txt", "hello\nworld\n"))
    with pytest.raises(TrajectoryFormatError, match="source is empty"):
        load_trajectory("  \n")
    with pytest.raises(TrajectoryFormatError, match="JSON list"):
        load_trajectory(write(tmp_path / "list.json", "[1, 2]"))
    for cut in range(1, len(text), max(1, len(text) // 40)):  # no cut point escapes as another error
        with pytest.raises(TrajectoryFormatError):
            load_trajectory(text[:cut] if text[:cut].strip() else "{")


def test_inconsistent_frame_counts(tmp_path, traj):
    d = trajectory_to_dict(traj, "camera_json")
    d["intrinsic"] = d["intrinsic"][:-1]
    with pytest.raises(TrajectoryFormatError, match="18 extrinsics but 17 intrinsics"):
        load_trajectory(d)
    lines = save_trajectory(traj, tmp_path / "t.txt", "re10k").read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1])
    with pytest.raises(TrajectoryFormatError, match="line 4: expected 19 numbers.* got 18"):
        load_trajectory(write(tmp_path / "short.txt", "\n".join(lines)))
    folder = save_trajectory(traj, tmp_path / "sparse", "colmap")
    images = (folder / "images.txt").read_text().replace(" 6 frame_00017.png", " 9 frame_00017.png")
    write(folder / "images.txt", images)
    with pytest.raises(TrajectoryFormatError, match="'frame_00017.png' uses camera 9, which cameras.txt does not define"):
        load_trajectory(folder)


@pytest.mark.parametrize(
    "fmt, edit, message",
    [
        ("camera_json", lambda d: d.pop("intrinsic"), "missing key 'intrinsic'"),
        ("camera_json", lambda d: d.update(extrinsic=[]), "holds no frames"),
        ("camera_json", lambda d: d.update(extrinsic=[[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]]), r"shape \(frames, 4, 4\); item 0 has shape \(3, 4\)"),
        ("camera_json", lambda d: d.update(intrinsic=[[1, 2], [3]]), "'intrinsic' must be a list of 3x3 matrices.* item 0 has shape \\(2,\\)"),
        ("camera_json", lambda d: d.update(motion_list="right"), "'motion_list' must be a list of strings"),
        ("camera_json", lambda d: d.update(width="wide"), "'width' must be a number"),
        ("transforms_json", lambda d: d["frames"][3].pop("transform_matrix"), "frame 3 has no 'transform_matrix'"),
        ("transforms_json", lambda d: d.update(frames=[]), "'frames' is empty"),
        ("transforms_json", lambda d: d.update(camera_model="OPENCV_FISHEYE"), "camera_model 'OPENCV_FISHEYE' is not supported"),
        ("transforms_json", lambda d: [f.pop("fl_x") for f in (d, d["frames"][0])], "frame 0 has no focal length"),
        ("transforms_json", lambda d: d["frames"][2].update(w=99), "frames have different sizes"),
        ("worldstereo", lambda d: d.pop("frames"), "missing key 'frames'"),
        ("worldstereo", lambda d: d["frames"][1].pop("c2w"), "frame 1 has no 'c2w'"),
        ("worldstereo", lambda d: d["frames"][0].pop("K"), "frame 0 has no 'K'"),
        ("worldstereo", lambda d: d.pop("width"), "does not store the image size; pass width= and height="),
        ("worldstereo", lambda d: d.update(version=2), "version 2, written by a newer ws_engine"),
        ("worldstereo", lambda d: d.update(convention="opengl_c2w"), "unsupported 'convention'"),
        ("worldstereo", lambda d: d["frames"][1].update(K=[[1, 0], [0, 1]]), r"shape \(frames, 3, 3\); item 1 has shape \(2, 2\)"),
    ],
)
def test_bad_json_content(tmp_path, traj, fmt, edit, message):
    d = trajectory_to_dict(traj, fmt)
    edit(d)
    with pytest.raises(TrajectoryFormatError, match=message):
        load_trajectory(d, format=fmt)
    path = write(tmp_path / "bad.json", json.dumps(d))  # from a file the message names it
    with pytest.raises(TrajectoryFormatError, match=re.escape(str(path))):
        load_trajectory(path, format=fmt)


def test_zero_frames_in_text_formats(tmp_path, traj):
    with pytest.raises(TrajectoryFormatError, match="no camera rows"):
        load_trajectory(write(tmp_path / "t.txt", "# worldstereo width=4 height=4 fps=1\n\n"), format="re10k")
    folder = save_trajectory(traj, tmp_path / "sparse", "colmap")
    write(folder / "images.txt", "# no images\n")
    with pytest.raises(TrajectoryFormatError, match="lists no images"):
        load_trajectory(folder)


def test_bad_colmap_lines(tmp_path, traj):
    folder = save_trajectory(traj, tmp_path / "sparse", "colmap")
    cameras = (folder / "cameras.txt").read_text()
    write(folder / "cameras.txt", cameras.replace("PINHOLE", "FISHEYE", 1))
    with pytest.raises(TrajectoryFormatError, match="camera model 'FISHEYE' is not supported"):
        load_trajectory(folder)
    write(folder / "cameras.txt", cameras.replace("PINHOLE 640 360 500.0", "PINHOLE 640 360", 1))
    with pytest.raises(TrajectoryFormatError, match="PINHOLE takes 4 parameters, got 3"):
        load_trajectory(folder)
    write(folder / "cameras.txt", cameras)
    write(folder / "images.txt", "1 1 0 0 0 0 0 x 1 a.png\n\n")
    with pytest.raises(TrajectoryFormatError, match="line 1: expected IMAGE_ID QW"):
        load_trajectory(folder)
    (folder / "cameras.txt").unlink()
    write(folder / "cameras.bin", "")
    with pytest.raises(TrajectoryFormatError, match="binary COLMAP model"):
        load_trajectory(folder)


def test_unknown_format_names(tmp_path, traj):
    with pytest.raises(UnknownNameError, match="Unknown trajectory format 'blender'"):
        load_trajectory(tmp_path / "x.json", format="blender")
    with pytest.raises(UnknownNameError, match="Choose one of: camera_json, colmap, re10k"):
        save_trajectory(traj, tmp_path / "x.json", "nerf")
    with pytest.raises(UnknownNameError):
        trajectory_to_dict(traj, "colmap")  # not a JSON format
    with pytest.raises(TrajectoryFormatError, match="format='re10k' needs a text file"):
        load_trajectory(trajectory_to_dict(traj), format="re10k")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: e[5][0].__setitem__(0, 2.0), r"rotation of c2w\[5\] is not orthonormal"),
        (lambda e: e[2][1].__setitem__(3, float("nan")), "camera 2 contains NaN"),
        (lambda e: e[7][3].__setitem__(3, 2.0), "matrix 7 must end with the row"),
    ],
)
def test_bad_poses_name_the_file_and_frame(tmp_path, traj, edit, message):
    d = trajectory_to_dict(traj, "camera_json")
    edit(d["extrinsic"])
    path = write(tmp_path / "camera.json", json.dumps(d))
    with pytest.raises(InvalidCameraError, match=rf"camera\.json'.*{message}"):
        load_trajectory(path)


def test_non_positive_focal_length(tmp_path, traj):
    d = trajectory_to_dict(traj, "transforms_json")
    d["frames"][4]["fl_x"] = -10.0
    with pytest.raises(InvalidCameraError, match=r"transforms\.json'.*camera 4 has fx=-10"):
        load_trajectory(write(tmp_path / "transforms.json", json.dumps(d)))


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_any_mangled_key_gives_a_worldstereo_error(traj, fmt):
    """Replacing or deleting any key (top level or frame 0) never leaks a KeyError/TypeError/IndexError."""
    base = trajectory_to_dict(traj[:3], fmt)
    targets = [(base, k) for k in base] + ([(base["frames"][0], k) for k in base["frames"][0]] if "frames" in base else [])
    for container, key in targets:
        for value in (None, "x", [], {}, -1, [[1.0]], True, "__delete__"):
            original = container[key]
            if value == "__delete__":
                del container[key]
            else:
                container[key] = value
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_trajectory(copy.deepcopy(base), format=fmt, width=W, height=H)
            except WorldStereoError:
                pass
            finally:
                container[key] = original
