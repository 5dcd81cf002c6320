"""A procedural demo scene the engine renders exactly: an analytic textured room.

``ProceduralRoom`` is the embedded default of the demo: no input and no weights, yet every frame has
an exact ground truth (image and depth), so generated frames can be scored against it. The room is
an axis-aligned box seen from inside with three boxes standing on the floor and a sphere, in world
units of metres and OpenCV axes (x right, y down, z forward: the floor is the +y face).

Rendering is batched ray casting over every pixel of every camera: slab tests for the room (exit
distance) and the boxes (entry distance), a quadratic for the sphere; the nearest hit wins.
Colours depend only on the 3D hit point and its surface, so every view is consistent. Textures are
band-limited (smooth sinusoids and smoothstep edges several centimetres wide), shading is a fixed
Lambert term (no specular), and every crease (room corners, box edges, where objects touch the
floor) fades from both sides to the same tint, a smooth function of position, so colour is
continuous everywhere except at silhouettes: a view resampled bilinearly from another matches the
exact render closely (about 58 dB PSNR along the default orbit at 512x512).
"""

from __future__ import annotations

import math
from numbers import Integral

import torch

from .cameras import CameraParameters, CameraTrajectory
from .errors import ConfigError, InvalidCameraError, ShapeMismatchError, check_choice
from .geometry import camera_rays
from .presets import PRESETS
from .rotations import look_at

__all__ = ["ProceduralRoom", "TRAJECTORY_KINDS"]

TRAJECTORY_KINDS = ("orbit",) + PRESETS  # what ProceduralRoom.trajectory(kind=...) accepts

_ROOM_LO = (-2.4, -1.2, -1.6)  # metres; y down, so -y is the ceiling
_ROOM_HI = (2.4, 1.5, 4.4)  # +y = 1.5 is the floor
# boxes standing on the floor: (x0, x1, height, z0, z1), colour
_BOXES = (
    ((-1.45, -0.6, 0.85, 1.55, 2.4), (0.86, 0.36, 0.28)),  # coral
    ((0.6, 1.3, 1.3, 2.45, 3.15), (0.16, 0.56, 0.60)),  # teal
    ((-0.5, 0.1, 0.5, 3.1, 3.7), (0.92, 0.70, 0.22)),  # mustard
)
_SPHERE = ((0.15, 1.5 - 0.42, 1.75), 0.42)  # centre, radius: resting on the floor
_EYE = (-0.1, -0.05, -0.7)  # condition camera, 1.55 m above the floor
_TARGET = (0.0, 0.95, 2.4)  # the middle of the objects: where the condition camera looks, the orbit pivot

# surfaces: room faces 0..5 (2 * axis + side, side 1 = the high bound), box k face f at 6 + 6k + f,
# the sphere last; 0/1 left/right wall, 2 ceiling, 3 floor, 4/5 front/back wall
_CEILING, _FLOOR = 2, 3
# each room face's main colour (walls: their hue; the ceiling and floor have their own textures)
_FACE_COLORS = (
    (0.50, 0.62, 0.76),  # left: dusty blue
    (0.88, 0.66, 0.54),  # right: peach
    (0.93, 0.91, 0.87),  # ceiling: off-white
    (0.73, 0.54, 0.37),  # floor: oak
    (0.68, 0.60, 0.76),  # front (behind the condition camera): lavender
    (0.56, 0.70, 0.58),  # back: sage
)
_INWARD = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))  # room faces' normals
# creases fade to a tint: the lit colours of the faces meeting there, darkened; near a box, its colour
_DARKEN = (0.62, 0.62, 0.8, 0.62, 0.62, 0.62)  # per room face (the ceiling's corners stay lighter)
_TINT_REACH = 0.45  # the tint mixes the darkened lit colours of the room faces within this many metres
_BOX_TINT, _BLEED = 0.3, 0.3  # near a box (within _BLEED m) the tint becomes _BOX_TINT x its colour + half the tint
_LIGHT = (-0.6, -1.0, -0.3)  # towards the key light: above, to the left, a little towards the camera
_FILL = (0.6, 0.45, -0.4)  # a weak fill light from the other side, bouncing up from below
# crease widths in metres: room corners, box edges, contact with a box/room/sphere
_ROOM_CREASE, _BOX_CREASE, _CONTACT, _SPHERE_CONTACT = 0.22, 0.09, 0.15, 0.2


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    """0 below 0, 1 above 1, C1-smooth in between."""
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _box_distance(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Unsigned distance (N,) from points (3,N) to the surface of the axis-aligned box lo, hi (3,)."""
    q = torch.maximum(lo[:, None] - p, p - hi[:, None])  # (3,N): > 0 outside a slab
    return q.clamp(min=0.0).square().sum(0).sqrt() + (-q.amax(0)).clamp(min=0.0)


def _first_equal(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the first of the three rows of ``x`` (3,N) equal to ``value`` (N,) (else 2)."""
    return torch.where(x[0] == value, 0, torch.where(x[1] == value, 1, 2))


def _pick(x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """x[axis[i], i] for x (3,N) and axis (N,)."""
    return torch.where(axis == 0, x[0], torch.where(axis == 1, x[1], x[2]))


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d with components too close to zero pushed to +-1e-12 (slab distances then become huge)."""
    return 1.0 / torch.where(d.abs() < 1e-12, torch.where(d < 0, -1e-12, 1e-12).to(d.dtype), d)


def _soft_wave(x: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """A sinusoid of period 1 in ``x`` flattened towards a soft square wave, in [-1, 1]."""
    return torch.tanh(sharpness * torch.sin(2 * math.pi * x)) / math.tanh(sharpness)


def _golden01(i: torch.Tensor) -> torch.Tensor:
    """A well-spread value in [0,1) per integer-valued float ``i`` (golden-ratio sequence; the same in
    float32 and float64, on every device)."""
    return torch.frac(i * 0.6180339887 + 0.31)


def _rgb(like: torch.Tensor, color) -> torch.Tensor:
    """A colour as a (3,1) column on ``like``'s device and dtype."""
    return like.new_tensor(color)[:, None]


def _light(normal: torch.Tensor) -> torch.Tensor:
    """Fixed Lambert lighting (M,) of unit normals (3,M): ambient, key, fill, and the floor's bounce."""
    key, fill = normal.new_tensor(_LIGHT), normal.new_tensor(_FILL)
    lambert = torch.stack([key / key.norm(), fill / fill.norm()]) @ normal  # (2,M)
    bounce = 0.2 * normal[1].clamp(min=0)  # light bounced off the floor onto faces looking down
    return 0.52 + 0.5 * lambert[0].clamp(min=0) + 0.15 * lambert[1].clamp(min=0) + bounce


class ProceduralRoom:
    """An analytic textured room: axis-aligned box interior, boxes standing on the floor, a sphere.

    The layout is fixed (no randomness), in metres, OpenCV world axes (y down: the floor is at
    y = +1.5, the ceiling at y = -1.2). ``render`` gives exact images and depths for any camera
    inside the room; ``camera()`` and ``trajectory()`` are the demo's condition camera and motion.
    Internally points are (3,N) so per-axis work runs over contiguous rows.
    """

    def __init__(self):
        floor = _ROOM_HI[1]
        self.room_lo = torch.tensor(_ROOM_LO)
        self.room_hi = torch.tensor(_ROOM_HI)
        self.box_lo = torch.tensor([(x0, floor - h, z0) for (x0, _, h, z0, _), _ in _BOXES])
        self.box_hi = torch.tensor([(x1, floor, z1) for (_, x1, _, _, z1), _ in _BOXES])
        self.box_colors = torch.tensor([c for _, c in _BOXES])
        self.sphere_center = torch.tensor(_SPHERE[0])
        self.sphere_radius = float(_SPHERE[1])
        self.eye = torch.tensor(_EYE)
        self.target = torch.tensor(_TARGET)

    # layout -----------------------------------------------------------------------------------
    @property
    def num_boxes(self) -> int:
        return len(self.box_lo)

    @property
    def sphere_id(self) -> int:
        """Surface id of the sphere (room face f is f = 2 * axis + side, box k face f is 6 + 6k + f)."""
        return 6 + 6 * self.num_boxes

    @property
    def extent(self) -> float:
        """Diagonal of the room's bounding box in metres."""
        return float((self.room_hi - self.room_lo).norm())

    def _on(self, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The layout tensors on ``device``: room_lo/hi (3,), box_lo/hi/colors (K,3), sphere_center (3,)."""
        names = ("room_lo", "room_hi", "box_lo", "box_hi", "box_colors", "sphere_center")
        return {n: getattr(self, n).to(device, dtype) for n in names}

    # geometry ---------------------------------------------------------------------------------
    def distance_to_surface(self, points: torch.Tensor) -> torch.Tensor:
        """Unsigned distance (N,) from points (N,3) to the nearest surface: room faces, box faces, sphere."""
        p = _check_points(points).T
        L = self._on(p.device, p.dtype)
        dist = _box_distance(p, L["room_lo"], L["room_hi"])
        for lo, hi in zip(L["box_lo"], L["box_hi"]):
            dist = torch.minimum(dist, _box_distance(p, lo, hi))
        sphere = ((p - L["sphere_center"][:, None]).square().sum(0).sqrt() - self.sphere_radius).abs()
        return torch.minimum(dist, sphere)

    def _free(self, points: torch.Tensor, margin: float) -> torch.Tensor:
        """(N,) bool for points (N,3): inside the room, outside every object, more than ``margin`` from them."""
        L = self._on(points.device, points.dtype)
        inside_room = ((points > L["room_lo"] + margin) & (points < L["room_hi"] - margin)).all(-1)
        in_box = ((points[:, None] > L["box_lo"] - margin) & (points[:, None] < L["box_hi"] + margin)).all(-1).any(-1)
        in_sphere = (points - L["sphere_center"]).norm(dim=-1) < self.sphere_radius + margin
        return inside_room & ~in_box & ~in_sphere

    def _trace(self, o: torch.Tensor, d: torch.Tensor, L: dict) -> tuple[torch.Tensor, ...]:
        """Nearest hit of the rays o + t d from origins o (3,M) along directions d (3,M).

        Returns t (M,), the hit points (3,M), surface ids (M,) long and unit normals (3,M) facing the ray.
        """
        K, pos, inv = self.num_boxes, d > 0, _safe_inverse(d)
        # room: the ray leaves through the face whose slab it exits first
        room_axes = (torch.where(pos, L["room_hi"][:, None], L["room_lo"][:, None]) - o) * inv
        t = room_axes.amin(0)
        hit_object = torch.full_like(t, -1, dtype=torch.long)  # -1 the room, k box k, K the sphere
        # boxes: entry distance where the ray is inside all three slabs, in front of the camera
        box_lo, box_hi = L["box_lo"][:, :, None] - o, L["box_hi"][:, :, None] - o  # (K,3,M)
        for k in range(K):
            t_near = (torch.where(pos, box_lo[k], box_hi[k]) * inv).amax(0)
            t_far = (torch.where(pos, box_hi[k], box_lo[k]) * inv).amin(0)
            hit = (t_near <= t_far) & (t_near > 0) & (t_near < t)
            t = torch.where(hit, t_near, t)
            hit_object = torch.where(hit, k, hit_object)
        # sphere: the smaller root of |o + t d - c|^2 = r^2
        to_center = o - L["sphere_center"][:, None]
        a, b = d.square().sum(0), (d * to_center).sum(0)
        disc = b * b - a * (to_center.square().sum(0) - self.sphere_radius**2)
        t_sphere = (-b - disc.clamp(min=0).sqrt()) / a
        on_sphere = (disc >= 0) & (t_sphere > 0) & (t_sphere < t)
        t = torch.where(on_sphere, t_sphere, t)
        hit_object = torch.where(on_sphere, K, hit_object)
        points = o + t * d
        # the face: the slab whose distance is t (the room's exit, the winning box's entry)
        on_box = (hit_object >= 0) & ~on_sphere
        k = hit_object.clamp(0, K - 1)
        box_axes = (torch.where(pos, L["box_lo"].T.index_select(1, k), L["box_hi"].T.index_select(1, k)) - o) * inv
        axis = _first_equal(torch.where(on_box, box_axes, room_axes), t)
        # moving towards +axis, a ray leaves the room through its high face and enters a box through its low one
        towards_high = _pick(pos, axis).long()
        sid = torch.where(on_box, 6 + 6 * k + 2 * axis + 1 - towards_high, 2 * axis + towards_high)
        sid = torch.where(on_sphere, self.sphere_id, sid)
        face = axis == torch.arange(3, device=d.device)[:, None]
        plane_normal = torch.where(face, -torch.sign(d), 0.0)
        normal = torch.where(on_sphere, (points - L["sphere_center"][:, None]) / self.sphere_radius, plane_normal)
        return t, points, sid, normal

    # appearance: every function maps hit points (3,M) to colours (3,M) ------------------------
    def _floor(self, p: torch.Tensor) -> torch.Tensor:
        """Warm oak planks (0.32 m wide, along z), each its own tone, with soft darker seams."""
        u = (p[0] - _ROOM_LO[0]) / 0.32
        plank = torch.floor(u)
        seam = (0.5 - (u - plank - 0.5).abs()) * 0.32  # metres to the nearest seam
        tone = _golden01(plank)
        grain = 0.035 * torch.sin(2 * math.pi * (p[2] / 1.1 + 3.0 * tone))
        light, dark, seam_color = _rgb(p, (0.80, 0.61, 0.42)), _rgb(p, (0.66, 0.47, 0.31)), _rgb(p, (0.64, 0.47, 0.32))
        wood = light + (dark - light) * tone + grain
        return seam_color + (wood - seam_color) * _smoothstep(seam / 0.07)

    def _ceiling(self, p: torch.Tensor) -> torch.Tensor:
        """Off-white with a faint soft 1.2 m grid."""
        grid = (_soft_wave(p[0] / 1.2, 4.0) * _soft_wave(p[2] / 1.2, 4.0)).abs()
        return _rgb(p, (0.93, 0.91, 0.87)) * (1.0 - 0.04 * (1.0 - grid))

    def _walls(self, p: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        """Soft vertical stripes in each wall's hue above a cream panelled wainscot with a rail."""
        hue = p.new_tensor(_FACE_COLORS).T.index_select(1, sid)
        along = torch.where(sid < 2, p[2], p[0])  # horizontal coordinate on the wall
        height = _ROOM_HI[1] - p[1]  # above the floor
        paper = hue * (1.0 + 0.06 * _soft_wave(along / 0.45, 1.5))
        panels = 1.0 - 0.05 * (0.5 + 0.5 * torch.cos(2 * math.pi * along / 0.6))
        cream = _rgb(p, (0.88, 0.85, 0.79)) * (0.85 + 0.15 * hue) * panels
        wall = cream + (paper - cream) * _smoothstep((height - 0.86) / 0.1)
        rail = 1.0 - _smoothstep((height - 0.92).abs() / 0.07)
        return wall + (0.75 * hue - wall) * (0.5 * rail)

    def _boxes(self, p: torch.Tensor, k: torch.Tensor, L: dict) -> torch.Tensor:
        """Saturated colours with soft diagonal stripes."""
        stripes = _soft_wave((p[0] + p[2] - p[1]) / 0.32, 1.2)
        return L["box_colors"].T.index_select(1, k) * (0.93 + 0.07 * stripes)

    def _sphere(self, p: torch.Tensor, L: dict) -> torch.Tensor:
        """Soft bands along a tilted axis, cream to cobalt."""
        axis = p.new_tensor((0.35, -1.0, 0.3))
        h = (axis / axis.norm()) @ (p - L["sphere_center"][:, None]) / self.sphere_radius
        cream, cobalt = _rgb(p, (0.93, 0.89, 0.80)), _rgb(p, (0.30, 0.42, 0.80))
        return cream + (cobalt - cream) * (0.5 + 0.5 * torch.sin(math.pi * 1.6 * h))

    def _albedo(self, p: torch.Tensor, sid: torch.Tensor, L: dict) -> torch.Tensor:
        """Surface colours (3,M) of hit points (3,M) on surfaces ``sid`` (M,), each group textured apart."""
        out = torch.empty_like(p)
        walls = (sid < 6) & (sid != _FLOOR) & (sid != _CEILING)
        boxes = (sid >= 6) & (sid < self.sphere_id)
        groups = (
            (sid == _FLOOR, lambda q, s: self._floor(q)),
            (sid == _CEILING, lambda q, s: self._ceiling(q)),
            (walls, self._walls),
            (boxes, lambda q, s: self._boxes(q, (s - 6) // 6, L)),
            (sid == self.sphere_id, lambda q, s: self._sphere(q, L)),
        )
        for mask, texture in groups:
            idx = mask.nonzero()[:, 0]
            if len(idx):
                out.index_copy_(1, idx, texture(p.index_select(1, idx), sid.index_select(0, idx)))
        return out

    def _openness(self, p: torch.Tensor, sid: torch.Tensor, L: dict, box_distances: list) -> torch.Tensor:
        """(M,) in [0,1]: 0 on a crease (room corners, box edges, where objects touch), 1 in the open.

        Both sides of a crease reach 0 on it. ``box_distances``: K (M,) distances of p to the boxes.
        """
        on_room, on_sphere = sid < 6, sid == self.sphere_id
        owner = torch.where(on_room | on_sphere, 0, (sid - 6) // 6 + 1)  # 0 the room, k + 1 box k
        lo = torch.cat([L["room_lo"][None], L["box_lo"]]).T.index_select(1, owner)
        hi = torch.cat([L["room_hi"][None], L["box_hi"]]).T.index_select(1, owner)
        # creases of the own room or box: distance to the bounds of the two other axes
        edge = torch.minimum(p - lo, hi - p)
        edge = torch.where((sid % 6) // 2 == torch.arange(3, device=p.device)[:, None], torch.inf, edge)
        width = torch.where(on_room, _ROOM_CREASE, _BOX_CREASE).to(p.dtype)
        openness = torch.where(on_sphere, 1.0, _smoothstep(edge / width).prod(0))
        # contact with the other primitives (every hit is inside the room)
        room = torch.minimum(p - L["room_lo"][:, None], L["room_hi"][:, None] - p).amin(0)
        openness = openness * torch.where(on_room, 1.0, _smoothstep(room / _CONTACT))
        for k, dist in enumerate(box_distances):
            openness = openness * torch.where(owner == k + 1, 1.0, _smoothstep(dist / _CONTACT))
        sphere = (p - L["sphere_center"][:, None]).square().sum(0).sqrt() - self.sphere_radius
        return openness * torch.where(on_sphere, 1.0, _smoothstep(sphere / _SPHERE_CONTACT))

    def _crease_tint(self, p: torch.Tensor, L: dict, box_distances: list) -> torch.Tensor:
        """The colour (3,M) creases fade to, a smooth function of position: the darkened lit colours
        of the room faces near p, mixed with a darker box colour near each box."""
        faces = p.new_tensor(_FACE_COLORS).T * (p.new_tensor(_DARKEN) * _light(p.new_tensor(_INWARD).T))  # (3,6)
        near = 1.0 - _smoothstep(torch.cat([p - L["room_lo"][:, None], L["room_hi"][:, None] - p]) / _TINT_REACH)
        # far from every face (on an object) the faces' mean colour
        tint = (faces @ near + 1e-3 * faces.mean(1, keepdim=True)) / (near.sum(0) + 1e-3)
        for dist, color in zip(box_distances, L["box_colors"]):
            tint = tint + (_BOX_TINT * color[:, None] - 0.5 * tint) * (1.0 - _smoothstep(dist / _BLEED))
        return tint

    def _shade(self, p: torch.Tensor, sid: torch.Tensor, normal: torch.Tensor, L: dict) -> torch.Tensor:
        """Colours (3,M) in [0,1]: albedo times fixed Lambert lighting, fading to the crease tint.

        Both sides of a crease reach openness 0 and share the tint there: colour stays continuous.
        """
        lit = self._albedo(p, sid, L) * _light(normal)
        box_distances = [_box_distance(p, lo, hi) for lo, hi in zip(L["box_lo"], L["box_hi"])]
        openness, tint = self._openness(p, sid, L, box_distances), self._crease_tint(p, L, box_distances)
        return (tint + (lit - tint) * openness).clamp(0.0, 1.0)

    # rendering --------------------------------------------------------------------------------
    def render(self, cameras, *, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact image (T,3,H,W) in [0,1] and depth (T,H,W) seen by T cameras.

        Args:
            cameras: CameraParameters (one camera gives T=1, a batch T) or a CameraTrajectory, pinhole
                or equirectangular, every camera inside the room and outside the objects.
            chunk: rays traced per pass (bounds memory); default 2**20.
        Returns:
            image (T,3,H,W) float32 and depth (T,H,W) float32: the z coordinate in the camera for
            pinhole cameras, the distance along the ray for equirectangular ones (the conventions of
            ``ws_engine.geometry.unproject``). Every pixel hits a surface, so depth > 0 everywhere.
        """
        cams = self._check_cameras(cameras)
        chunk = _check_chunk(chunk)
        dtype = torch.float64 if cams.dtype == torch.float64 else torch.float32
        L = self._on(cams.device, dtype)
        T, H, W = len(cams), cams.height, cams.width
        c2w = cams.c2wb.to(dtype)
        rays = camera_rays(cams, dtype).reshape(T, H * W, 3)  # pinhole rays have z = 1: t is the depth
        image = torch.empty(3, T * H * W, device=cams.device, dtype=dtype)
        depth = torch.empty(T * H * W, device=cams.device, dtype=dtype)
        per_pass = max(1, chunk // (H * W))  # whole cameras per pass where they fit
        for first in range(0, T, per_pass):
            group = slice(first, first + per_pass)
            dirs = torch.einsum("tij,tpj->itp", c2w[group, :3, :3], rays[group])  # world directions (3,n,HW)
            origins = c2w[group, :3, 3].T[:, :, None].expand_as(dirs).reshape(3, -1)
            dirs, offset = dirs.reshape(3, -1), first * H * W
            for s in range(0, dirs.shape[1], chunk):
                t, points, sid, normal = self._trace(origins[:, s : s + chunk], dirs[:, s : s + chunk], L)
                depth[offset + s : offset + s + len(t)] = t
                image[:, offset + s : offset + s + len(t)] = self._shade(points, sid, normal, L)
        image = image.reshape(3, T, H, W).transpose(0, 1).float().contiguous()
        return image, depth.reshape(T, H, W).float()

    def _check_cameras(self, cameras) -> CameraParameters:
        if isinstance(cameras, CameraTrajectory):
            cameras = cameras.cameras
        if not isinstance(cameras, CameraParameters):
            raise ShapeMismatchError(f"Expected CameraParameters or a CameraTrajectory, got {type(cameras).__name__}.")
        pos = cameras.c2wb[:, :3, 3]
        bad = (~self._free(pos, 0.0)).nonzero()[:, 0]
        if len(bad):
            i = int(bad[0])
            raise InvalidCameraError(
                f"Camera {i} at {[round(v, 3) for v in pos[i].tolist()]} is not in the free space of the room "
                f"(x {_ROOM_LO[0]}..{_ROOM_HI[0]}, y {_ROOM_LO[1]}..{_ROOM_HI[1]}, z {_ROOM_LO[2]}..{_ROOM_HI[2]} "
                "metres, outside the boxes and the sphere); start from ProceduralRoom.camera() or .trajectory()."
            )
        return cameras

    # sampling ---------------------------------------------------------------------------------
    def _patches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Planar faces that can be seen: lo, hi (P,3) (equal on the face's axis) and normals (P,3)
        facing the free space. Room faces and the boxes' faces except their bottoms."""
        faces = []
        boxes = [(self.room_lo, self.room_hi, -1.0)] + [(lo, hi, 1.0) for lo, hi in zip(self.box_lo, self.box_hi)]
        for i, (lo, hi, outward) in enumerate(boxes):
            for axis in range(3):
                for side, bound in enumerate((lo, hi)):
                    if i > 0 and axis == 1 and side == 1:
                        continue  # a box's bottom lies on the floor
                    f_lo, f_hi, normal = lo.clone(), hi.clone(), torch.zeros(3)
                    f_lo[axis] = f_hi[axis] = bound[axis]
                    normal[axis] = outward * (1.0 if side else -1.0)
                    faces.append((f_lo, f_hi, normal))
        return tuple(torch.stack(column) for column in zip(*faces))

    def sample_surface(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n points (n,3) on the surfaces a camera in the room can see, area-weighted, and their unit
        normals (n,3) facing the free space. Floor under the boxes and box bottoms are left out."""
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise ConfigError(f"n must be a positive whole number of points, got {n!r}.")
        n = int(n)
        device = generator.device if generator is not None else torch.device("cpu")
        lo, hi, normals = (x.to(device) for x in self._patches())
        sides = (hi - lo).sort(-1).values[:, 1:]  # the two non-zero side lengths
        areas = torch.cat([sides.prod(-1), torch.tensor([4 * math.pi * self.sphere_radius**2], device=device)])
        L = self._on(device)
        kept, count = [], 0
        while count < n:
            m = 2 * (n - count) + 64
            which = torch.multinomial(areas, m, replacement=True, generator=generator)
            u = torch.rand(m, 3, generator=generator, device=device)
            g = torch.randn(m, 3, generator=generator, device=device)
            on_sphere = (which == len(lo))[:, None]
            f = which.clamp(max=len(lo) - 1)
            dirs = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            p = torch.where(on_sphere, L["sphere_center"] + self.sphere_radius * dirs, lo[f] + u * (hi[f] - lo[f]))
            nrm = torch.where(on_sphere, dirs, normals[f])
            under_box = ((p[:, None] > L["box_lo"]) & (p[:, None] < L["box_hi"] + 1e-6)).all(-1).any(-1)
            keep = ~(under_box & (which < 6))
            kept.append((p[keep], nrm[keep]))
            count += int(keep.sum())
        points, normals_out = (torch.cat(column)[:n] for column in zip(*kept))
        return points, normals_out

    # cameras ----------------------------------------------------------------------------------
    @property
    def pivot_depth(self) -> float:
        """Distance from the condition camera to the point it looks at (the orbit pivot), metres."""
        return float((self.target - self.eye).norm())

    def camera(self, width: int = 512, height: int = 512, fov: float = 70.0) -> CameraParameters:
        """The condition camera: 1.55 m above the floor near the front wall, looking down at the
        objects so that the boxes and the sphere hide parts of the walls and the floor."""
        c2w = torch.eye(4)
        c2w[:3, :3] = look_at(self.eye, self.target, torch.tensor([0.0, -1.0, 0.0]))
        c2w[:3, 3] = self.eye
        return CameraParameters.from_fov(fov, width, height, c2w=c2w)

    def _preset_defaults(self, name: str) -> dict:
        """Room-sized arguments of a trajectory preset (metres and degrees)."""
        pivot = self.pivot_depth
        if name in ("orbit_left", "orbit_right"):
            return {"angle": 25.0, "pivot_depth": pivot}
        if name in ("forward", "left", "right"):
            return {"distance": 1.0}
        if name in ("backward", "up", "down"):
            return {"distance": 0.5}
        if name == "spiral":
            return {"radius": 0.3, "focus_depth": pivot}
        if name == "eloop":
            return {"radius_x": 0.6, "radius_z": 0.4, "focus_depth": pivot}
        return {}

    def trajectory(
        self, num_frames: int = 16, width: int = 512, height: int = 512, fov: float = 70.0, kind: str = "orbit",
        **preset_kwargs,
    ) -> CameraTrajectory:
        """A camera motion starting at ``camera()`` that stays inside the room.

        ``kind`` is ``"orbit"`` (``orbit_left`` by 25 degrees around the middle of the objects: the
        boxes and the sphere uncover parts of the walls and floor while most of each frame stays
        visible from the first camera) or any preset name of ``CameraTrajectory.preset`` with
        room-sized defaults; ``preset_kwargs`` override them. A motion that would leave the room or
        enter an object raises ConfigError.
        """
        check_choice("room trajectory", kind, TRAJECTORY_KINDS)
        name = "orbit_left" if kind == "orbit" else kind
        args = {**self._preset_defaults(name), **preset_kwargs}
        start = self.camera(width, height, fov).c2w
        traj = CameraTrajectory.preset(name, num_frames, width=width, height=height, fov=fov, start=start, **args)
        outside = (~self._free(traj.positions.float(), 0.1)).nonzero()[:, 0]
        if len(outside):
            i = int(outside[0])
            raise ConfigError(
                f"The {kind!r} trajectory leaves the free space of the room at frame {i} "
                f"({[round(v, 2) for v in traj.positions[i].tolist()]}); use a smaller distance or angle."
            )
        return traj


def _check_points(points) -> torch.Tensor:
    p = points if isinstance(points, torch.Tensor) else torch.as_tensor(points, dtype=torch.float32)
    if p.dim() != 2 or p.shape[-1] != 3:
        raise ShapeMismatchError(f"Points must have shape (N,3), got {tuple(p.shape)}; reshape them to (-1, 3).")
    return p if p.is_floating_point() else p.float()


def _check_chunk(chunk) -> int:
    if chunk is None:
        return 1 << 20
    if isinstance(chunk, bool) or not isinstance(chunk, Integral) or chunk < 1:
        raise ConfigError(f"chunk must be a positive whole number of rays, got {chunk!r}; leave it unset for 2**20.")
    return int(chunk)
