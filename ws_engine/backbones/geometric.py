"""The training-free ``geometric`` backbone: memories in, frames out, on any CPU, deterministic.

For each target frame:

1. **Depth at the pixel centres.** The Global memory rendered with radius 1 holds, per pixel, a
   point projecting somewhere inside it. Each pixel centre takes the surface of the nearest
   projection around it, its depth from an inverse-depth plane fitted to that surface's points
   (:func:`pixel_centre_depth`). Points behind a gap of a nearer surface, or behind a surface drawn
   at the footprint of the pixels it came from, are hidden. The holes are completed preferring
   the background.
2. **Detail transfer by correspondence.** That depth, its 3x3 minimum and maximum are three
   hypotheses, lifted to 3D and projected into the best reference views of the Spatial-Stereo
   memory (frustum overlap and view angle, always with the condition view). A reference pixel
   counts where its depth agrees with the point's (four bilinear taps). The best-supported
   hypothesis wins: this picks the right side of a silhouette and closes the splats' cracks with
   exact colours. Only the most trusted sources blend (trust falls with every transfer and with
   the source's resolution), weighted by view angle.
3. **Memory fallback.** A pixel no reference confirms but the memory covers takes the memory's colour.
4. **Inpainting.** What is left is new content, filled with OpenCV from the background side
   (:func:`inpaint_background`); its depth is the background-preferring completion.

The model adds the new pixels to the Global memory and the frame to the Spatial-Stereo memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import CameraParameters
from ..errors import ConfigError, check_choice
from ..geometry import complete_background, complete_depth, project, render_points, unproject
from .base import Backbone, ChunkInputs, ChunkOutputs

__all__ = ["GeometricBackbone", "inpaint_background", "pixel_centre_depth", "INPAINT_METHODS"]

INPAINT_METHODS = ("auto", "telea", "ns", "fsr_fast", "fsr_best")


def _maxpool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max filter (H,W) with a size x size window."""
    return F.max_pool2d(x[None, None], size, stride=1, padding=size // 2)[0, 0]


def _seen_through(inv: torch.Tensor, valid: torch.Tensor, tolerance: float, gap: int, same: float = 0.05) -> torch.Tensor:
    """(H,W) bool: pixels whose point lies behind a gap in a nearer surface.

    That is: along a row, a column or a diagonal, the nearest points within ``gap`` pixels on both
    sides are nearer (inverse depth ``inv`` larger by ``tolerance``) and agree with each other
    within ``same`` (one surface on both sides, not two objects with the background between them).
    """
    H, W = inv.shape
    big = F.pad(torch.where(valid, inv, 0.0), (gap, gap, gap, gap))
    shifted = lambda dx, dy: big[gap + dy : gap + dy + H, gap + dx : gap + dx + W]  # noqa: E731
    through = torch.zeros_like(valid)
    for ax, ay in ((1, 0), (0, 1), (1, 1), (1, -1)):
        ahead = torch.stack([shifted(d * ax, d * ay) for d in range(1, gap + 1)]).amax(0)
        behind = torch.stack([shifted(-d * ax, -d * ay) for d in range(1, gap + 1)]).amax(0)
        nearer = (ahead > inv * (1 + tolerance)) & (behind > inv * (1 + tolerance))
        through |= nearer & ((ahead - behind).abs() <= same * torch.maximum(ahead, behind))
    return through & valid


def _footprint_cover(memory, camera: CameraParameters, classes=(3, 6, 10)) -> torch.Tensor:
    """Depth (H,W) of the memory's points drawn as disks as wide as the pixels they came from (0:
    none), for points wider than 1.5 target pixels; radii are rounded up to ``classes`` (pixels).
    A surface seen from much closer than it was observed is so opaque despite its sparse points."""
    pts, footprint = memory.points, memory.features[:, 1]
    _, z = project(pts, camera)
    z = z.reshape(-1)
    radius = footprint * camera.Kb[0, 0, 0].to(z) / z.clamp(min=1e-6)
    cover = torch.zeros(camera.height, camera.width, device=z.device)
    low = 1.5
    for r in classes:
        sel = ((radius > low) & (radius <= r) if r != classes[-1] else radius > low) & (z > 0)
        low = r
        if bool(sel.any()):
            d = render_points(pts[sel], pts[sel, :1], camera, radius=r).depth[0]
            cover = torch.where((d > 0) & ((cover == 0) | (d < cover)), d, cover)
    return cover


def pixel_centre_depth(
    points: torch.Tensor,
    index: torch.Tensor,
    camera: CameraParameters,
    tolerance: float = 0.01,
    reach: float = 1.5,
    gap: int = 4,
    occluder_depth: torch.Tensor | None = None,
    occluder_tolerance: float = 0.05,
):
    """Depth (H,W) at the pixel centres from a radius-1 point render (0 where no point is near),
    and the row of the point whose surface each pixel takes (H,W) long (-1: none).

    A rendered pixel holds the point that won its z-test, which projects anywhere inside it. Each
    pixel centre instead takes the surface of the nearest projection among the 3x3 neighbourhood's
    winners (within ``reach`` pixels): silhouettes fall halfway between the samples of the two
    surfaces, and one-pixel cracks close. Inverse depth is affine in image coordinates on a plane,
    so a plane fitted to 1/z of that surface's neighbours (within ``tolerance``) at their exact
    projections gives the depth at the centre. ``points`` (N,3) world; ``index`` (H,W) rows of
    ``points`` (-1: empty); ``occluder_depth`` (H,W) (0: none): winners farther than it by
    ``occluder_tolerance`` are hidden.
    """
    H, W = index.shape
    valid = index >= 0
    uv, z = project(points[index.clamp(min=0).reshape(-1)], camera)
    uv, z = uv.reshape(H, W, 2), z.reshape(H, W)
    grid = torch.stack(torch.meshgrid(torch.arange(H, device=z.device), torch.arange(W, device=z.device), indexing="ij")[::-1], -1)
    offset = torch.where(valid[..., None], uv - grid.to(uv), 0.0)  # (H,W,2): projection - pixel centre
    inv = torch.where(valid, 1.0 / z.clamp(min=1e-6), 0.0)
    feats = torch.stack([offset[..., 0], offset[..., 1], inv, valid.to(inv.dtype)])[None]  # (1,4,H,W)
    nb = F.unfold(F.pad(feats, (1, 1, 1, 1)), 3).reshape(4, 9, H, W)  # neighbour k of each pixel
    rows = F.unfold(F.pad(index[None, None].double(), (1, 1, 1, 1), value=-1), 3).reshape(9, H, W).long()
    shifts = torch.tensor([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=uv.dtype, device=uv.device)
    du = nb[0] + shifts[:, 0, None, None]  # neighbour's projection relative to this pixel's centre
    dv = nb[1] + shifts[:, 1, None, None]
    has = nb[3] > 0
    # a winner behind a gap of up to ``gap`` pixels in a nearer surface is occluded (no point of
    # that surface happened to land in its pixel): it does not count
    has[4] &= ~_seen_through(inv, valid, tolerance, gap)
    if occluder_depth is not None:  # behind a surface drawn at its true width
        has[4] &= ~((occluder_depth > 0) & (occluder_depth < z * (1 - occluder_tolerance)))
    has = F.unfold(F.pad(has[4].to(inv.dtype)[None, None], (1, 1, 1, 1)), 3).reshape(9, H, W) > 0
    dist2 = torch.where(has, du * du + dv * dv, torch.inf)
    nearest = dist2.argmin(0, keepdim=True)
    covered = dist2.gather(0, nearest)[0] <= reach * reach
    ref_inv = nb[2].gather(0, nearest)[0]
    same = has & ((nb[2] - ref_inv).abs() <= tolerance * ref_inv)
    w = same.to(uv.dtype)
    # weighted least squares for 1/z = a + b du + c dv; only a (the value at the centre) is needed:
    # Cramer's rule on the 3x3 normal equations, with a small ridge on b and c
    wu, wv, wi = w * du, w * dv, w * nb[2]
    s0, su, sv = w.sum(0), wu.sum(0), wv.sum(0)
    suu, suv, svv = (wu * du).sum(0) + 1e-4, (wu * dv).sum(0), (wv * dv).sum(0) + 1e-4
    r0, ru, rv = wi.sum(0), (wi * du).sum(0), (wi * dv).sum(0)
    det = s0 * (suu * svv - suv * suv) - su * (su * svv - suv * sv) + sv * (su * suv - suu * sv)
    num = r0 * (suu * svv - suv * suv) - su * (ru * svv - suv * rv) + sv * (ru * suv - suu * rv)
    enough = (s0 >= 4) & (det > 1e-3 * s0 * suu * svv)  # well-conditioned fits only
    a = num / torch.where(enough, det, 1.0)
    fitted = torch.where(enough & (a > 0), a, ref_inv).clamp(min=ref_inv * (1 - tolerance), max=ref_inv * (1 + tolerance))
    chosen = torch.where(covered, rows.gather(0, nearest)[0], -1)
    return torch.where(covered, 1.0 / fitted.clamp(min=1e-12), 0.0), chosen


def _cv2():
    import cv2

    return cv2


def _resolve_inpaint(method: str) -> str:
    """``auto`` is Telea: FSR (cv2.xphoto) reconstructs texture better but costs ~0.5 s per 512x512
    frame, a third of the demo's budget; choose ``fsr_fast``/``fsr_best`` for quality."""
    return "telea" if method == "auto" else method


def _run_inpaint(rgb8: np.ndarray, mask8: np.ndarray, method: str, radius: int) -> np.ndarray:
    """OpenCV inpainting of ``mask8`` (H,W uint8, 255 = fill) in ``rgb8`` (H,W,3 uint8)."""
    cv2 = _cv2()
    if method in ("telea", "ns"):
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(rgb8, mask8, radius, flag)
    if not hasattr(cv2, "xphoto"):
        raise ConfigError(
            f"inpaint method {method!r} needs OpenCV's contrib modules (cv2.xphoto); "
            "install opencv-contrib-python-headless or use inpaint='telea'."
        )
    # FSR works on the bounding box of the holes (plus context) only: its cost grows with the area
    ys, xs = np.nonzero(mask8)
    pad = 24
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, mask8.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, mask8.shape[1])
    crop = np.ascontiguousarray(rgb8[y0:y1, x0:x1])
    known = np.where(mask8[y0:y1, x0:x1] > 0, 0, 255).astype(np.uint8)
    filled = crop.copy()
    algo = cv2.xphoto.INPAINT_FSR_FAST if method == "fsr_fast" else cv2.xphoto.INPAINT_FSR_BEST
    cv2.xphoto.inpaint(crop, known, filled, algo)
    out = rgb8.copy()
    out[y0:y1, x0:x1] = filled
    return out


def inpaint_background(
    rgb: torch.Tensor, hole: torch.Tensor, depth: torch.Tensor, *, method: str = "auto", radius: int = 5, band: int = 6, tolerance: float = 0.1
) -> torch.Tensor:
    """Fill ``hole`` (H,W bool) in ``rgb`` (3,H,W) from the background side; returns (3,H,W).

    ``depth`` (H,W) is known everywhere (holes carry their completed, background depth). Pixels
    within ``band`` of a hole that are nearer than the hole's depth by more than ``tolerance``
    are foreground: for the inpainting they are replaced by the background continued under them
    (the colours of the background-preferring completion), so the fill extends the far surface and
    no foreground colour leaks into a disocclusion. Pixels outside the hole are returned unchanged.
    """
    if not bool(hole.any()):
        return rgb
    method = _resolve_inpaint(check_choice("inpaint method", method, INPAINT_METHODS))
    size = 2 * band + 1
    near_hole = _maxpool(hole.float(), size) > 0
    hole_depth = _maxpool(torch.where(hole, depth, 0.0), size)
    foreground = near_hole & ~hole & (depth < hole_depth * (1 - tolerance))
    source = rgb
    if bool(foreground.any()):
        _, background = complete_background(depth, ~(hole | foreground), rgb)
        source = torch.where(foreground[None], background, rgb)
    rgb8 = (source.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    mask8 = hole.to(torch.uint8).cpu().numpy() * 255
    filled = _run_inpaint(np.ascontiguousarray(rgb8), mask8, method, radius)
    filled = torch.from_numpy(filled).to(rgb.device).permute(2, 0, 1).float() / 255
    return torch.where(hole[None], filled, rgb)


class GeometricBackbone(Backbone):
    """Training-free backbone (see the module docstring). Config keys and defaults: :attr:`DEFAULTS`."""

    name = "geometric"
    chunk_size = 1
    size_multiple = 2
    render_radius = 1  # a sparse but exact depth map; cracks are closed by the transfer
    DEFAULTS = {
        "num_references": 4,  # reference views per frame (best frustum overlap and view angle)
        "depth_tolerance": 0.04,  # relative depth agreement for a reference pixel to see a point
        "angle_sigma": 10.0,  # degrees; weight exp(-angle²/2σ²) of a reference by its view angle
        "inpaint": "auto",  # auto (= telea) | telea | ns | fsr_fast | fsr_best (cv2.xphoto, slower)
        "inpaint_radius": 5,
        "background_band": 6,  # pixels around a hole whose foreground is not used as a source
        "trust_margin": 0.05,  # sources within this confidence of the most trusted one blend
        "transfer_decay": 0.9,  # confidence of a transferred pixel = its sources' x this
        "edge_confidence": 0.5,  # confidence factor of pixels beside a depth edge
        "memory_confidence": 0.7,  # a pixel only the Global memory covers: its point's confidence x this
        "inpainted_confidence": 0.2,  # confidence of an inpainted pixel
    }

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        config.pop("backbone", None)
        unknown = sorted(set(config) - set(self.DEFAULTS))
        if unknown:
            raise ConfigError(
                f"Unknown option(s) {', '.join(unknown)} for the geometric backbone; valid: {', '.join(sorted(self.DEFAULTS))}."
            )
        merged = {**self.DEFAULTS, **config}
        check_choice("inpaint method", merged["inpaint"], INPAINT_METHODS)
        if not (isinstance(merged["num_references"], int) and merged["num_references"] >= 1):
            raise ConfigError(f"num_references must be a positive integer, got {merged['num_references']!r}.")
        for key in ("depth_tolerance", "angle_sigma"):
            if not (isinstance(merged[key], (int, float)) and merged[key] > 0):
                raise ConfigError(f"{key} must be a positive number, got {merged[key]!r}.")
        super().__init__(merged)

    # ------------------------------------------------------------------------------------------
    def check(self, use_geometric_memory: bool, use_spatial_memory: bool) -> None:
        if not (use_geometric_memory or use_spatial_memory):
            raise ConfigError("The geometric backbone needs at least one memory: enable use_geometric_memory or use_spatial_memory.")

    def fill(self, inputs: ChunkInputs) -> ChunkOutputs:
        outs = [self._fill_frame(inputs, t) for t in range(len(inputs.cameras))]
        frames, depth, conf, holes, prior = (torch.stack(x) for x in zip(*outs))
        return ChunkOutputs(frames, depth, conf, new_pixels=holes, extras={"holes": holes, "prior": prior})

    def _fill_frame(self, inputs: ChunkInputs, t: int):
        cam = inputs.cameras[t]
        H, W = cam.height, cam.width
        cfg = self.config
        refs = self._references(inputs, cam)
        known_depth, known_rgb, known, known_trust = self._geometry(inputs, t, refs, cam)
        if not bool(known.any()):
            depth_full = torch.full((H, W), self._fallback_depth(inputs, cam), device=cam.device)
        else:
            depth_full = complete_depth(known_depth, known)
        # depth hypotheses: own, near (3x3 min), far (3x3 max); the best-supported wins, ties go to
        # the earlier one; near and far are only tried where they differ from own
        tol = cfg["depth_tolerance"]
        X = unproject(depth_full, cam).reshape(-1, 3)
        colour, conf, best, resolution = self._transfer(X, cam, refs, grid=(H, W))
        best = torch.where(best > 0.5, best, 0.5)  # a hypothesis needs support > 0.5
        depth = depth_full.reshape(-1).clone()
        for d in (-_maxpool(-depth_full, 3), _maxpool(depth_full, 3)):
            idx = ((d - depth_full).abs() > tol * depth_full).reshape(-1).nonzero()[:, 0]
            if not len(idx) or not refs:
                continue
            c, cf, sp, _ = self._transfer(unproject(d, cam).reshape(-1, 3)[idx], cam, refs, resolution=resolution[:, idx])
            take = sp > best[idx] + 0.05
            sel = idx[take]
            colour[sel], conf[sel], best[sel], depth[sel] = c[take], cf[take], sp[take], d.reshape(-1)[sel]
        done = (best > 0.5).reshape(H, W)
        rgb, conf, depth = colour.T.reshape(3, H, W), conf.reshape(H, W), depth.reshape(H, W)
        from_memory = known & ~done
        rgb = torch.where(from_memory[None], known_rgb, rgb)
        depth = torch.where(from_memory, known_depth, depth)
        conf = torch.where(from_memory, known_trust * cfg["memory_confidence"], conf)
        # a pixel beside a depth edge may belong to either surface at sub-pixel level: less certain
        edge = _maxpool(depth, 3) > -_maxpool(-depth, 3) * (1 + cfg["depth_tolerance"])
        conf = torch.where(edge, conf * cfg["edge_confidence"], conf)
        hole = ~(done | known)
        prior = rgb
        rgb = inpaint_background(rgb, hole, depth, method=cfg["inpaint"], radius=cfg["inpaint_radius"], band=cfg["background_band"])
        conf = torch.where(hole, torch.full_like(conf, cfg["inpainted_confidence"]), conf)
        return rgb.clamp(0, 1), depth, conf, hole, prior

    # ------------------------------------------------------------------------------------------
    def _references(self, inputs: ChunkInputs, cam: CameraParameters) -> list[dict]:
        """Up to ``num_references`` stored views with pixel data, best first, plus the first view."""
        ssm = inputs.spatial_memory
        if not inputs.use_spatial_memory or not ssm.views:
            return []
        usable = [i for i, v in enumerate(ssm.views) if v.get("image") is not None and v.get("depth") is not None]
        if not usable:
            return []
        scores = ssm.view_scores(cam)[0]  # (V,)
        order = sorted(usable, key=lambda i: (-float(scores[i]), i))[: self.config["num_references"]]
        if usable[0] not in order and float(scores[usable[0]]) > 0:
            order.append(usable[0])  # the first view (the condition image) is the most trusted source
        return [ssm.views[i] for i in order]

    def _geometry(self, inputs: ChunkInputs, t: int, refs: list[dict], cam: CameraParameters):
        """Depth (H,W), colours (3,H,W), coverage (H,W) bool and stored confidence (H,W) of what the memories hold."""
        if inputs.use_geometric_memory and len(inputs.global_memory):
            r = inputs.renders if inputs.renders is not None else inputs.global_memory.render(cam, radius=1)
            t = t if inputs.renders is not None else 0
            mem = inputs.global_memory
            cover = _footprint_cover(mem, cam) if mem.feature_dim == 2 else None
            depth, rows = pixel_centre_depth(mem.points, r.index[t], cam, occluder_depth=cover)
            trust = mem.features[rows.clamp(min=0), 0] if mem.feature_dim == 2 else torch.ones_like(depth)
            return depth, mem.colors[rows.clamp(min=0)].permute(2, 0, 1), depth > 0, trust
        # no Global memory: splat the reference views' own depth maps instead
        H, W = cam.height, cam.width
        if not refs:
            zero = torch.zeros(H, W, device=cam.device)
            return zero, torch.zeros(3, H, W, device=cam.device), zero.bool(), zero
        pts, cols = [], []
        for ref in refs:
            valid = ref["depth"] > 0
            pts.append(unproject(ref["depth"], ref["camera"])[valid])
            cols.append(ref["image"].permute(1, 2, 0)[valid])
        pts, cols = torch.cat(pts), torch.cat(cols)
        out = render_points(pts, cols, cam, radius=1)
        depth, rows = pixel_centre_depth(pts, out.index[0], cam)
        return depth, cols[rows.clamp(min=0)].permute(2, 0, 1), depth > 0, torch.ones_like(depth)

    def _fallback_depth(self, inputs: ChunkInputs, cam: CameraParameters) -> float:
        """A constant depth for a frame that sees nothing known: median distance of the memory."""
        mem = inputs.global_memory
        if len(mem):
            pts = mem.points[:: max(1, len(mem) // 20000)]
            return float((pts - cam.position.reshape(1, 3)).norm(dim=1).median())
        return 1.0

    def _transfer(self, X: torch.Tensor, cam: CameraParameters, refs: list[dict], *, grid=None, resolution=None):
        """Colours (N,3), confidence (N,), support (N,) in [0,1] and source resolution (R,N) of the
        points X (N,3) seen by ``cam``.

        The support is the fraction of the used references' bilinear taps that see the point (1:
        clearly visible, about 0.5: on a silhouette of the reference, 0: not seen); it scales the
        confidence. The resolution of each reference (its linear sampling rate relative to the
        target, at most 1) is measured on the pixel ``grid`` (H,W) when X covers the whole image,
        or taken from ``resolution``.
        """
        N = X.shape[0]
        if not refs:
            zero = torch.zeros(N, device=X.device)
            return torch.zeros(N, 3, device=X.device), zero, zero, torch.zeros(0, N, device=X.device)
        tol, sigma = self.config["depth_tolerance"], math.radians(self.config["angle_sigma"])
        to_target = F.normalize(cam.position.reshape(1, 3).to(X) - X, dim=1)
        samples, resolutions = [], []
        for r, ref in enumerate(refs):
            colour, visible, conf, uv = _sample_visible(ref, X, tol)
            to_ref = F.normalize(ref["camera"].position.reshape(1, 3).to(X) - X, dim=1)
            angle = torch.acos((to_target * to_ref).sum(1).clamp(-1, 1))
            # a source that saw the surface at a lower resolution (foreshortened, farther) knows less
            res = _area_scale(uv.reshape(*grid, 2)).reshape(-1).clamp(max=1.0).sqrt() if resolution is None else resolution[r]
            resolutions.append(res)
            samples.append((colour, visible, conf * res, torch.exp(-0.5 * (angle / sigma) ** 2)))
        colours, visible, confs, angle_w = (torch.stack(x) for x in zip(*samples))  # (R,N,3), (R,N) ...
        seen = visible >= 0.5
        # only the most trusted sources blend (each transfer lowers trust, so resampling does not
        # compound blur); among them, closer view angles weigh more
        best = torch.where(seen, confs, -1.0).amax(0)
        w = seen * (confs >= best - self.config["trust_margin"]) * (angle_w + 1e-6)
        den = w.sum(0)
        norm = den.clamp(min=1e-12)
        support = torch.where(den > 0, (w * visible).sum(0) / norm, 0.0)
        rgb = (w[..., None] * colours).sum(0) / norm[:, None]
        conf = (w * confs).sum(0) / norm * support * self.config["transfer_decay"]
        return rgb, conf, support, torch.stack(resolutions)


def _area_scale(uv: torch.Tensor) -> torch.Tensor:
    """|det| of the Jacobian (H,W) of a map from target pixels to source positions uv (H,W,2):
    source pixels per target pixel (< 1 where the source saw the surface at a lower resolution)."""
    du = torch.cat([uv[:, 1:] - uv[:, :-1], uv[:, -1:] - uv[:, -2:-1]], 1)  # d/dx
    dv = torch.cat([uv[1:] - uv[:-1], uv[-1:] - uv[-2:-1]], 0)  # d/dy
    return (du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0]).abs()


def _sample_visible(ref: dict, X: torch.Tensor, tol: float):
    """Colour (N,3), visible fraction (N,) in [0,1], confidence (N,) and projections uv (N,2) of
    points X (N,3) in a view.

    Four bilinear taps around each projection; a tap counts where the view's depth agrees with the
    point's depth within ``tol`` (relative). Colours are the bilinear mix of the counting taps.
    """
    cam, image, depth = ref["camera"], ref["image"], ref["depth"]
    confidence = ref.get("confidence")
    H, W = depth.shape
    uv, z = project(X, cam)
    uv, z = uv.reshape(-1, 2), z.reshape(-1, 1)
    base = uv.floor()
    frac = uv - base
    taps = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=uv.dtype, device=uv.device)
    pos = base[:, None, :] + taps  # (N,4,2)
    fx, fy = frac[:, None, 0], frac[:, None, 1]
    weight = torch.where(taps[:, 0] > 0, fx, 1 - fx) * torch.where(taps[:, 1] > 0, fy, 1 - fy)  # (N,4)
    inside = (pos[..., 0] >= 0) & (pos[..., 0] <= W - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= H - 1) & (z > 0)
    idx = torch.where(inside, pos[..., 1] * W + pos[..., 0], 0).long()
    d = depth.reshape(-1)[idx]
    ok = inside & (d > 0) & ((d - z).abs() <= tol * z)
    weight = torch.where(ok, weight, 0.0)
    visible = weight.sum(1)
    norm = visible.clamp(min=1e-12)[:, None]
    colour = torch.einsum("nk,nkc->nc", weight, image.permute(1, 2, 0).reshape(-1, 3)[idx]) / norm
    conf = torch.ones_like(visible) if confidence is None else (weight * confidence.reshape(-1)[idx]).sum(1) / norm[:, 0]
    return colour, visible, conf, uv
