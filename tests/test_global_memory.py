"""GlobalGeometricMemory: merge invariant, counts, eviction, indexes, queries, rendering, files, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.spatial import cKDTree

import ws_engine.device
from ws_engine.cameras import CameraParameters
from ws_engine.errors import (
    ConfigError,
    EmptyMemoryError,
    EmptyPointCloudError,
    ShapeMismatchError,
    UnknownNameError,
)
from ws_engine.geometry import unproject
from ws_engine.memory.global_memory import GlobalGeometricMemory, MemoryFileError, UpdateResult

STRATEGIES = ("incremental", "replace", "weighted")


def min_pair_distance(points: torch.Tensor) -> float:
    tree = cKDTree(points.double().numpy())
    d, _ = tree.query(points.double().numpy(), k=2)
    return float(d[:, 1].min())


def adversarial(gen: torch.Generator, r: float) -> torch.Tensor:
    """Tight clusters, chains just under r, a lattice at exactly r*(1 -/+ 1e-6), duplicates."""
    clusters = torch.rand(20, 1, 3, generator=gen) + 0.2 * r * torch.randn(20, 50, 3, generator=gen)
    chain = torch.linspace(0, 60 * 0.9 * r, 60)[:, None] * torch.tensor([[1.0, 0.3, 0.0]]) / math.hypot(1, 0.3) + 2.0
    g = torch.arange(8.0)
    lattice = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * r * (1 - 1e-6) - 3.0
    lattice2 = lattice * (1 + 2e-6) / (1 - 1e-6) + 7.0
    dup = torch.rand(10, 3, generator=gen).repeat(5, 1)
    return torch.cat([clusters.reshape(-1, 3), chain, lattice, lattice2, dup])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_merge_invariant_random_and_adversarial(strategy):
    gen = torch.Generator().manual_seed(1)
    r = 0.05
    mem = GlobalGeometricMemory(merge_threshold=r)
    res = mem.initialize(adversarial(gen, r))
    assert min_pair_distance(mem.points) >= r
    assert res.num_added == len(mem)
    for step in range(4):
        new = adversarial(gen, r) if step % 2 else torch.rand(3000, 3, generator=gen)
        before = len(mem)
        res = mem.update(new, merge_strategy=strategy, colors=torch.rand(len(new), 3, generator=gen))
        assert res.num_added + res.num_merged == len(new)
        assert res.total_points == len(mem) == before + res.num_added
        assert min_pair_distance(mem.points) >= r, f"step {step}"


def test_old_matching_is_exact_against_brute_force():
    gen = torch.Generator().manual_seed(2)
    r = 0.04
    mem = GlobalGeometricMemory(merge_threshold=r)
    mem.initialize(torch.rand(4000, 3, generator=gen))
    old = mem.points.clone()
    new = torch.rand(3000, 3, generator=gen) * 1.2 - 0.1
    res = mem.update(new)
    near_old = torch.from_numpy(cKDTree(old.double().numpy()).query(new.double().numpy())[0] < r)
    added = mem.points[len(old) :]
    assert torch.equal(mem.points[: len(old)], old)  # incremental keeps stored positions
    # every added point is a new point with no stored point closer than r
    d_added, _ = cKDTree(old.double().numpy()).query(added.double().numpy())
    assert (d_added >= r).all()
    # and every new point without a stored neighbour is either added or merged into an added one
    fresh = new[~near_old]
    d_fresh, _ = cKDTree(added.double().numpy()).query(fresh.double().numpy())
    assert (d_fresh < r).all()
    assert res.num_added == len(added) and res.num_merged == len(new) - len(added)


def test_merge_values_per_strategy():
    r = 0.1
    old = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    new = torch.tensor([[0.05, 0.0, 0.0], [1.0, 0.09, 0.0], [1.0, -0.09, 0.0], [5.0, 5.0, 5.0]])
    new_colors = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.2, 0.2]])
    expected = {
        "incremental": ([[0.0, 0, 0], [1.0, 0, 0]], [[0.5] * 3, [0.5, 0.0, 0.5]], [2.0, 3.0]),
        "replace": ([[0.05, 0, 0], [1.0, 0, 0]], [[1.0] * 3, [0.5, 0.0, 0.5]], [1.0, 2.0]),
        "weighted": ([[0.025, 0, 0], [1.0, 0, 0]], [[0.5] * 3, [1 / 3, 0.0, 1 / 3]], [2.0, 3.0]),
    }
    for strategy, (pos, col, wt) in expected.items():
        mem = GlobalGeometricMemory(merge_threshold=r)
        mem.initialize(old, colors=torch.zeros(2, 3))
        if strategy == "incremental":
            mem._wt[0:2] = torch.tensor([1.0, 1.0])
        res = mem.update(new, colors=new_colors, merge_strategy=strategy)
        assert (res.num_added, res.num_merged, res.total_points) == (1, 3, 3)
        torch.testing.assert_close(mem.points[:2], torch.tensor(pos), atol=1e-6, rtol=0)
        expect_col = torch.tensor(col)
        if strategy == "incremental":
            expect_col = torch.tensor([[0.5] * 3, [1 / 3, 0.0, 1 / 3]])
        torch.testing.assert_close(mem.colors[:2], expect_col, atol=1e-6, rtol=0)
        torch.testing.assert_close(mem.weights[:2], torch.tensor(wt))
        torch.testing.assert_close(mem.points[2], new[3])


def test_moves_that_would_break_the_invariant_are_refused():
    r = 0.1
    mem = GlobalGeometricMemory(merge_threshold=r)
    mem.initialize(torch.tensor([[0.0, 0, 0], [0.15, 0, 0]]), colors=torch.zeros(2, 3))
    # the new point is nearest to point 0; replacing would put 0 at 0.06, 0.09 from point 1
    res = mem.update(torch.tensor([[0.06, 0.0, 0.0]]), colors=torch.ones(1, 3), merge_strategy="replace")
    assert (res.num_added, res.num_merged) == (0, 1)
    torch.testing.assert_close(mem.points, torch.tensor([[0.0, 0, 0], [0.15, 0, 0]]))
    torch.testing.assert_close(mem.colors[0], torch.ones(3))  # the values still merge


def test_initialize_merges_within_and_accepts_xyzrgb():
    pts = torch.tensor([[0.0, 0, 0, 1, 0, 0], [0.001, 0, 0, 0, 0, 1], [1.0, 1, 1, 0, 1, 0]])
    mem = GlobalGeometricMemory(merge_threshold=0.01)
    res = mem.initialize(pts)
    assert (res["num_added"], res["num_merged"], res["total_points"]) == (2, 1, 2)
    assert sorted(res.keys()) == sorted(UpdateResult._fields)
    torch.testing.assert_close(mem.colors.sum(0), torch.tensor([0.5, 1.0, 0.5]))


def test_threshold_increase_rethins_the_stored_cloud():
    gen = torch.Generator().manual_seed(3)
    mem = GlobalGeometricMemory(merge_threshold=0.01)
    mem.initialize(torch.rand(3000, 3, generator=gen))
    assert min_pair_distance(mem.points) < 0.03
    mem.update(torch.rand(100, 3, generator=gen), merge_threshold=0.03)
    assert min_pair_distance(mem.points) >= 0.03
    assert bool((mem.stamps[1:] > mem.stamps[:-1]).all())


def test_eviction_keeps_exactly_the_newest():
    mem = GlobalGeometricMemory(max_points=50, merge_threshold=0.1)
    first = torch.arange(40.0)[:, None] * torch.tensor([[1.0, 0, 0]])
    second = torch.arange(30.0)[:, None] * torch.tensor([[0, 1.0, 0]]) + torch.tensor([0, 1.0, 5.0])
    mem.initialize(first)
    res = mem.update(second)
    assert res.total_points == len(mem) == 50
    torch.testing.assert_close(mem.points, torch.cat([first, second])[-50:])
    assert mem.stamps.tolist() == list(range(20, 70))
    # many small updates through several buffer compactions
    for i in range(20):
        mem.update(torch.tensor([[100.0 + i, 0, 0], [100.0 + i, 3, 0]]))
    assert len(mem) == 50 and mem.stamps.tolist() == list(range(40 + 70 - 50, 40 + 70))
    # a batch larger than max_points keeps its last max_points
    big = torch.arange(80.0)[:, None] * torch.tensor([[0, 0, 1.0]]) + 1000
    mem.update(big)
    torch.testing.assert_close(mem.points, big[-50:])


def test_manual_frequency_queues_until_flush():
    mem = GlobalGeometricMemory(update_frequency="manual", merge_threshold=0.0)
    mem.initialize(torch.zeros(1, 3))
    res = mem.update(torch.ones(5, 3) * torch.arange(5.0)[:, None] + 1)
    assert (len(mem), res.num_pending) == (1, 5)
    res = mem.flush()
    assert (res.num_added, len(mem), res.num_pending) == (5, 6, 0)


@pytest.mark.parametrize("k", [1, 8])
def test_index_types_agree(k):
    gen = torch.Generator().manual_seed(4)
    pts = torch.rand(3000, 3, generator=gen)
    q = torch.rand(200, 3, generator=gen) * 1.4 - 0.2
    out = {}
    for index_type in ("kd_tree", "ball_tree", "cuda_knn"):
        mem = GlobalGeometricMemory(index_type=index_type, merge_threshold=0.0)
        mem.initialize(pts)
        out[index_type] = mem.knn(q, k)
    ref = torch.cdist(q.double(), pts.double()).topk(k, largest=False)
    for dist, idx in out.values():
        assert torch.equal(idx, ref.indices)
        torch.testing.assert_close(dist, ref.values.float())


def test_knn_rebuilds_after_update_and_clamps_k():
    mem = GlobalGeometricMemory(merge_threshold=0.0)
    mem.initialize(torch.zeros(1, 3))
    _, idx = mem.knn(torch.ones(1, 3), 5)
    assert idx.tolist() == [[0]]
    mem.update(torch.ones(1, 3))
    dist, idx = mem.knn(torch.ones(1, 3), 5)
    assert idx.tolist() == [[1, 0]] and dist[0, 0] == 0


def _reference_query(points, values, q, k, how, valid_fn=None):
    out = []
    for x in q:
        d = (points - x).norm(dim=1)
        dk, ik = d.topk(k, largest=False)
        v, keep = values[ik], torch.ones(k, dtype=torch.bool)
        if valid_fn is not None:
            keep = valid_fn(points[ik])
        dk, v = dk[keep], v[keep]
        if len(dk) == 0:
            out.append(torch.zeros(values.shape[1]))
        elif how == "mean":
            out.append(v.mean(0))
        elif how == "max":
            out.append(v.max(0).values)
        elif how == "weighted":
            w = 1 / (dk + 1e-8)
            out.append((w[:, None] * v).sum(0) / w.sum())
        else:
            sigma = dk.median().clamp(min=1e-12)  # torch median: lower of the two middles, as nanmedian
            w = torch.softmax(-(dk**2) / (2 * sigma**2), 0)
            out.append((w[:, None] * v).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("how", ["mean", "max", "weighted", "attention"])
def test_query_aggregations_against_reference(how):
    gen = torch.Generator().manual_seed(5)
    pts = torch.rand(500, 3, generator=gen) * 2 - 1
    feats = torch.randn(500, 4, generator=gen)
    mem = GlobalGeometricMemory(feature_dim=4, num_neighbors=6, merge_threshold=0.0)
    mem.initialize(pts, features=feats)
    q = torch.rand(2, 7, 3, generator=gen) * 2 - 1
    got = mem.query(q, aggregation=how)
    assert got.shape == (2, 7, 4)
    ref = _reference_query(pts, feats, q.reshape(-1, 3), 6, how).view(2, 7, 4)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # a camera at the origin looking down +z ignores neighbours with z <= 0
    cam = CameraParameters.from_fov(60, 16, 16)
    got = mem.query(q, camera_params=cam, aggregation=how)
    ref = _reference_query(pts, feats, q.reshape(-1, 3), 6, how, lambda p: p[:, 2] > 0).view(2, 7, 4)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_query_uses_colours_without_features():
    mem = GlobalGeometricMemory(num_neighbors=2, merge_threshold=0.0)
    mem.initialize(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [9.0, 0, 0]]), colors=torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    torch.testing.assert_close(mem.query(torch.tensor([[[0.4, 0, 0]]])), torch.tensor([[[0.5, 0.5, 0.0]]]))


def _depth_cloud(size=24):
    cam = CameraParameters.from_fov(60, size, size)
    v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    depth = 2.0 + 0.1 * torch.sin(u / 3.0) + 0.05 * v / size
    pts = unproject(depth, cam).reshape(-1, 3)
    colors = torch.rand(size * size, 3, generator=torch.Generator().manual_seed(6))
    return cam, pts, colors


def test_render_reproduces_the_source_view():
    cam, pts, colors = _depth_cloud()
    mem = GlobalGeometricMemory(merge_threshold=0.001)  # below the point spacing: nothing merges
    assert mem.initialize(pts, colors=colors).num_merged == 0
    out = mem.render(cam, radius=1)
    assert out.mask.all()
    torch.testing.assert_close(out.rgb[0], colors.T.reshape(3, 24, 24))
    assert mem.render(cam).rgb.shape == (1, 3, 24, 24)  # default radius 2


def test_inject_to_latent_shapes_and_values():
    cam, pts, _ = _depth_cloud(8)
    feats = torch.randn(64, 4, generator=torch.Generator().manual_seed(7))
    mem = GlobalGeometricMemory(feature_dim=4, merge_threshold=0.0, render_radius=1)
    mem.initialize(pts, features=feats)
    B, T, C = 2, 3, 4
    cams = CameraParameters.stack([cam] * T).rescale(32, 32)  # rescaled back to the latent's 8x8
    latent = torch.randn(B, T, C, 8, 8, generator=torch.Generator().manual_seed(8))
    rendered = feats.T.reshape(4, 8, 8)
    add = mem.inject_to_latent(latent, cams, "addition")
    torch.testing.assert_close(add, latent + rendered)
    cat = mem.inject_to_latent(latent, CameraParameters.stack([cam] * (B * T)), "concatenation")
    assert cat.shape == (B, T, C + 4 + 1, 8, 8)
    torch.testing.assert_close(cat[:, :, C : C + 4], rendered.expand(B, T, 4, 8, 8))
    assert (cat[:, :, -1] == 1).all()
    att = mem.inject_to_latent(latent, cams, "cross_attention")
    assert att.shape == latent.shape
    # reference at pixel (3,4) of batch 1, frame 2: softmax over its 3x3 window
    x = latent[1, 2, :, 3, 4]
    window = rendered[:, 2:5, 3:6].reshape(4, 9)
    attn = torch.softmax(x @ window / 2.0, 0)
    torch.testing.assert_close(att[1, 2, :, 3, 4], x + window @ attn)
    # frames whose camera sees nothing keep the latent unchanged
    away = CameraParameters.from_fov(60, 8, 8, c2w=torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])))
    same = mem.inject_to_latent(latent[:, :1], away, "cross_attention")
    torch.testing.assert_close(same, latent[:, :1])


def test_save_load_round_trip_and_bad_files(tmp_path):
    gen = torch.Generator().manual_seed(9)
    mem = GlobalGeometricMemory(feature_dim=2, num_neighbors=4, index_type="ball_tree", max_points=900, merge_threshold=0.05)
    mem.initialize(torch.rand(500, 3, generator=gen), features=torch.randn(500, 2, generator=gen))
    mem.update(torch.rand(300, 3, generator=gen), torch.eye(4), features=torch.randn(300, 2, generator=gen))
    path = mem.save(tmp_path / "ggm.safetensors")
    loaded = GlobalGeometricMemory.load(path)
    assert loaded.config == mem.config
    for name in ("points", "colors", "features", "weights", "stamps"):
        assert torch.equal(getattr(loaded, name), getattr(mem, name)), name
    assert loaded.views[0] is None and torch.equal(loaded.views[1], torch.eye(4))
    # it keeps working: same result as the original for the same update
    new = torch.rand(100, 3, generator=gen)
    f = torch.randn(100, 2, generator=gen)
    assert loaded.update(new, features=f) == mem.update(new, features=f)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MemoryFileError, match="truncated"):
        GlobalGeometricMemory.load(tmp_path / "cut.safetensors")
    save_file({"points": torch.zeros(3, 3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(MemoryFileError, match="not written by"):
        GlobalGeometricMemory.load(tmp_path / "foreign.safetensors")
    with pytest.raises(ShapeMismatchError, match="points"):
        bad = mem.state_dict()
        bad["points"] = bad["points"][:, :2]
        mem.load_state_dict(bad)


def test_cuda_request_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ws_engine.device, "_warned", False)
    with pytest.warns(RuntimeWarning, match="CUDA"):
        mem = GlobalGeometricMemory(device="cuda")
    assert mem.device.type == "cpu"


def test_bad_inputs_raise_clear_errors():
    mem = GlobalGeometricMemory()
    with pytest.raises(EmptyMemoryError, match="initialize"):
        mem.render(CameraParameters.from_fov(60, 8, 8))
    with pytest.raises(EmptyMemoryError):
        mem.query(torch.zeros(1, 2, 3))
    with pytest.raises(EmptyMemoryError):
        mem.knn(torch.zeros(2, 3), 3)
    with pytest.raises(EmptyPointCloudError):
        mem.initialize(torch.zeros(0, 3))
    with pytest.raises(ShapeMismatchError, match=r"\(N,3\)"):
        mem.initialize(torch.zeros(5, 4))
    with pytest.raises(ShapeMismatchError, match="colors"):
        mem.initialize(torch.zeros(5, 3), colors=torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="NaN"):
        mem.initialize(torch.tensor([[0.0, math.nan, 0.0]]))
    with pytest.raises(ConfigError, match=">= 0"):
        mem.initialize(torch.zeros(2, 3), merge_threshold=-1)
    with pytest.raises(ConfigError, match="max_points"):
        GlobalGeometricMemory(max_points=0)
    for kwargs in ({"index_type": "octree"}, {"update_frequency": "sometimes"}, {"merge_strategy": "avg"}):
        with pytest.raises(UnknownNameError):
            GlobalGeometricMemory(**kwargs)
    mem.initialize(torch.rand(10, 3))
    assert len(mem) == 10  # a failed call changes nothing: the errors above came before any work
    with pytest.raises(UnknownNameError, match="merge strategy"):
        mem.update(torch.rand(3, 3), merge_strategy="avg")
    with pytest.raises(ConfigError, match=">= 0"):
        mem.update(torch.rand(3, 3), merge_threshold=-0.1)
    with pytest.raises(ShapeMismatchError, match="camera_pose"):
        mem.update(torch.rand(3, 3), camera_pose=torch.eye(3))
    with pytest.raises(ShapeMismatchError, match="feature_dim"):
        mem.update(torch.rand(3, 3), features=torch.zeros(3, 2))
    with pytest.raises(UnknownNameError, match="aggregation"):
        mem.query(torch.zeros(1, 2, 3), aggregation="median")
    with pytest.raises(ShapeMismatchError, match=r"\(B,Q,3\)"):
        mem.query(torch.zeros(2, 3))
    latent = torch.zeros(1, 1, 8, 4, 4)
    cam = CameraParameters.from_fov(60, 8, 8)
    with pytest.raises(UnknownNameError, match="injection"):
        mem.inject_to_latent(latent, cam, "film")
    with pytest.raises(ShapeMismatchError, match="concatenation"):
        mem.inject_to_latent(latent, cam, "addition")
    with pytest.raises(ShapeMismatchError, match="T=1"):
        mem.inject_to_latent(latent, CameraParameters.stack([cam, cam, cam]), "concatenation")
    assert len(mem) == 10


@pytest.mark.parametrize("layout", ["random", "grid", "far"])
def test_hash_nearest_matches_candidates_and_brute_force(layout):
    """SpatialHash.nearest (own cell first, pruned neighbours) equals the nearest (lower row on
    ties) among all candidates, also on a grid with exact ties and points on cell boundaries."""
    from ws_engine.memory.point_index import SpatialHash, nearest_within

    gen = torch.Generator().manual_seed(5)
    r = 0.02
    if layout == "grid":
        stored = torch.randint(0, 30, (5000, 3), generator=gen).float() * (r / 2)
    else:
        stored = torch.rand(5000, 3, generator=gen) * 0.3 + (1000.0 if layout == "far" else 0.0)
    jitter = (torch.rand(2000, 3, generator=gen) - 0.5) * r
    query = torch.cat([stored[:2000] + jitter, stored[2000:2500], stored.min(0).values + torch.rand(2000, 3, generator=gen) * 0.3])
    h = SpatialHash(r)
    h.build(stored, torch.arange(len(stored)))
    got = h.nearest(query, stored.T.contiguous())
    assert torch.equal(got, nearest_within(len(query), *h.candidates(query, stored.T.contiguous())))
    d = torch.cdist(query.double(), stored.double())
    has = (d < r).any(1)
    assert torch.equal(got >= 0, has | (got >= 0))  # every query with a point within r finds one
    i = has.nonzero().squeeze(1)
    assert torch.allclose(d[i, got[i]], d[i].min(1).values, rtol=1e-5, atol=0)


def test_load_refuses_a_file_with_inconsistent_data(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    memory = GlobalGeometricMemory()
    memory.initialize(torch.rand(50, 3), colors=torch.rand(50, 3))
    path = memory.save(tmp_path / "memory.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state["colors"] = state["colors"][:10]  # a file edited or written by something else
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(MemoryFileError, match="inconsistent"):
        GlobalGeometricMemory.load(tmp_path / "bad.safetensors")
