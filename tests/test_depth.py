"""Depth providers: a given map (arrays, images, files), a tiny transformers model, the fallback prior."""

import contextlib
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ws_engine.cameras import CameraParameters
from ws_engine.depth import (
    DEFAULT_DEPTH_MODEL,
    TransformersDepthEstimator,
    clear_depth_model_cache,
    depth_from_input,
    disparity_to_depth,
    fallback_depth,
    is_metric_depth_model,
    resolve_depth,
)
from ws_engine.errors import (
    ConfigError,
    InputFileError,
    InvalidDepthError,
    MissingDependencyError,
    ModelLoadError,
    ShapeMismatchError,
    UnknownNameError,
)
from ws_engine.geometry import unproject
from ws_engine.io import save_depth_png16

transformers = pytest.importorskip("transformers")


@contextlib.contextmanager
def no_warnings():
    """A context in which any warning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------------------------
# a given depth map
# ---------------------------------------------------------------------------------------------
def test_depth_is_value_times_scale_and_invalid_values_are_unknown():
    values = np.array([[1.0, 2.5, 0.0], [-1.0, np.nan, np.inf]], dtype=np.float32)
    out = depth_from_input(values, kind="depth", scale=2.0)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert out.tolist() == [[2.0, 5.0, 0.0], [0.0, 0.0, 0.0]]


def test_disparity_is_scale_over_value_and_nonpositive_is_unknown():
    values = torch.tensor([[1.0, 2.0, 0.5], [0.0, -3.0, 4.0]], dtype=torch.float64)
    out = depth_from_input(values, kind="disparity", scale=2.0)
    assert out.dtype == torch.float32
    assert out.tolist() == [[2.0, 1.0, 4.0], [0.0, 0.0, 0.5]]


def test_integer_disparity_is_normalised_by_its_dtype_max_but_integer_depth_is_not():
    values = np.array([[255, 51], [0, 17]], dtype=np.uint8)
    disparity = depth_from_input(values, kind="disparity", scale=1.5)
    assert torch.allclose(disparity, torch.tensor([[1.5, 7.5], [0.0, 22.5]]))
    depth = depth_from_input(values, kind="depth", scale=0.5)
    assert depth.tolist() == [[127.5, 25.5], [0.0, 8.5]]
    wide = depth_from_input(np.array([[65535, 13107]], dtype=np.uint16), kind="disparity")
    assert torch.allclose(wide, torch.tensor([[1.0, 5.0]]))


def test_absurdly_far_disparity_depth_becomes_unknown():
    values = torch.full((4, 4), 0.5)
    values[0, 0] = 1e-4  # 5000x the median depth
    values[0, 1] = 1e-3  # 500x: kept
    out = depth_from_input(values, kind="disparity")
    assert out[0, 0] == 0 and out[0, 1] == pytest.approx(1000.0) and out[1, 1] == 2.0


def test_16bit_png_in_millimetres_read_back(tmp_path):
    mm = np.array([[1500, 2000, 0], [65535, 750, 3210]], dtype=np.uint16)
    path = tmp_path / "depth_mm.png"
    assert cv2.imwrite(str(path), mm)
    out = depth_from_input(path, kind="depth", scale=0.001)
    assert torch.allclose(out, torch.from_numpy(mm.astype(np.float32)) * 0.001)
    assert out[0, 2] == 0
    with Image.open(path) as image:  # the same file as a PIL image (mode I;16)
        assert torch.allclose(depth_from_input(image, scale=0.001), out)


def test_8bit_grey_png_as_disparity(tmp_path):
    path = tmp_path / "disparity.png"
    Image.fromarray(np.array([[255, 85], [51, 0]], dtype=np.uint8)).save(path)
    out = depth_from_input(str(path), kind="disparity", scale=2.0)
    assert torch.allclose(out, torch.tensor([[2.0, 6.0], [10.0, 0.0]]))


def test_float_npy_and_npz_files(tmp_path):
    depth = np.random.default_rng(0).uniform(0.5, 4.0, (5, 7)).astype(np.float32)
    np.save(tmp_path / "d.npy", depth)
    np.savez(tmp_path / "d.npz", confidence=np.ones_like(depth), depth=depth)
    assert torch.equal(depth_from_input(tmp_path / "d.npy"), torch.from_numpy(depth))
    assert torch.equal(depth_from_input(tmp_path / "d.npz"), torch.from_numpy(depth))


def test_depth_png16_written_by_io_reads_back(tmp_path):
    depth = torch.rand(6, 9) * 8 + 0.5
    depth[0, 0] = 0.0
    path = save_depth_png16(tmp_path / "depth.png", depth, max_depth=10.0)
    out = depth_from_input(path, size=(6, 9), scale=10.0 / 65535)
    assert out[0, 0] == 0 and torch.allclose(out, depth, atol=10.0 / 65535)


def test_float_tiff_file(tmp_path):
    depth = np.linspace(0.5, 9.0, 12, dtype=np.float32).reshape(3, 4)
    assert cv2.imwrite(str(tmp_path / "d.tiff"), depth)
    assert torch.equal(depth_from_input(tmp_path / "d.tiff"), torch.from_numpy(depth))


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(InputFileError, match="nope.png"):
        depth_from_input(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError):
        depth_from_input(tmp_path / "junk.png")


@pytest.mark.parametrize(
    "layout",
    [lambda d: d[None], lambda d: d[..., None], lambda d: d[..., None].expand(-1, -1, 3), lambda d: d[None, ..., None].expand(1, -1, -1, 3), lambda d: d[None].expand(3, -1, -1)],
    ids=["1HW", "HW1", "HW3", "1HW3-comfy-image", "3HW"],
)
def test_accepted_layouts_give_the_same_map(layout):
    depth = torch.rand(6, 9) + 0.1
    assert torch.allclose(depth_from_input(layout(depth), kind="disparity"), 1.0 / depth)


def test_depth_image_with_alpha_and_jpeg_like_channel_noise():
    grey = torch.linspace(0.2, 1.0, 20).reshape(4, 5)
    rgba = torch.stack([grey, grey + 0.005, grey - 0.005, torch.zeros_like(grey)], -1)
    assert torch.allclose(depth_from_input(rgba), grey, atol=1e-6)


def test_colour_image_is_not_a_depth_map():
    colour = torch.rand(8, 8, 3)
    with pytest.raises(InvalidDepthError, match="colour"):
        depth_from_input(colour)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 5, 6), (5,), (0, 4), (2, 4, 4, 3)])
def test_wrong_shapes_raise_with_the_expected_shapes(shape):
    with pytest.raises(ShapeMismatchError, match=r"\(H,W\)"):
        depth_from_input(torch.ones(shape))


def test_mask_and_non_numeric_inputs_raise():
    with pytest.raises(InvalidDepthError, match="mask"):
        depth_from_input(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError, match="list"):
        depth_from_input([[1.0, 2.0]])


def test_no_valid_pixel_says_how_to_fix_it():
    with pytest.raises(InvalidDepthError, match="kind='disparity'"):
        depth_from_input(np.zeros((4, 4)))
    with pytest.raises(InvalidDepthError, match="no valid pixel"):
        depth_from_input(-torch.ones(4, 4), kind="disparity")


def test_bad_arguments():
    with pytest.raises(UnknownNameError, match="disparity"):
        depth_from_input(torch.ones(2, 2), kind="inverse")
    for scale in (0, -1, float("nan"), "x"):
        with pytest.raises(ConfigError, match="scale"):
            depth_from_input(torch.ones(2, 2), scale=scale)
    with pytest.raises(ConfigError, match="size"):
        depth_from_input(torch.ones(2, 2), size=(0, 4))


def test_resize_warns_with_both_sizes_and_keeps_measured_values():
    depth = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 8x8
    with pytest.warns(UserWarning, match=r"8x8 \(HxW\) but the image is 4x4") as record:
        out = depth_from_input(depth, size=(4, 4))
    assert len(record) == 1 and "STRETCHED" not in str(record[0].message)
    assert out.tolist() == [[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]
    with no_warnings():
        assert depth_from_input(depth, size=(8, 8)).shape == (8, 8)


def test_resize_to_another_aspect_ratio_warns_louder():
    with pytest.warns(UserWarning, match="STRETCHED") as record:
        out = depth_from_input(torch.ones(6, 8), size=(6, 12))
    assert out.shape == (6, 12) and "6x8" in str(record[0].message) and "6x12" in str(record[0].message)


# ---------------------------------------------------------------------------------------------
# relative disparity -> depth
# ---------------------------------------------------------------------------------------------
def test_disparity_to_depth_median_and_bounded_range():
    disparity = torch.tensor([[8.0, 4.0, 2.0], [1.0, 0.0, -1.0], [8.0, 4.0, float("nan")]])
    depth = disparity_to_depth(disparity, scene_depth=3.0, max_ratio=10.0)
    assert torch.isfinite(depth).all() and (depth > 0).all()
    assert depth.median() == pytest.approx(3.0)
    assert depth.max() / depth.min() == pytest.approx(10.0)
    assert depth[0, 1] / depth[0, 0] == pytest.approx(2.0) and depth[0, 2] / depth[0, 0] == pytest.approx(4.0)
    with pytest.raises(InvalidDepthError, match="fewer than 1%"):
        disparity_to_depth(torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------------
# the fallback prior
# ---------------------------------------------------------------------------------------------
def test_fallback_warns_names_both_options_and_is_a_floor_meeting_a_backdrop():
    image = torch.rand(3, 48, 64)
    with pytest.warns(UserWarning) as record:
        depth = fallback_depth(image, scene_depth=4.0)
    text = str(record[0].message)
    assert "depth=" in text and f"depth_model={DEFAULT_DEPTH_MODEL!r}" in text and "[neural]" in text
    assert depth.shape == (48, 64) and torch.isfinite(depth).all() and (depth > 0).all()
    assert depth[0].eq(4.0).all() and depth[-1].allclose(torch.full((64,), 2.0))
    column = depth[:, 10]
    assert (column[1:] <= column[:-1]).all()  # depth falls towards the bottom row
    with pytest.warns(UserWarning):
        assert torch.equal(fallback_depth(torch.rand(3, 48, 64), scene_depth=4.0), depth)  # content-independent


def test_fallback_floor_is_a_plane_below_the_camera():
    camera = CameraParameters.from_fov(70.0, 40, 30)
    with pytest.warns(UserWarning):
        depth = fallback_depth(torch.rand(3, 30, 40), camera, scene_depth=3.0)
    points = unproject(depth, camera)
    floor = depth < 3.0 - 1e-4
    assert floor.any() and floor[-1].all()
    heights = points[..., 1][floor]
    assert heights.min() > 0 and torch.allclose(heights, heights[0].expand_as(heights), atol=1e-4)


def test_fallback_with_a_panorama_and_camera_checks():
    pano = CameraParameters.equirectangular(32, 16)
    with pytest.warns(UserWarning):
        depth = fallback_depth(torch.rand(3, 16, 32), pano)
    assert (depth > 0).all() and depth[:8].eq(3.0).all() and depth[-1].max() < 1.6
    with pytest.raises(ShapeMismatchError, match="rescale"):
        fallback_depth(torch.rand(3, 16, 20), pano)
    with pytest.raises(ShapeMismatchError, match=r"\(3,H,W\)"):
        fallback_depth(torch.rand(16, 32))


# ---------------------------------------------------------------------------------------------
# a tiny transformers model, saved and loaded like a real one
# ---------------------------------------------------------------------------------------------
def save_tiny_depth_anything(folder, kind: str):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28,
        patch_size=14, out_indices=[1, 2], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16], reassemble_factors=[2, 1],
        fusion_hidden_size=8, head_hidden_size=8, depth_estimation_type=kind, max_depth=20,
    )
    torch.manual_seed(1)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # a visible, positive, image-dependent output from the random head
        model.head.conv3.bias.fill_(0.5)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_models")
    clear_depth_model_cache()
    yield {kind: save_tiny_depth_anything(root / kind, kind) for kind in ("metric", "relative")}
    clear_depth_model_cache()


def reference_prediction(folder, image):
    """The prediction at the image size, straight through transformers' own API."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModelForDepthEstimation.from_pretrained(folder).eval()
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with torch.no_grad():
        outputs = model(**processor(images=pixels, return_tensors="pt"))
    return processor.post_process_depth_estimation(outputs, target_sizes=[tuple(image.shape[-2:])])[0]["predicted_depth"]


def test_metric_model_round_trip(tiny_models):
    estimator = TransformersDepthEstimator(tiny_models["metric"])
    assert estimator.metric is True and "metric" in repr(estimator)
    image = torch.rand(3, 30, 44)
    depth = estimator(image)
    assert depth.shape == (30, 44) and depth.dtype == torch.float32
    assert torch.isfinite(depth).all() and (depth > 0).all() and depth.max() <= 20.0
    assert torch.allclose(depth, reference_prediction(tiny_models["metric"], image), atol=1e-4)


def test_relative_model_round_trip(tiny_models):
    estimator = TransformersDepthEstimator(str(tiny_models["relative"]))
    assert estimator.metric is False
    image = torch.rand(3, 30, 44)
    depth = estimator(image, scene_depth=2.0)
    assert depth.shape == (30, 44) and torch.isfinite(depth).all() and (depth > 0).all()
    disparity = reference_prediction(tiny_models["relative"], image)
    assert disparity.std() > 0  # the check below means something
    assert torch.allclose(depth, disparity_to_depth(disparity, scene_depth=2.0), rtol=1e-4)
    assert depth.median() == pytest.approx(2.0, rel=1e-4) and depth.max() / depth.min() <= 50.0 + 1e-3
    # inverse: the pixel of largest disparity is (among) the nearest
    assert depth.flatten()[disparity.argmax()] == pytest.approx(float(depth.min()))


def test_loaded_models_are_cached_and_metric_can_be_overridden(tiny_models):
    first = TransformersDepthEstimator(tiny_models["relative"])
    second = TransformersDepthEstimator(tiny_models["relative"], metric=True)
    assert first.model is second.model and second.metric is True


def test_metric_decision_follows_the_config():
    assert is_metric_depth_model(transformers.DepthAnythingConfig(depth_estimation_type="metric"))
    assert not is_metric_depth_model(transformers.DepthAnythingConfig())
    assert is_metric_depth_model(transformers.GLPNConfig())
    assert is_metric_depth_model(transformers.ZoeDepthConfig())
    assert not is_metric_depth_model(transformers.DPTConfig())  # MiDaS-style relative inverse depth


def test_model_load_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as error:
        TransformersDepthEstimator(empty, local_files_only=True)
    message = str(error.value)
    assert str(empty) in message and DEFAULT_DEPTH_MODEL in message and "config.json" in message
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersDepthEstimator(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        TransformersDepthEstimator(tmp_path / "file.bin")


def test_missing_transformers_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` sees when it is absent
    with pytest.raises(MissingDependencyError, match=r'pip install "comfyui-worldstereo\[neural\]"'):
        TransformersDepthEstimator(tmp_path)


def test_estimator_rejects_a_wrong_image(tiny_models):
    estimator = TransformersDepthEstimator(tiny_models["metric"])
    with pytest.raises(ShapeMismatchError, match=r"\(3,H,W\)"):
        estimator(torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# resolve_depth
# ---------------------------------------------------------------------------------------------
def test_resolve_given_depth_wins_and_is_resized_to_the_image(tiny_models):
    image = torch.rand(3, 8, 12)
    given = torch.full((8, 12), 0.25)
    with no_warnings():
        assert torch.equal(resolve_depth(image, depth=given, depth_kind="disparity", depth_scale=2.0), torch.full((8, 12), 8.0))
    with pytest.warns(UserWarning, match="depth_model is ignored"):
        out = resolve_depth(image, depth=given, depth_model=tiny_models["metric"])
    assert torch.equal(out, given)
    with pytest.warns(UserWarning, match="resized"):
        assert resolve_depth(image, depth=torch.ones(16, 24)).shape == (8, 12)


def test_resolve_uses_the_model_then_the_fallback(tiny_models):
    image = torch.rand(3, 30, 44)
    estimator = TransformersDepthEstimator(tiny_models["relative"])
    with no_warnings():
        by_id = resolve_depth(image, depth_model=str(tiny_models["relative"]), scene_depth=5.0)
        by_object = resolve_depth(image, depth="", depth_model=estimator, scene_depth=5.0)
    assert torch.equal(by_id, by_object) and torch.equal(by_id, estimator(image, scene_depth=5.0))
    camera = CameraParameters.from_fov(50.0, 44, 30)
    with pytest.warns(UserWarning, match="depth_model="):
        fallback = resolve_depth(image, camera, depth_model="")
    with pytest.warns(UserWarning):
        assert torch.equal(fallback, fallback_depth(image, camera))


def test_resolve_validates_everything_before_loading(tmp_path):
    image = torch.rand(3, 8, 8)
    missing_model = tmp_path / "no-model-here"
    with pytest.raises(UnknownNameError, match="depth kind"):
        resolve_depth(image, depth_kind="metres", depth_model=missing_model)
    with pytest.raises(ConfigError, match="depth_scale"):
        resolve_depth(image, depth_scale=0, depth_model=missing_model)
    with pytest.raises(ConfigError, match="scene_depth"):
        resolve_depth(image, scene_depth=-1, depth_model=missing_model)
    with pytest.raises(ShapeMismatchError, match="rescale"):
        resolve_depth(image, CameraParameters.from_fov(60, 16, 8), depth_model=missing_model)
    with pytest.raises(ConfigError, match="depth_model"):
        resolve_depth(image, depth_model=42)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_depth(image, depth=torch.ones(8, 8), depth_model=missing_model)
