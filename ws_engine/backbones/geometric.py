"""The training-free ``geometric`` backbone: memories in, frames out, on any CPU, deterministic.

For each target frame:

1. **Depth hypotheses.** The Global memory rendered with radius 1 gives a sparse depth map; its
   background-preferring completion and that map's 3x3 minimum and maximum are three depth
   hypotheses per pixel (near surface, own, far surface). Splat cracks and silhouettes are where
   they differ.
2. **Detail transfer by correspondence.** Each hypothesis is lifted to 3D and projected into the
   best reference views of the Spatial-Stereo memory (frustum overlap and view angle). A reference
   pixel counts where its depth agrees with the point's (a visibility test on four bilinear taps),
   and the colours it sees are blended, weighted by tap, view angle and the view's confidence. The
   nearest hypothesis that some reference confirms wins: this picks the right side of a silhouette
   and closes the cracks of the splats with exact colours.
3. **Memory fallback.** A pixel no reference confirms but the memory covers takes the memory's colour.
4. **Inpainting.** What is left is new content. It is filled with OpenCV from the background side:
   foreground pixels next to a hole are masked too, so only the far surface feeds the fill.
5. **Depth** of the new pixels is the background-preferring completion.

The model adds the new pixels to the Global memory and the frame to the Spatial-Stereo memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import CameraParameters
from ..errors import ConfigError, check_choice
from ..geometry import complete_depth, project, render_points, unproject
from .base import Backbone, ChunkInputs, ChunkOutputs

__all__ = ["GeometricBackbone", "inpaint_background", "pixel_centre_depth", "INPAINT_METHODS"]

INPAINT_METHODS = ("auto", "telea", "ns", "fsr_fast", "fsr_best")


def _maxpool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max filter (H,W) with a size x size window."""
    return F.max_pool2d(x[None, None], size, stride=1, padding=size // 2)[0, 0]


def pixel_centre_depth(points: torch.Tensor, index: torch.Tensor, camera: CameraParameters, tolerance: float = 0.01, reach: float = 1.5):
    """Depth (H,W) at the pixel centres from a radius-1 point render (0 where no point is near),
    and the row of the point whose surface each pixel takes (H,W) long (-1: none).

    A rendered pixel holds the point that won its z-test, which projects anywhere inside it. Each
    pixel centre instead takes the surface of the nearest projection among the 3x3 neighbourhood's
    winners (within ``reach`` pixels): silhouettes fall halfway between the samples of the two
    surfaces, and one-pixel cracks close. Inverse depth is affine in image coordinates on a plane,
    so a plane fitted to 1/z of that surface's neighbours (within ``tolerance``) at their exact
    projections gives the depth at the centre. ``points`` (N,3) world; ``index`` (H,W) rows of
    ``points`` (-1: empty).
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
    dist2 = torch.where(has, du * du + dv * dv, torch.inf)
    nearest = dist2.argmin(0, keepdim=True)
    covered = dist2.gather(0, nearest)[0] <= reach * reach
    ref_inv = nb[2].gather(0, nearest)[0]
    same = has & ((nb[2] - ref_inv).abs() <= tolerance * ref_inv)
    w = same.to(uv.dtype)
    # weighted least squares for 1/z = a + b du + c dv: 3x3 normal equations per pixel
    A = torch.stack([torch.ones_like(du), du, dv])  # (3,9,H,W)
    M = torch.einsum("ikhw,jkhw,khw->hwij", A, A, w) + 1e-4 * torch.diag(torch.tensor([0.0, 1.0, 1.0], device=uv.device, dtype=uv.dtype))
    rhs = torch.einsum("ikhw,khw,khw->hwi", A, nb[2], w)
    enough = w.sum(0) >= 4
    M = torch.where(enough[..., None, None], M, torch.eye(3, device=uv.device, dtype=uv.dtype))
    a = torch.linalg.solve(M, torch.where(enough[..., None], rhs, 0.0)[..., None])[..., 0, 0]
    fitted = torch.where(enough, a, ref_inv).clamp(min=ref_inv * (1 - tolerance), max=ref_inv * (1 + tolerance))
    chosen = torch.where(covered, rows.gather(0, nearest)[0], -1)
    return torch.where(covered, 1.0 / fitted.clamp(min=1e-12), 0.0), chosen


def _cv2():
    import cv2

    return cv2


def _resolve_inpaint(method: str) -> str:
    if method != "auto":
        return method
    return "fsr_fast" if hasattr(_cv2(), "xphoto") else "telea"


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
    # FSR works on the bounding box of the holes (plus context) only: its cost grows with the area.
    ys, xs = np.nonzero(mask8)
    pad = 24
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, mask8.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, mask8.shape[1])
    crop, known = rgb8[y0:y1, x0:x1], (mask8[y0:y1, x0:x1] == 0).astype(np.uint8) * 255
    out = crop.copy()
    algo = cv2.xphoto.INPAINT_FSR_FAST if method == "fsr_fast" else cv2.xphoto.INPAINT_FSR_BEST
    cv2.xphoto.inpaint(crop, known, out, algo)
    full = rgb8.copy()
    full[y0:y1, x0:x1] = out
    return full


def inpaint_background(
    rgb: torch.Tensor, hole: torch.Tensor, depth: torch.Tensor, *, method: str = "auto", radius: int = 5, band: int = 6, tolerance: float = 0.1
) -> torch.Tensor:
    """Fill ``hole`` (H,W bool) in ``rgb`` (3,H,W) from the background side; returns (3,H,W).

    ``depth`` (H,W) is known everywhere (holes carry their completed, background depth). Pixels
    within ``band`` of a hole that are nearer than the hole's depth by more than ``tolerance``
    (foreground) are excluded as sources, so the fill continues the far surface; they keep their
    colours. Pixels outside the hole are returned unchanged.
    """
    if not bool(hole.any()):
        return rgb
    method = _resolve_inpaint(check_choice("inpaint method", method, INPAINT_METHODS))
    size = 2 * band + 1
    hole_f = hole.float()
    near_hole = _maxpool(hole_f, size) > 0
    hole_depth = _maxpool(torch.where(hole, depth, 0.0), size)
    foreground = near_hole & ~hole & (depth < hole_depth * (1 - tolerance))
    mask = hole | foreground
    rgb8 = (rgb.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    mask8 = mask.to(torch.uint8).cpu().numpy() * 255
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
        "inpaint": "auto",  # auto (= fsr_fast with opencv-contrib, else telea) | telea | ns | fsr_fast | fsr_best
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
    def fill(self, inputs: ChunkInputs) -> ChunkOutputs:
        if not (inputs.use_geometric_memory or inputs.use_spatial_memory):
            raise ConfigError("The geometric backbone needs at least one memory: enable use_geometric_memory or use_spatial_memory.")
        outs = [self._fill_frame(inputs, t) for t in range(len(inputs.cameras))]
        frames, depth, conf, new, holes, prior = (torch.stack(x) for x in zip(*outs))
        return ChunkOutputs(frames, depth, conf, new, extras={"holes": holes, "prior": prior})

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
        hyps = torch.stack([depth_full, -_maxpool(-depth_full, 3), _maxpool(depth_full, 3)])  # own, near, far
        rgb = torch.zeros(3, H, W, device=cam.device)
        conf = torch.zeros(H, W, device=cam.device)
        depth = depth_full.clone()
        best = torch.full((H, W), 0.5, device=cam.device)  # a hypothesis needs support > 0.5
        for d in hyps:  # the best-supported hypothesis wins; ties go to the earlier one
            colour, confidence, support = self._transfer(d, cam, refs)
            take = support > best + 0.05
            rgb = torch.where(take[None], colour, rgb)
            conf = torch.where(take, confidence, conf)
            depth = torch.where(take, d, depth)
            best = torch.where(take, support, best)
        done = best > 0.5
        from_memory = known & ~done
        rgb = torch.where(from_memory[None], known_rgb, rgb)
        depth = torch.where(from_memory, known_depth, depth)
        conf = torch.where(from_memory, known_trust * cfg["memory_confidence"], conf)
        # a pixel beside a depth edge may belong to either surface at sub-pixel level: less certain
        edge = _maxpool(depth, 3) > -_maxpool(-depth, 3) * (1 + cfg["depth_tolerance"])
        conf = torch.where(edge, conf * cfg["edge_confidence"], conf)
        hole = ~(done | known)
        prior = rgb.clone()
        rgb = inpaint_background(rgb, hole, depth, method=cfg["inpaint"], radius=cfg["inpaint_radius"], band=cfg["background_band"])
        conf = torch.where(hole, torch.full_like(conf, cfg["inpainted_confidence"]), conf)
        return rgb.clamp(0, 1), depth, conf, hole, hole, prior

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
            depth, rows = pixel_centre_depth(mem.points, r.index[t], cam)
            trust = mem.features[rows.clamp(min=0), 0] if mem.feature_dim == 1 else torch.ones_like(depth)
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

    def _transfer(self, depth: torch.Tensor, cam: CameraParameters, refs: list[dict]):
        """Colours (3,H,W), confidence (H,W) and support (H,W) in [0,1] of the surface at ``depth``.

        The support is the fraction of the used references' bilinear taps that see the point (1:
        clearly visible, about 0.5: on a silhouette of the reference, 0: not seen); it scales the
        confidence.
        """
        H, W = depth.shape
        if not refs:
            zero = torch.zeros(H, W, device=depth.device)
            return torch.zeros(3, H, W, device=depth.device), zero, zero
        tol, sigma = self.config["depth_tolerance"], math.radians(self.config["angle_sigma"])
        X = unproject(depth, cam).reshape(-1, 3)  # (N,3)
        to_target = F.normalize(cam.position.reshape(1, 3).to(X) - X, dim=1)
        samples = []
        for ref in refs:
            colour, visible, conf, uv = _sample_visible(ref, X, tol)
            to_ref = F.normalize(ref["camera"].position.reshape(1, 3).to(X) - X, dim=1)
            angle = torch.acos((to_target * to_ref).sum(1).clamp(-1, 1))
            # a source that saw the surface at a lower resolution (foreshortened, farther) knows less:
            # trust scales with its linear resolution relative to the target
            resolution = _area_scale(uv.reshape(H, W, 2)).reshape(-1).clamp(max=1.0).sqrt()
            samples.append((colour, visible, conf * resolution, torch.exp(-0.5 * (angle / sigma) ** 2)))
        colours, visible, confs, angle_w = (torch.stack(x) for x in zip(*samples))  # (R,N,3), (R,N) ...
        seen = visible >= 0.5
        # only the most trusted sources blend (each transfer lowers trust, so resampling does not
        # compound blur); among them, closer view angles weigh more
        best = torch.where(seen, confs, -1.0).amax(0)
        w = seen * (confs >= best - self.config["trust_margin"]) * (angle_w + 1e-6)
        den = w.sum(0)
        num = (w[..., None] * colours).sum(0)
        norm = den.clamp(min=1e-12)
        support = torch.where(den > 0, (w * visible).sum(0) / norm, 0.0)
        rgb = (num / norm[:, None]).T.reshape(3, H, W)
        conf = ((w * confs).sum(0) / norm * support).reshape(H, W) * self.config["transfer_decay"]
        return rgb, conf, support.reshape(H, W)


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
    uv, z = uv.reshape(-1, 2), z.reshape(-1)
    u0, v0 = uv[:, 0].floor(), uv[:, 1].floor()
    fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
    colour = torch.zeros(X.shape[0], 3, device=X.device)
    weight = torch.zeros(X.shape[0], device=X.device)
    conf = torch.zeros_like(weight)
    flat_img, flat_depth = image.reshape(3, -1), depth.reshape(-1)
    flat_conf = None if confidence is None else confidence.reshape(-1)
    for du, dv, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        u, v = u0 + du, v0 + dv
        inside = (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z > 0) & torch.isfinite(z)
        idx = torch.where(inside, v * W + u, 0).long()
        d = flat_depth[idx]
        ok = inside & (d > 0) & ((d - z).abs() <= tol * z)
        w = torch.where(ok, w, 0.0)
        colour += w[:, None] * flat_img[:, idx].T
        weight += w
        conf += w * (1.0 if flat_conf is None else flat_conf[idx])
    norm = weight.clamp(min=1e-12)
    return colour / norm[:, None], weight, conf / norm, uv
