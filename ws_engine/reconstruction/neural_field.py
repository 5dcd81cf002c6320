"""Neural-field reconstruction: a dense voxel radiance field fitted to the frames on the CPU.

The field is a grid (default 96 voxels along the longest side of the robust scene bounds) of a
density and three colour logits, read by trilinear interpolation (``grid_sample``). Density is
``softplus(raw) / voxel_size`` (softplus(raw) is the optical thickness of one voxel), colour
``sigmoid(raw)``. It starts from a TSDF fusion of the depth maps on its own grid (a dense shell a
few voxels thick at the fused surface, coloured by the fused colours; empty space transparent)
and is then fitted by Adam to random batches of pixels of all frames with volume rendering.

Sampling: a cheap coarse pass (no gradients) over the density finds the band where each ray meets
matter, and the stratified samples go into that band only, so empty space costs nothing and 32
samples resolve a surface to a fraction of a voxel. Colours are read only at samples that carry
weight. The loss is an RGB loss, a confidence-weighted relative depth loss on pixels with known
depth (the expected ray depth, any transparent remainder counted at the far bound) and a
total-variation regulariser on a random block of the grid. Every random draw comes from a seeded
``torch.Generator``, so a run is reproducible.

Export ``"points"``: each frame rendered on a pixel lattice, one point at the expected depth of
every ray the field makes opaque, coloured by the render, normals from the density gradient.
Export ``"mesh"``: marching cubes on the per-voxel optical thickness at ``density_threshold``
(space the depth maps never observed counts as solid, and faces touching it are dropped, so the
back of the shell and the frustum borders make no surface), vertex colours read from the field,
faces facing free space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import EmptyPointCloudError
from .inputs import Observations, Option, scene_bounds
from .tsdf import allocate_volume, compact_vertices, dense_tsdf, integrate_frame, observed_surface, uphill
from .types import Mesh, vertex_normals

__all__ = [
    "NEURAL_FIELD_OPTIONS",
    "VoxelRadianceField",
    "initialize_from_depth",
    "render_rays",
    "fit_field",
    "field_psnr",
    "export_points",
    "export_mesh",
    "reconstruct_neural_field",
]

NEURAL_FIELD_OPTIONS = {
    "resolution": Option(96, int, 8, 256),
    "iterations": Option(250, int, 0, 100_000),
    "rays_per_batch": Option(4096, int, 16, 1 << 18),
    "samples_per_ray": Option(32, int, 4, 1024),
    "learning_rate": Option(0.05, float, 0, low_open=True),
    "depth_weight": Option(0.2, float, 0),
    "tv_weight": Option(0.01, float, 0),
    "seed": Option(0, int),
    "export": Option("points", str, choices=("points", "mesh")),
    "max_points": Option(300_000, int, 1),
    "density_threshold": Option(1.0, float, 0, low_open=True),
    "eval_rays": Option(16_384, int, 1),
}
_EMPTY_RAW, _FULL_RAW = -9.0, 4.0  # softplus: 1e-4 and 4.0 optical thickness per voxel
_SHELL_VOXELS = 3
_RAY_CHUNK = 16_384
_OCCUPANCY_EVERY = 16
_TV_BLOCK = 32
_MAX_OPTICAL_DEPTH = 30.0
_MIN_WEIGHT = 1e-4  # samples lighter than this skip the colour read


class VoxelRadianceField(torch.nn.Module):
    """Density and RGB on a voxel grid over the box [lo, hi] (voxel centres on its corners).

    ``density`` (1,1,Z,Y,X) raw thickness, ``color`` (1,3,Z,Y,X) logits; ``occupancy``
    (1,2,Z,Y,X): the thickness max-pooled over 3x3x3 voxels, and the thickness (coarse pass);
    ``observed`` (X,Y,Z) bool: voxels the depth maps observed (set by ``initialize_from_depth``).
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, dims: tuple[int, int, int]):
        super().__init__()
        self.register_buffer("lo", lo.float())
        self.register_buffer("hi", hi.float())
        self.dims = dims  # (X,Y,Z)
        self.voxel_size = float(((hi - lo) / (torch.tensor(dims, device=lo.device) - 1)).max())
        X, Y, Z = dims
        self.density = torch.nn.Parameter(torch.full((1, 1, Z, Y, X), _EMPTY_RAW, device=lo.device))
        self.color = torch.nn.Parameter(torch.zeros(1, 3, Z, Y, X, device=lo.device))
        self.register_buffer("observed", torch.ones(dims, dtype=torch.bool, device=lo.device))
        self.refresh_occupancy()

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """Points (...,3) in grid_sample coordinates ([-1,1] over the box)."""
        return (points - self.lo) * (2 / (self.hi - self.lo)) - 1

    @staticmethod
    def sample(volume: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Trilinear values (C,S) of ``volume`` (1,C,Z,Y,X) at normalised coordinates g (S,3)."""
        out = F.grid_sample(volume, g.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(volume.shape[1], -1)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (S,) in 1/scene units (0 outside the box) and colour (S,3) in [0,1] at points (S,3)."""
        g = self.normalized(points)
        inside = (g.abs() <= 1).all(1)
        sigma = F.softplus(self.sample(self.density, g)[0]) / self.voxel_size * inside
        return sigma, torch.sigmoid(self.sample(self.color, g).T)

    @torch.no_grad()
    def refresh_occupancy(self) -> None:
        """Recompute ``occupancy`` from the current density."""
        thick = F.softplus(self.density.detach())
        self.occupancy = torch.cat([F.max_pool3d(thick, 3, 1, 1), thick], 1)

    def thickness(self) -> torch.Tensor:
        """Optical thickness of one voxel (X,Y,Z): softplus of the raw density."""
        return F.softplus(self.density[0, 0].detach()).permute(2, 1, 0)


def _plan(obs: Observations, resolution: int):
    """Box (lo, hi) and dims (X,Y,Z) of cubic voxels over the padded robust depth bounds."""
    lo, hi = scene_bounds(obs)
    extent = float((hi - lo).max())
    voxel = max(extent, obs.pixel_footprint() * 16) / (resolution - 1)
    lo, hi = lo - 3 * voxel, hi + 3 * voxel
    dims = tuple(int(n) for n in (torch.ceil((hi - lo) / voxel) + 1).tolist())
    hi = lo + (torch.tensor(dims, dtype=lo.dtype, device=lo.device) - 1) * voxel
    return lo, hi, dims


def initialize_from_depth(field: VoxelRadianceField, obs: Observations) -> int:
    """Start from a TSDF fusion of the depth maps on the field's grid (truncation
    ``_SHELL_VOXELS``): voxels from half a voxel in front of the fused surface to the truncation
    behind it are dense and take the fused colour, the rest are transparent, with colours spread
    from dense neighbours so trilinear reads stay on-colour. Returns the number of dense voxels."""
    X, Y, Z = field.dims
    vol = allocate_volume(obs, field.lo, field.voxel_size, field.dims, block=_SHELL_VOXELS)
    centers = vol.centers()
    for t in range(obs.num_frames):
        integrate_frame(vol, centers, obs, t, _SHELL_VOXELS, 0.0)
    tsdf, seen = dense_tsdf(vol)  # (X,Y,Z)
    occupied = (seen & (tsdf <= 0.5 / _SHELL_VOXELS)).permute(2, 1, 0)[None, None]  # (1,1,Z,Y,X)
    colored = (vol.voxels < torch.tensor(field.dims, device=vol.voxels.device)).all(1) & (vol.color_weight > 0)
    dev = centers.device
    weight = torch.zeros(1, 1, Z, Y, X, device=dev)
    color = torch.zeros(1, 3, Z, Y, X, device=dev)
    x, y, z = vol.voxels[colored].unbind(1)
    weight[0, 0, z, y, x] = 1.0
    color[0, :, z, y, x] = vol.color[colored].T
    for _ in range(3):
        color = torch.where(weight > 0, color, F.avg_pool3d(color, 3, 1, 1) * 27)
        weight = torch.where(weight > 0, weight, F.avg_pool3d(weight, 3, 1, 1) * 27)
    rgb = torch.where(weight > 0, color / weight.clamp(min=1e-12), 0.5).clamp(0.02, 0.98)
    with torch.no_grad():
        field.density.copy_(torch.where(occupied, _FULL_RAW, _EMPTY_RAW))
        field.color.copy_(torch.logit(rgb))
        field.observed.copy_(seen)
    field.refresh_occupancy()
    return int(occupied.sum())


def _rays(obs: Observations, frame: torch.Tensor, pix: torch.Tensor):
    """World origins (R,3) and directions (R,3) (camera z = 1) of flat pixel indices pix (R,) of frames (R,)."""
    W = obs.depths.shape[-1]
    return obs.rays(frame, (pix % W).float(), (pix // W).float())


def _box_interval(origins, dirs, lo, hi, near: float):
    """Entry and exit ray parameters (R,) of the box; exit = entry where the ray misses it."""
    inv = 1 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    enter = torch.minimum(t0, t1).amax(1).clamp(min=near)
    leave = torch.maximum(t0, t1).amin(1)
    return enter, torch.maximum(leave, enter)


def _positions(g0, dg, t0, step, n: int, jitter):
    """Ray parameters (R,n) of samples t0 + (i + jitter)·step and their normalised points (R,n,3)."""
    t = t0[:, None] + (torch.arange(n, device=g0.device, dtype=g0.dtype) + jitter) * step[:, None]
    return t, torch.addcmul(g0[:, None], t[..., None], dg[:, None])


def _occupied_band(field: VoxelRadianceField, g0, dg, scale, enter, leave, n_coarse: int):
    """Where each ray meets matter: (lo, hi) (R,) from a coarse pass over ``field.occupancy``.

    The band starts two midpoint samples before the opacity accumulated through the dilated
    thickness reaches 1% (a coarse step cannot jump over a dilated surface) and ends three samples
    after the opacity of the true thickness reaches 99% (a ray grazing a dilated surface goes on),
    or at the exit; a ray that meets nothing keeps its whole interval.
    """
    step = (leave - enter) / n_coarse
    t, g = _positions(g0, dg, enter, step, n_coarse, 0.5)
    thick = field.sample(field.occupancy, g.view(-1, 3)).view(2, *t.shape)
    depth = torch.cumsum(thick, 2) * (step * scale)[:, None]  # optical depth so far
    begins, ends = depth[0] >= -math.log(0.99), depth[1] >= -math.log(0.01)
    first = begins.float().argmax(1)
    last = torch.where(ends.any(1), ends.float().argmax(1), n_coarse - 1)
    met = begins.any(1)
    lo = torch.where(met, enter + (first - 2).clamp(min=0) * step, enter)
    hi = torch.where(met, torch.minimum(enter + (last + 3) * step, leave), leave)
    return lo, hi


def render_rays(field: VoxelRadianceField, origins, dirs, n_samples: int, near: float, generator=None):
    """Volume-render rays (R,3): colour (R,3), expected depth (R,) (the transparent remainder
    counted at the far bound), opacity (R,), depth of the opaque part alone (R,), and a (R,) mask
    of rays that cross the box.

    Samples are stratified inside the band where the ray meets matter (``_occupied_band``, with
    twice as many coarse samples; needs a current ``field.refresh_occupancy()``). ``generator``
    draws the jitter; None samples the bin centres (deterministic).
    """
    enter, leave = _box_interval(origins, dirs, field.lo, field.hi, near)
    g0 = field.normalized(origins)
    dg = dirs * (2 / (field.hi - field.lo))
    scale = dirs.norm(dim=1) / field.voxel_size  # voxels per unit of t
    with torch.no_grad():
        lo, hi = _occupied_band(field, g0, dg, scale, enter, leave, 2 * n_samples)
    jitter = 0.5 if generator is None else torch.rand(len(dirs), n_samples, generator=generator).to(dirs.device)
    step = (hi - lo) / n_samples
    t, g = _positions(g0, dg, lo, step, n_samples, jitter)
    g = g.view(-1, 3)
    tau = F.softplus(field.sample(field.density, g)[0]).view(t.shape) * (step * scale)[:, None]
    # transmittance after each sample; optical depth capped at 30 (transmittance 1e-13) so that
    # neither it nor its gradients sink towards float32 denormals (slow on CPUs)
    after = torch.exp(-torch.cumsum(tau, 1).clamp(max=_MAX_OPTICAL_DEPTH))
    w = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], 1) - after  # T_i · alpha_i
    heavy = (w.detach() > _MIN_WEIGHT).view(-1).nonzero().squeeze(1)
    rgb = torch.sigmoid(field.sample(field.color, g[heavy]).T)
    color = torch.zeros(len(dirs), 3, device=dirs.device).index_add(0, heavy // n_samples, w.view(-1)[heavy, None] * rgb)
    acc = 1 - after[:, -1]
    surface = (w * t).sum(1)
    return color, surface + after[:, -1] * leave, acc, surface / acc.clamp(min=1e-6), leave > enter


def _block_tv(field: VoxelRadianceField, generator: torch.Generator) -> torch.Tensor:
    """Mean squared difference of neighbouring voxels (density and colour) in a random block."""
    Z, Y, X = field.density.shape[2:]
    start = [int(torch.randint(max(n - _TV_BLOCK, 0) + 1, (1,), generator=generator)) for n in (Z, Y, X)]
    sl = (slice(None), slice(None), *[slice(s, s + _TV_BLOCK) for s in start])
    total = 0.0
    for grid in (field.density, field.color):
        block = grid[sl]
        total = total + sum((block.diff(dim=d) ** 2).mean() for d in (2, 3, 4))
    return total


def fit_field(field: VoxelRadianceField, obs: Observations, opts: dict, progress) -> tuple[float, float]:
    """Adam on random pixel batches (see module doc); returns the first and last batch loss."""
    T, H, W = obs.depths.shape
    g = torch.Generator().manual_seed(opts["seed"])
    near = field.voxel_size * 0.5
    opt = torch.optim.Adam(field.parameters(), lr=opts["learning_rate"])
    rgb_all = obs.frames.permute(0, 2, 3, 1).reshape(-1, 3)
    depth_all, conf_all = obs.depths.reshape(-1), obs.confidences.reshape(-1)
    first = last = float("nan")
    for it in range(opts["iterations"]):
        if it % _OCCUPANCY_EVERY == 0:
            field.refresh_occupancy()
        idx = torch.randint(T * H * W, (opts["rays_per_batch"],), generator=g).to(rgb_all.device)
        origins, dirs = _rays(obs, idx // (H * W), idx % (H * W))
        color, depth, _, _, hit = render_rays(field, origins, dirs, opts["samples_per_ray"], near, g)
        hitf = hit.float()
        loss = (((color - rgb_all[idx]) ** 2).mean(1) * hitf).sum() / hitf.sum().clamp(min=1)
        if opts["depth_weight"] > 0:
            d, c = depth_all[idx], conf_all[idx] * hitf
            rel = (depth - d).abs() / d.clamp(min=1e-6)
            loss = loss + opts["depth_weight"] * (rel * c).sum() / (c > 0).sum().clamp(min=1)
        if opts["tv_weight"] > 0:
            loss = loss + opts["tv_weight"] * _block_tv(field, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if it == 0 else first
        progress(it + 1, opts["iterations"], f"neural_field: iteration {it + 1}, loss {last:.4f}")
    field.refresh_occupancy()
    return first, last


@torch.no_grad()
def _render_pixels(field: VoxelRadianceField, obs: Observations, frame: torch.Tensor, pix: torch.Tensor, n_samples: int):
    """Colour, opacity, opaque depth, origins and directions of pixels ``pix`` (R,) of frames (R,)."""
    near = field.voxel_size * 0.5
    outs = []
    for s in range(0, len(pix), _RAY_CHUNK):
        origins, dirs = _rays(obs, frame[s : s + _RAY_CHUNK], pix[s : s + _RAY_CHUNK])
        color, _, acc, surface, _ = render_rays(field, origins, dirs, n_samples, near)
        outs.append((color, acc, surface, origins, dirs))
    return [torch.cat(x) for x in zip(*outs, strict=True)]


def field_psnr(field: VoxelRadianceField, obs: Observations, num_rays: int, n_samples: int, seed: int) -> float:
    """PSNR (dB) of the field's renders against the frames on ``num_rays`` seeded random pixels."""
    T, H, W = obs.depths.shape
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(T * H * W, (num_rays,), generator=g).to(obs.depths.device)
    color = _render_pixels(field, obs, idx // (H * W), idx % (H * W), n_samples)[0]
    target = obs.frames.permute(0, 2, 3, 1).reshape(-1, 3)[idx]
    mse = float(((color - target) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-10))


def _density_normals(field: VoxelRadianceField, points: torch.Tensor, toward: torch.Tensor) -> torch.Tensor:
    """Unit normals (N,3): minus the gradient of the voxel thickness, flipped to face ``toward`` (N,3)."""
    thick = F.softplus(field.density[0, 0].detach())  # (Z,Y,X)
    dz, dy, dx = torch.gradient(thick)
    n = -field.sample(torch.stack([dx, dy, dz])[None], field.normalized(points)).T
    n = torch.where(n.norm(dim=1, keepdim=True) > 1e-8, n, toward)
    n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.where(((n * toward).sum(1) < 0)[:, None], -n, n)


def export_points(field: VoxelRadianceField, obs: Observations, max_points: int, n_samples: int):
    """Surface points (N,3), colours (N,3), normals (N,3) from every frame (see module doc)."""
    T, H, W = obs.depths.shape
    stride = max(1, math.ceil(math.sqrt(T * H * W / max_points)))
    vv, uu = torch.meshgrid(torch.arange(0, H, stride), torch.arange(0, W, stride), indexing="ij")
    pix = (vv * W + uu).reshape(-1).to(obs.depths.device)
    frame = torch.arange(T, device=pix.device).repeat_interleave(len(pix))
    color, acc, surface, origins, dirs = _render_pixels(field, obs, frame, pix.repeat(T), n_samples)
    opaque = acc > 0.5
    if not bool(opaque.any()):
        raise EmptyPointCloudError("The fitted field is transparent everywhere; use more iterations or check the depths.")
    pts = origins[opaque] + surface[opaque, None] * dirs[opaque]
    cols = (color[opaque] / acc[opaque, None]).clamp(0, 1)
    normals = _density_normals(field, pts, -dirs[opaque])
    return pts, cols, normals


@torch.no_grad()
def export_mesh(field: VoxelRadianceField, threshold: float) -> Mesh:
    """Marching cubes of the voxel thickness at ``threshold`` (see module doc), colours from the field."""
    thick = field.thickness()
    seen = field.observed
    solid = torch.where(seen, thick, max(float(thick.max()), threshold) * 2)
    if not bool((thick[seen] > threshold).any() and (thick[seen] < threshold).any()):
        raise EmptyPointCloudError(
            f"No observed voxel of the field crosses density_threshold={threshold:g} (thickness range "
            f"{float(thick.min()):.3g}..{float(thick.max()):.3g}); pick a threshold inside that range."
        )
    verts, faces = observed_surface(solid, threshold, seen)
    if len(faces) == 0:
        raise EmptyPointCloudError("The field's surface lies only in unobserved space; use more iterations or frames.")
    if not uphill(verts, faces, -solid):
        faces = faces[:, [0, 2, 1]]
    faces, verts = compact_vertices(faces, verts)
    world = field.lo + verts * field.voxel_size
    return Mesh(world, faces, field(world)[1], vertex_normals(world, faces))


def reconstruct_neural_field(obs: Observations, opts: dict, progress):
    """Fit the field and export it; returns points, colours, normals, mesh (or None), figures."""
    lo, hi, dims = _plan(obs, opts["resolution"])
    field = VoxelRadianceField(lo.float(), hi.float(), dims)
    occupied = initialize_from_depth(field, obs)
    first, last = fit_field(field, obs, opts, progress)
    psnr = field_psnr(field, obs, opts["eval_rays"], opts["samples_per_ray"], opts["seed"])
    mesh = None
    if opts["export"] == "mesh":
        mesh = export_mesh(field, opts["density_threshold"])
        pts, cols, normals = mesh.vertices, mesh.vertex_colors, mesh.vertex_normals
    else:
        pts, cols, normals = export_points(field, obs, opts["max_points"], opts["samples_per_ray"])
    figures = {
        "iterations": int(opts["iterations"]),
        "initial_loss": float(first) if opts["iterations"] else 0.0,
        "final_loss": float(last) if opts["iterations"] else 0.0,
        "psnr": float(psnr),
        "grid_x": dims[0],
        "grid_y": dims[1],
        "grid_z": dims[2],
        "field_voxel_size": float(field.voxel_size),
        "initially_dense_voxels": occupied,
    }
    return pts.detach(), cols.detach(), normals.detach(), mesh, figures
