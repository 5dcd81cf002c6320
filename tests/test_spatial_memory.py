"""SpatialStereoMemory: sparse windowed attention against a plain dense reference, replacement
policies, retrieval, reference-frame selection, state and errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ws_engine import CameraParameters, SpatialStereoMemory
from ws_engine.errors import ConfigError, EmptyMemoryError, ShapeMismatchError, UnknownNameError
from ws_engine.geometry import project
from ws_engine.memory.window_attention import window_attention
from ws_engine.rotations import look_at

CENTRE = torch.tensor([0.0, 0.0, 4.0])


def camera_at(eye, target=CENTRE, fov=60.0, width=96, height=80) -> CameraParameters:
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    c2w = torch.eye(4)
    c2w[:3, :3] = look_at(eye, target, torch.tensor([0.0, -1.0, 0.0]))
    c2w[:3, 3] = eye
    return CameraParameters.from_fov(fov, width, height, c2w=c2w)


def random_cameras(g: torch.Generator, n: int = 2) -> CameraParameters:
    eyes = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.5, 0.6, 1.0])
    return CameraParameters.stack([camera_at(e, fov=50 + 20 * float(torch.rand(1, generator=g))) for e in eyes])


def scene_points(g: torch.Generator, *shape) -> torch.Tensor:
    return CENTRE + torch.randn(*shape, 3, generator=g) * torch.tensor([1.2, 0.9, 1.0])


def filled_memory(g, M=40, filled=30, D=8, K=3, window=12.0, **kw) -> SpatialStereoMemory:
    """A partly filled memory: some low confidences, some correspondences behind the cameras."""
    mem = SpatialStereoMemory(M, D, K, attention_window=window, confidence_threshold=0.5, **kw)
    corr = scene_points(g, filled, 1) + 0.25 * torch.randn(filled, K, 3, generator=g)
    corr[: filled // 6, :, 2] = -3.0  # behind every camera
    mem.add_to_memory(torch.randn(filled, D, generator=g), corr, torch.rand(filled, K, generator=g))
    return mem


def queries(g, B=2, N=25, D=8):
    pos = scene_points(g, B, N)
    pos[:, :2, 2] = -2.0  # queries behind the camera
    return torch.randn(B, N, D, generator=g), pos


def naive_attention(mem, q, pos, cams, cap=None, use_mask=True):
    """Dense masked softmax written plainly: (B,N,D) outputs and (B,N,M) weights."""
    B, N, D = q.shape
    M, K = mem.confidences.shape
    out, weights = torch.zeros(B, N, D), torch.zeros(B, N, M)
    for b in range(B):
        cam = cams[min(b, len(cams) - 1)]
        q_uv, q_depth = project(pos[b], cam)
        e_uv, e_depth = project(mem.correspondences.reshape(-1, 3), cam)
        e_uv, e_depth = e_uv.reshape(M, K, 2), e_depth.reshape(M, K)
        allow = torch.zeros(N, M, dtype=torch.bool)
        dist = torch.full((N, M), math.inf)
        for i in range(N):
            for j in range(M):
                for k in range(K):
                    usable = mem.filled[j] and e_depth[j, k] > 0 and mem.confidences[j, k] >= mem.confidence_threshold
                    du, dv = q_uv[i, 0] - e_uv[j, k, 0], q_uv[i, 1] - e_uv[j, k, 1]
                    d2 = du * du + dv * dv
                    if use_mask and usable and q_depth[i] > 0 and d2 <= mem.attention_window**2:
                        allow[i, j] = True
                        dist[i, j] = min(dist[i, j], float(d2))
                if not use_mask:
                    allow[i, j] = bool(mem.filled[j])
        if cap is not None:  # nearest first, ties to the lower entry index
            order = torch.sort(dist, dim=1, stable=True).indices[:, :cap]
            allow &= torch.zeros_like(allow).scatter_(1, order, True)
        scores = (q[b] @ mem.features.T / math.sqrt(D)).masked_fill(~allow, -math.inf)
        w = torch.softmax(scores, dim=1).nan_to_num(0.0)
        weights[b], out[b] = w, w @ mem.features
    return out, weights


# ------------------------------------------------------------------------------------------------
# constrained attention
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_constrained_attention_matches_dense_reference(seed):
    g = torch.Generator().manual_seed(seed)
    mem = filled_memory(g, window=18.0 + 6 * seed)
    q, pos = queries(g)
    cams = random_cameras(g)
    out, w = mem.constrained_attention(q, pos, cams)
    ref_out, ref_w = naive_attention(mem, q, pos, cams)
    assert (ref_w > 0).sum(-1).float().mean() > 2  # the case is not trivial
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)
    out2, none = mem.constrained_attention(q, pos, cams, return_weights=False)
    assert none is None
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)


def test_one_camera_is_shared_by_the_batch():
    g = torch.Generator().manual_seed(7)
    mem = filled_memory(g)
    q, pos = queries(g)
    cam = random_cameras(g, 1)[0]
    out, w = mem.constrained_attention(q, pos, cam)
    ref_out, ref_w = naive_attention(mem, q, pos, cam)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cap", [1, 3])
def test_max_candidates_keeps_the_nearest(cap):
    g = torch.Generator().manual_seed(11)
    mem = filled_memory(g, window=25.0)
    q, pos = queries(g)
    cams = random_cameras(g)
    out, w = mem.constrained_attention(q, pos, cams, max_candidates=cap)
    ref_out, ref_w = naive_attention(mem, q, pos, cams, cap=cap)
    assert int((w > 0).sum(-1).max()) == cap
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)
    exact_out, exact_w = mem.constrained_attention(q, pos, cams)
    big_out, big_w = mem.constrained_attention(q, pos, cams, max_candidates=mem.memory_size)
    torch.testing.assert_close(big_out, exact_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(big_w, exact_w, atol=1e-6, rtol=0)


def test_mask_off_is_dense_softmax_over_filled_entries():
    g = torch.Generator().manual_seed(3)
    mem = filled_memory(g, M=40, filled=30)
    q, pos = queries(g)
    cams = random_cameras(g)
    out, w = mem.constrained_attention(q, pos, cams, use_correspondence_mask=False)
    ref_out, ref_w = naive_attention(mem, q, pos, cams, use_mask=False)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)
    assert torch.all(w[..., 30:] == 0)  # empty slots are never attended
    keys = mem.features[:30][None].expand(2, -1, -1)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, keys, keys), atol=1e-5, rtol=0)
    out2, none = mem.constrained_attention(q, pos, cams, use_correspondence_mask=False, return_weights=False)
    assert none is None
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=0)


def test_queries_without_candidates_get_zeros():
    g = torch.Generator().manual_seed(5)
    mem = filled_memory(g, window=2.0)
    cam = camera_at([0.0, 0.0, 0.0])
    q = torch.randn(1, 3, 8, generator=g)
    pos = torch.tensor([[[0.0, 0.0, -4.0], [50.0, 50.0, 4.0], [0.0, 0.0, 4.0]]])  # behind, far off, maybe
    out, w = mem.constrained_attention(q, pos, cam)
    ref_out, ref_w = naive_attention(mem, q, pos, cam)
    assert torch.all(out[0, :2] == 0) and torch.all(w[0, :2] == 0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)


def test_chunking_and_tiling_do_not_change_the_result():
    g = torch.Generator().manual_seed(9)
    M, K, N, D = 300, 3, 200, 16
    q, q_uv = torch.randn(N, D, generator=g), torch.rand(N, 2, generator=g) * 100
    e_uv = torch.rand(M, 1, 2, generator=g) * 100 + torch.randn(M, K, 2, generator=g) * 6
    e_ok, q_ok = torch.rand(M, K, generator=g) > 0.3, torch.rand(N, generator=g) > 0.1
    feats = torch.randn(M, D, generator=g)
    base = window_attention(q, q_uv, q_ok, e_uv, e_ok, feats, 9.0, 5)
    for tile, chunk in ((1, 1), (1, 1 << 20), (3, 1000)):
        other = window_attention(q, q_uv, q_ok, e_uv, e_ok, feats, 9.0, 5, chunk_elements=chunk, tile_cells=tile)
        torch.testing.assert_close(other[0], base[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(other[1], base[1], atol=1e-5, rtol=0)


def test_projection_cache_follows_bank_camera_and_threshold_changes():
    g = torch.Generator().manual_seed(21)
    mem = filled_memory(g)
    cam = random_cameras(g, 1)
    q, pos = queries(g, B=1)

    def check():
        out, w = mem.constrained_attention(q, pos, cam)
        ref_out, ref_w = naive_attention(mem, q, pos, cam)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
        torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)

    check()
    check()  # served from the cache
    mem.add_to_memory(torch.randn(5, 8, generator=g), scene_points(g, 5, 3), torch.ones(5, 3))
    check()
    mem.correspondences[:10] += 0.3  # in-place writes bump the version counters
    check()
    mem.confidences[:, 0] = 1.0
    check()
    mem.confidence_threshold = 0.9
    check()
    cam._c2w[..., 0, 3] += 0.2  # the camera moved in place
    check()
    cam = random_cameras(g, 1)  # another camera
    check()
    mem.load_state_dict(filled_memory(torch.Generator().manual_seed(5)).state_dict())
    check()
    with torch.inference_mode():  # inference tensors keep no version counter: never cached
        mem.load_state_dict(filled_memory(torch.Generator().manual_seed(6)).state_dict())
        check()
        mem.correspondences[:10] -= 0.3
        check()


# ------------------------------------------------------------------------------------------------
# writing: slots and replacement
# ------------------------------------------------------------------------------------------------


def entries(n, D=4, K=2, start=0.0):
    feats = torch.arange(start, start + n)[:, None].repeat(1, D)  # feature value = entry label
    corr = CENTRE + torch.zeros(n, K, 3)
    return feats, corr, torch.ones(n, K)


def labels(mem):
    return {int(v) for v in mem.features[mem.filled, 0]}


def test_fifo_evicts_the_oldest():
    mem = SpatialStereoMemory(4, 4, 2, replacement="fifo")
    assert mem.add_to_memory(*entries(3)).tolist() == [0, 1, 2]
    assert mem.add_to_memory(*entries(3, start=10)).tolist() == [3, 0, 1]
    assert labels(mem) == {2, 10, 11, 12} and len(mem) == 4


def test_lru_evicts_the_least_recently_used():
    mem = SpatialStereoMemory(4, 4, 2, attention_window=5.0, replacement="lru")
    feats, corr, conf = entries(4)
    corr[1:3] = CENTRE + torch.tensor([5.0, 0.0, 0.0])  # entries 1, 2 off to the side
    mem.add_to_memory(feats, corr, conf)
    cam = camera_at([0.0, 0.0, 0.0])
    _, idx = mem.retrieve(CENTRE[None, None] + torch.tensor([5.0, 0.0, 0.0]), cam, top_k=1)
    assert int(idx[0, 0, 0]) in (1, 2)
    touched = int(idx[0, 0, 0])
    mem.constrained_attention(torch.ones(1, 1, 4), CENTRE[None, None], cam)  # uses entries 0 and 3
    untouched = 3 - touched  # the other of 1, 2
    assert mem.add_to_memory(*entries(1, start=20)).tolist() == [untouched]
    assert mem.add_to_memory(*entries(1, start=21)).tolist() == [touched]


def test_importance_based_evicts_the_least_important():
    mem = SpatialStereoMemory(3, 4, 2, attention_window=5.0, replacement="importance_based")
    feats, corr, conf = entries(3)
    conf[:] = torch.tensor([[0.9, 0.2], [0.3, 0.6], [0.95, 0.8]])  # importance = max confidence
    corr[2] = CENTRE + torch.tensor([5.0, 0.0, 0.0])  # entry 2 lies off to the side
    mem.add_to_memory(feats, corr, conf)
    assert mem.add_to_memory(*entries(1, start=10)).tolist() == [1]
    # attention mass raises importance: 5 queries at the centre attend entry 0 and the newcomer
    mem.constrained_attention(torch.zeros(1, 5, 4), CENTRE[None].expand(1, 5, 3), camera_at([0.0, 0.0, 0.0]))
    torch.testing.assert_close(mem.importance[:2], torch.tensor([0.9 + 2.5, 1.0 + 2.5]))
    assert mem.add_to_memory(*entries(1, start=11)).tolist() == [2]  # 0.95 < 0.9 + 2.5


def test_adding_more_than_memory_size_is_an_error():
    mem = SpatialStereoMemory(4, 4, 2)
    with pytest.raises(ShapeMismatchError, match="split the batch"):
        mem.add_to_memory(*entries(5))
    assert len(mem) == 0
    assert mem.add_to_memory(*entries(0)).shape == (0,)


def test_metadata_registers_views_and_is_kept_per_entry():
    mem = SpatialStereoMemory(8, 4, 2)
    cam = camera_at([0.0, 0.0, 0.0])
    slots = mem.add_to_memory(*entries(3), metadata={"camera": cam, "name": "frame0"})
    assert len(mem.views) == 1 and mem.views[0]["name"] == "frame0"
    assert mem.entry_view[slots].tolist() == [0, 0, 0]
    slots = mem.add_to_memory(*entries(2), metadata=[{"id": 1}, None])
    assert mem.metadata[int(slots[0])] == {"id": 1} and mem.entry_view[slots].tolist() == [-1, -1]


# ------------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------------


def test_retrieve_returns_the_nearest_in_pixels():
    g = torch.Generator().manual_seed(1)
    mem = filled_memory(g, M=40, filled=30)
    cams = random_cameras(g)
    _, pos = queries(g, N=10)
    feats, idx = mem.retrieve(pos, cams, top_k=5)
    assert feats.shape == (2, 10, 5, 8) and idx.shape == (2, 10, 5)
    M, K = mem.confidences.shape
    for b in range(2):
        q_uv, q_depth = project(pos[b], cams[b])
        e_uv, e_depth = project(mem.correspondences.reshape(-1, 3), cams[b])
        usable = (e_depth.reshape(M, K) > 0) & (mem.confidences >= 0.5) & mem.filled[:, None]
        d = (q_uv[:, None, None] - e_uv.reshape(M, K, 2)[None]).norm(dim=-1).masked_fill(~usable[None], math.inf).amin(-1)
        for i in range(10):
            if q_depth[i] <= 0:
                assert torch.all(idx[b, i] == -1) and torch.all(feats[b, i] == 0)
                continue
            expected = torch.sort(d[i], stable=True)
            n = int(torch.isfinite(expected.values[:5]).sum())
            torch.testing.assert_close(d[i][idx[b, i, :n]], expected.values[:n])
            assert torch.all(idx[b, i, n:] == -1)
            torch.testing.assert_close(feats[b, i, :n], mem.features[idx[b, i, :n]])


def test_retrieve_pads_with_minus_one_and_respects_max_distance():
    mem = SpatialStereoMemory(8, 4, 2)
    mem.add_to_memory(*entries(2))
    cam = camera_at([0.0, 0.0, 0.0])
    feats, idx = mem.retrieve(CENTRE[None, None], cam, top_k=4)
    assert idx[0, 0].tolist()[2:] == [-1, -1] and sorted(idx[0, 0, :2].tolist()) == [0, 1]
    _, idx = mem.retrieve((CENTRE + torch.tensor([1.0, 0, 0]))[None, None], cam, top_k=2, max_distance=3.0)
    assert idx[0, 0].tolist() == [-1, -1]


# ------------------------------------------------------------------------------------------------
# reference frames
# ------------------------------------------------------------------------------------------------


def test_select_reference_frames_prefers_the_overlapping_view_facing_the_same_way():
    mem = SpatialStereoMemory(8, 4, 2)
    target = camera_at([0.0, 0.0, 0.0])
    away = mem.add_view(camera_at([0.0, 0.0, 0.0], target=[0.0, 0.0, -4.0]))  # same place, facing away
    side = mem.add_view(camera_at([3.0, 0.0, 0.0], target=[9.0, 0.0, 4.0]))  # off to the side
    near = mem.add_view(camera_at([0.3, 0.0, 0.2]), image=torch.zeros(3, 80, 96), name="near")
    scores = mem.view_scores(target)
    assert scores.shape == (1, 3)
    assert int(scores[0].argmax()) == near and scores[0, near] > 0.5
    assert scores[0, away] < 0.01
    assert mem.select_reference_frames(target, k=2).tolist() == [near]
    # two targets, each with its own best view; k limits the count, best score first
    other = camera_at([3.0, 0.0, 0.1], target=[9.0, 0.0, 4.0])
    chosen = mem.select_reference_frames(CameraParameters.stack([target, other]), k=2)
    assert sorted(chosen.tolist()) == sorted([near, side])
    assert len(mem.select_reference_frames(CameraParameters.stack([target, other]), k=1)) == 1


# ------------------------------------------------------------------------------------------------
# state, device, errors
# ------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_and_clear():
    g = torch.Generator().manual_seed(2)
    mem = filled_memory(g)
    mem.add_view(camera_at([0.0, 0.0, 0.0]))
    state = mem.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    copy = SpatialStereoMemory(**{k: v for k, v in mem.config.items()})
    copy.load_state_dict(state)
    q, pos = queries(g)
    cams = random_cameras(g)
    torch.testing.assert_close(copy.constrained_attention(q, pos, cams)[0], mem.constrained_attention(q, pos, cams)[0])
    assert len(copy) == len(mem) and len(copy.views) == 1
    with pytest.raises(ShapeMismatchError, match="saved config"):
        SpatialStereoMemory(memory_size=8, feature_dim=8, num_correspondences=3).load_state_dict(state)
    mem.clear()
    assert len(mem) == 0 and not mem.views


def test_cuda_without_cuda_falls_back_to_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = SpatialStereoMemory(4, 4, 2, device="cuda")
    if not torch.cuda.is_available():
        assert mem.device.type == "cpu" and mem.features.device.type == "cpu"
    assert mem.to("cpu").features.device.type == "cpu"


def test_errors_are_raised_before_any_work():
    mem = SpatialStereoMemory(8, 4, 2)
    feats, corr, conf = entries(3)
    cam = camera_at([0.0, 0.0, 0.0])
    q, pos = torch.zeros(1, 2, 4), CENTRE.expand(1, 2, 3)
    with pytest.raises(EmptyMemoryError, match="add_to_memory"):
        mem.constrained_attention(q, pos, cam)
    with pytest.raises(EmptyMemoryError):
        mem.retrieve(pos, cam, top_k=1)
    with pytest.raises(EmptyMemoryError, match="add_view"):
        mem.select_reference_frames(cam, k=1)
    with pytest.raises(ShapeMismatchError, match="feature_dim"):
        mem.add_to_memory(torch.zeros(3, 5), corr, conf)
    with pytest.raises(ShapeMismatchError, match="same entries"):
        mem.add_to_memory(feats, corr[:2], conf)
    with pytest.raises(ShapeMismatchError, match="num_correspondences"):
        mem.add_to_memory(feats, torch.zeros(3, 3, 3), conf)
    with pytest.raises(ShapeMismatchError):
        mem.add_to_memory(feats, corr, torch.ones(3, 3))
    bad = corr.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ConfigError, match="NaN"):
        mem.add_to_memory(feats, bad, conf)
    assert len(mem) == 0  # nothing was written
    mem.add_to_memory(feats, corr, conf)
    with pytest.raises(ShapeMismatchError, match="batch of 3"):
        mem.constrained_attention(torch.zeros(3, 2, 4), CENTRE.expand(3, 2, 3), CameraParameters.stack([cam, cam]))
    with pytest.raises(ShapeMismatchError, match="feature_dim"):
        mem.constrained_attention(torch.zeros(1, 2, 5), pos, cam)
    with pytest.raises(ShapeMismatchError, match="share"):
        mem.constrained_attention(torch.zeros(1, 3, 4), pos, cam)
    with pytest.raises(ConfigError, match="NaN"):
        mem.constrained_attention(torch.full((1, 2, 4), math.inf), pos, cam)
    with pytest.raises(ConfigError, match="top_k"):
        mem.retrieve(pos, cam, top_k=0)
    with pytest.raises(ConfigError, match="max_candidates"):
        mem.constrained_attention(q, pos, cam, max_candidates=0)
    with pytest.raises(ConfigError, match="k must"):
        mem.add_view(cam)
        mem.select_reference_frames(cam, k=0)
    with pytest.raises(UnknownNameError, match="fifo"):
        SpatialStereoMemory(replacement="random")
    with pytest.raises(ConfigError):
        SpatialStereoMemory(attention_window=0)
