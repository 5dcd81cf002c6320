"""Generation on a ComfyUI server: the shipped example workflow with the scene's trajectory filled in.

Pure Python (stdlib + numpy; bpy only to read ``bpy.app.online_access``). ``ComfyJob`` has the
interface of ``jobs.CliJob`` (start / poll / cancel / state / progress / message / result_files):

- ``start()`` (caller's thread; AddonError for anything the user can fix): online access, the
  server answers (``GET /system_stats`` with a timeout), the WorldStereo nodes are installed,
  uploads the condition image and the depth prior lifted to a world-space PLY point cloud (ply.write_ply)
  (``POST /upload/image``, which stores any file in the input folder), fills the workflow, converts
  it with ``workflow_format.ui_to_api`` and ``POST /prompt``.
- a daemon thread follows the prompt (``/ws`` progress messages when the socket opens, else
  ``/queue``; ``/history/<id>`` decides) and downloads the outputs with ``GET /view`` into out_dir
  under the CLI's names (video.mp4, scene.ply, mesh.glb, trajectory.json, metrics.json).
- ``cancel()``: ``POST /interrupt`` for this prompt and ``POST /queue`` delete.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import queue
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np

from .errors import AddonError
from .jobs import JobInputs
from .ply import write_ply

__all__ = ["DEFAULT_URL", "WORKFLOW", "Client", "ComfyJob", "build_prompt", "check_online_access", "depth_to_points", "first_camera",
           "normalise_url", "read_image_rgb"]  # fmt: skip

DEFAULT_URL = "http://127.0.0.1:8188"
WORKFLOW = Path(__file__).resolve().parent / "workflows" / "worldstereo_image_to_video_and_3d.json"
METHOD_FILES = {"point_cloud": "scene.ply", "mesh": "mesh.glb", "neural_field": "scene.ply"}


# ----------------------------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------------------------
def normalise_url(url: str) -> str:
    """``127.0.0.1:8188`` / ``http://host:port/`` -> ``http://host:port`` (AddonError if unusable)."""
    url = (url or "").strip() or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddonError(f"The ComfyUI URL '{url}' is not an http(s) address like {DEFAULT_URL}; fix it in the add-on preferences.")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def online_access() -> bool:
    """Blender's "Allow Online Access" (True outside Blender or in versions without the setting)."""
    try:
        import bpy
    except ImportError:
        return True
    return bool(getattr(bpy.app, "online_access", True))


def check_online_access(url: str) -> None:
    """AddonError when Blender's online access is off and the server is not on this machine."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not is_loopback(host) and not online_access():
        raise AddonError(
            f"Blender's online access is off, so the add-on may not contact the ComfyUI server at {url}: turn on "
            "Preferences > System > Network > Allow Online Access, or run ComfyUI on this computer (http://127.0.0.1:8188)."
        )


class Client:
    """JSON over HTTP to one ComfyUI server (urllib; every call has a timeout)."""

    def __init__(self, url: str, timeout: float = 10):
        self.url, self.timeout = normalise_url(url), float(timeout)

    def _open(self, req, timeout=None):
        return urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout)

    def get_json(self, path: str, timeout=None):
        with self._open(self.url + path, timeout) as r:
            return json.loads(r.read() or b"null")

    def post_json(self, path: str, body: dict, timeout=None):
        """(status, answer) of a JSON POST; HTTP errors return their status and JSON body."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with self._open(req, timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw.strip() else {}
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw.strip() else {}
            except ValueError:
                return e.code, {"error": {"message": raw.decode(errors="replace")[:500]}}

    def upload(self, path, name: str) -> str:
        """Upload a file into ComfyUI's input folder (``POST /upload/image``); returns the name it got."""
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n")  # fmt: skip
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with self._open(req) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AddonError(f"ComfyUI at {self.url} refused the upload of {Path(path).name} (HTTP {e.code}).") from None
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def download(self, entry: dict, target: Path) -> Path:
        """``GET /view`` of an output entry ({filename, subfolder, type}) into ``target`` (atomic)."""
        query = urllib.parse.urlencode({"filename": entry["filename"], "subfolder": entry.get("subfolder", ""), "type": entry.get("type", "output")})
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._open(f"{self.url}/view?{query}", max(self.timeout, 60)) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def check_answers(self) -> dict:
        """``GET /system_stats``; AddonError (with the timeout) when the server does not answer."""
        try:
            return self.get_json("/system_stats")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise AddonError(
                f"ComfyUI at {self.url} does not answer (timeout {self.timeout:g} s; {reason}): start it or fix the URL in the add-on preferences."
            ) from None

    def definitions(self, classes) -> dict:
        """``GET /object_info/<class>`` of each class ({class: definition}, unknown classes left out)."""
        out = {}
        for name in sorted(set(classes)):
            out.update(self.get_json(f"/object_info/{urllib.parse.quote(name)}") or {})
        return out


# ----------------------------------------------------------------------------------------------
# the depth prior as a point cloud
# ----------------------------------------------------------------------------------------------
def first_camera(trajectory: dict, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K (3,3) with integer pixel centres, c2w (4,4) OpenCV) of a project-format trajectory's first
    frame, K rescaled to ``size`` (H, W) when given."""
    frames = trajectory.get("frames") or []
    if not frames:
        raise AddonError("The trajectory has no frames.")
    K = np.array(frames[0].get("K", trajectory.get("K")), dtype=np.float64)
    c2w = np.array(frames[0]["c2w"], dtype=np.float64)
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise AddonError("The trajectory's first frame needs a 3x3 K and a 4x4 c2w.")
    if trajectory.get("pixel_center", "integer") == "half":
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
    if size is not None:
        sx, sy = size[1] / float(trajectory["width"]), size[0] / float(trajectory["height"])
        K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
        K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return K, c2w


def depth_to_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, colors: np.ndarray | None = None):
    """Lift a z-depth map (H,W) with K (3,3) and OpenCV c2w (4,4) to world points.

    Returns (points (N,3) float32, colors (N,3) uint8) of the pixels with a finite depth > 0;
    ``colors`` (H,W,3) uint8 (None: grey).
    """
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    pix = np.stack([u[valid], v[valid], np.ones(int(valid.sum()))], axis=0)  # (3,N)
    cam = (np.linalg.inv(K) @ pix) * depth[valid][None]
    world = (c2w[:3, :3] @ cam + c2w[:3, 3:4]).T
    rgb = np.full((len(world), 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)[valid]
    return world.astype(np.float32), rgb


def _png_rgb(path) -> np.ndarray | None:
    """(H,W,3) uint8 of a non-interlaced 8/16-bit PNG (grey, RGB, palette, with or without alpha); None otherwise."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, chunks, idat = 8, {}, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        else:
            chunks[kind] = body
    W, H, bits, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None or interlace or bits not in (8, 16) and not (ctype == 3 and bits == 8):
        return None
    bpp = channels * bits // 8
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(H, 1 + W * bpp)
    out = np.zeros((H, W * bpp), np.int32)
    prev = np.zeros(W * bpp, np.int32)
    for y in range(H):  # undo the per-row filters
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            cur = row
        elif kind == 2:
            cur = (row + prev) & 255
        elif kind == 1:  # each byte adds the one bpp before it: a running sum per channel
            cur = np.cumsum(row.reshape(W, bpp), axis=0).reshape(-1) & 255
        elif kind in (3, 4):
            cur = np.zeros_like(row)
            for x in range(W * bpp):  # left-dependent filters go byte by byte
                a = cur[x - bpp] if x >= bpp else 0
                if kind == 3:
                    pred = (a + prev[x]) // 2
                else:
                    b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (row[x] + pred) & 255
        else:
            return None
        out[y], prev = cur, cur
    pix = out.astype(np.uint8).reshape(H, W, channels * bits // 8)
    if bits == 16:
        pix = pix[..., 0::2]  # high bytes
    if ctype == 3:
        palette = np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)
        return palette[pix[..., 0]]
    if channels in (1, 2):
        return np.repeat(pix[..., :1], 3, axis=2)
    return pix[..., :3].copy()


def _bpy_rgb(path) -> np.ndarray | None:
    """(H,W,3) uint8 of any image Blender reads (None without bpy or on failure); bpy.data is left as it was."""
    try:
        import bpy
    except ImportError:
        return None
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError:
        return None
    try:
        w, h = image.size
        px = np.empty(w * h * image.channels, np.float32)
        image.pixels.foreach_get(px)
        rgb = px.reshape(h, w, image.channels)[::-1, :, :3]  # Blender stores rows bottom-up
        if image.is_float:  # linear float data: to sRGB-ish 8 bit for the point colours
            rgb = np.clip(rgb, 0, 1) ** (1 / 2.2)
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    finally:
        bpy.data.images.remove(image)


def read_image_rgb(path, size: tuple[int, int]) -> np.ndarray | None:
    """The image at ``size`` (H, W) as (H,W,3) uint8 (nearest-neighbour resize), or None if unreadable."""
    rgb = _bpy_rgb(path)  # inside Blender: any format, decoded in C
    if rgb is None:
        try:
            rgb = _png_rgb(path)
        except (OSError, KeyError, ValueError, zlib.error, struct.error):
            rgb = None
    if rgb is None:
        return None
    h, w = rgb.shape[:2]
    H, W = size
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return rgb[rows][:, cols]


# ----------------------------------------------------------------------------------------------
# the workflow
# ----------------------------------------------------------------------------------------------
def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [i for i, n in prompt.items() if n["class_type"] == class_type]


def build_prompt(workflow: dict, definitions: dict, inputs: JobInputs, trajectory: dict, image_name: str, cloud_name: str = "",
                 prefix: str = "WorldStereo/blender") -> tuple[dict, dict]:  # fmt: skip
    """The API prompt of the example workflow with the job filled in, and the ids of the nodes to read.

    Returns (prompt, {"generate": id, "video": id, "reconstruct": {method: id}}). One Reconstruct
    node per method (copies of the workflow's); none (and no node that depends on it) without methods.
    """
    from .workflow_format import WorkflowError, ui_to_api

    try:
        prompt = ui_to_api(workflow, definitions)
    except WorkflowError as e:
        raise AddonError(f"The ComfyUI server cannot run the WorldStereo workflow: {e}") from None
    need = ("WorldStereoCameraTrajectory", "LoadImage", "WorldStereoGeometricMemory", "WorldStereoGenerate", "SaveVideo", "WorldStereoReconstruct")
    ids = {}
    for kind in need:
        found = _nodes_of(prompt, kind)
        if len(found) != 1:
            raise AddonError(f"The bundled workflow should hold one {kind} node, it holds {len(found)}; reinstall the add-on.")
        ids[kind] = found[0]
    frames = inputs.frames or len(trajectory["frames"])
    H, W = inputs.size or (int(trajectory["height"]), int(trajectory["width"]))
    prompt[ids["WorldStereoCameraTrajectory"]]["inputs"].update(trajectory_json=json.dumps(trajectory), trajectory_file="", frames=int(frames),
                                                                width=int(W), height=int(H))  # fmt: skip
    prompt[ids["LoadImage"]]["inputs"]["image"] = image_name
    prompt[ids["WorldStereoGeometricMemory"]]["inputs"]["point_cloud_file"] = cloud_name
    gen = prompt[ids["WorldStereoGenerate"]]["inputs"]
    gen.update(steps=int(inputs.steps), guidance=float(inputs.guidance), seed=int(inputs.seed))
    for vid in _nodes_of(prompt, "CreateVideo"):
        if trajectory.get("fps"):
            prompt[vid]["inputs"]["fps"] = float(trajectory["fps"])
    prompt[ids["SaveVideo"]]["inputs"]["filename_prefix"] = f"{prefix}/video"
    rec_id = ids["WorldStereoReconstruct"]
    template = prompt.pop(rec_id)
    recs, next_id = {}, max(int(i) for i in list(prompt) + [rec_id]) + 1
    for i, method in enumerate(inputs.reconstruct):
        node_id = rec_id if i == 0 else str(next_id + i - 1)
        node = json.loads(json.dumps(template))
        node["inputs"].update(method=method, filename_prefix=f"{prefix}/{method}")
        prompt[node_id], recs[method] = node, node_id
    _drop_dangling(prompt)
    return prompt, {"generate": ids["WorldStereoGenerate"], "video": ids["SaveVideo"], "reconstruct": recs}


def _drop_dangling(prompt: dict) -> None:
    """Remove nodes whose inputs link to nodes that are gone (e.g. Preview 3D without Reconstruct)."""
    changed = True
    while changed:
        changed = False
        for node_id in list(prompt):
            links = [v for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
            if any(src not in prompt for src, _ in links):
                del prompt[node_id]
                changed = True


# ----------------------------------------------------------------------------------------------
# progress over the websocket (stdlib: a small RFC 6455 client that only reads)
# ----------------------------------------------------------------------------------------------
class _WebSocket:
    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if parts.scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())  # fmt: skip
        self.sock, self.buf = sock, b""
        head = self._until(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            sock.close()
            raise OSError("no websocket upgrade")

    def _until(self, mark: bytes) -> bytes:
        while mark not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed")
            self.buf += chunk
        head, self.buf = self.buf.split(mark, 1)
        return head

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload)))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float) -> dict | None:
        """The next JSON text message (binary previews skipped), or None when none came within ``timeout``.

        OSError when the socket breaks (a timeout inside a frame counts as broken)."""
        message, kind = b"", None
        while True:
            self.sock.settimeout(timeout)
            try:
                b0, b1 = self._exact(2)
            except TimeoutError:
                if not message:
                    return None
                raise
            self.sock.settimeout(max(timeout, 5))  # a frame that started is read whole
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise OSError("websocket closed")
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode in (1, 2):
                message, kind = payload, opcode
            elif opcode == 0:
                message += payload
            else:
                continue
            if b0 & 0x80:
                if kind == 1:
                    return json.loads(message.decode("utf-8", errors="replace"))
                message, kind = b"", None

    def close(self) -> None:
        try:
            self._send(8)
        except OSError:
            pass
        self.sock.close()


# ----------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------
class ComfyJob:
    """The example workflow on a ComfyUI server, with the interface of ``jobs.CliJob``.

    Attributes: state ('idle', then 'running' | 'done' | 'failed' | 'cancelled'), progress (0..1),
    message, result_files ({"video", "point_cloud", "mesh", "trajectory", "metrics"} -> paths in
    out_dir), prompt_id.
    """

    POLL_SECONDS = 0.5
    GENERATE_SHARE, RECONSTRUCT_SHARE = 0.75, 0.2

    def __init__(self, url: str, inputs: JobInputs, timeout: float = 10, workflow: Path | str | None = None):
        self.client = Client(url, timeout)
        self.url, self.inputs, self.timeout = self.client.url, inputs, float(timeout)
        self.workflow_path = Path(workflow) if workflow else WORKFLOW
        self.state, self.progress, self.message = "idle", 0.0, ""
        self.result_files: dict[str, str] = {}
        self.prompt_id: str | None = None
        self.notes: list[str] = []  # what the run did differently (e.g. no depth prior)
        self.client_id = uuid.uuid4().hex
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids: dict = {}
        self._written: list[Path] = []

    # -- start (caller's thread) -----------------------------------------------------------
    def start(self) -> ComfyJob:
        if self.state != "idle":
            raise AddonError("This job was started already; make a new one.")
        self.inputs.check()
        check_online_access(self.url)
        self.client.check_answers()
        try:
            workflow = json.loads(self.workflow_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AddonError(f"The bundled workflow {self.workflow_path} cannot be read ({e}); reinstall the add-on.") from None
        classes = {n["type"] for n in workflow.get("nodes", [])} - {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
        try:
            definitions = self.client.definitions(classes)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise AddonError(f"ComfyUI at {self.url} stopped answering ({getattr(e, 'reason', e)}); check the server.") from None
        missing = sorted(c for c in classes if c not in definitions)
        if any(c.startswith("WorldStereo") for c in missing):
            raise AddonError(
                f"ComfyUI at {self.url} does not have the WorldStereo nodes: install ComfyUI-WorldStereo into its custom_nodes folder and restart it."
            )
        if missing:
            raise AddonError(f"ComfyUI at {self.url} lacks the nodes {', '.join(missing)}; update ComfyUI.")
        trajectory = json.loads(Path(self.inputs.trajectory).read_text(encoding="utf-8"))
        out = Path(os.path.abspath(self.inputs.out_dir))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AddonError(f"The output folder {out} cannot be created ({e.strerror or e}); choose another output folder.") from None
        tag = uuid.uuid4().hex[:10]
        try:
            image_name = self.client.upload(self.inputs.image, f"worldstereo_{_digest(self.inputs.image)}{Path(self.inputs.image).suffix.lower() or '.png'}")
            cloud_name = self._upload_depth(trajectory, tag)
            prompt, self._ids = build_prompt(workflow, definitions, self.inputs, trajectory, image_name, cloud_name, prefix=f"WorldStereo/blender_{tag}")
            status, answer = self.client.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except (urllib.error.URLError, OSError) as e:
            raise AddonError(f"ComfyUI at {self.url} stopped answering ({getattr(e, 'reason', e)}); check the server.") from None
        if status != 200 or "prompt_id" not in answer:
            raise AddonError(f"ComfyUI at {self.url} refused the workflow: {_prompt_errors(answer)}")
        self.prompt_id = answer["prompt_id"]
        self.state, self.message = "running", "queued on ComfyUI"
        self._thread = threading.Thread(target=self._follow, daemon=True, name="worldstereo-comfyui")
        self._thread.start()
        return self

    def _upload_depth(self, trajectory: dict, tag: str) -> str:
        """Lift the depth prior to a world-space PLY and upload it; "" without depth."""
        if not self.inputs.depth:
            return ""
        depth = np.load(self.inputs.depth)
        if depth.ndim != 2:
            raise AddonError(f"The depth prior {self.inputs.depth} must be a (height, width) array, got shape {depth.shape}.")
        K, c2w = first_camera(trajectory, depth.shape)
        colors = read_image_rgb(self.inputs.image, depth.shape)
        if colors is None:
            self.notes.append("the condition image could not be read for the point colours (grey used)")
        points, rgb = depth_to_points(depth, K, c2w, colors)
        if not len(points):
            self.notes.append("the depth prior has no valid pixel (skipped)")
            return ""
        ply = Path(self.inputs.depth).with_name(f"depth_prior_{tag}.ply")
        write_ply(ply, points, rgb)
        return self.client.upload(ply, f"worldstereo_{_digest(ply)}_depth.ply")

    # -- following the prompt (worker thread: only the queue and its own state) --------------
    def _follow(self) -> None:
        try:
            self._follow_prompt()
        except Exception as e:  # noqa: BLE001 - never die silently: the job reports it
            self._events.put({"event": "error", "message": f"Following the prompt on ComfyUI failed: {type(e).__name__}: {e}"})

    def _follow_prompt(self) -> None:
        ws = None
        try:
            ws = _WebSocket(f"{self.url}/ws?clientId={self.client_id}", self.timeout)
        except (OSError, ValueError):
            ws = None
        last_check, failing_since = 0.0, None
        try:
            while not self._stop.is_set():
                if ws is not None:
                    try:
                        msg = ws.receive(self.POLL_SECONDS)
                        if msg:
                            self._on_message(msg)
                    except (OSError, ValueError):
                        ws = None
                else:
                    self._stop.wait(self.POLL_SECONDS)
                if self._stop.is_set() or time.monotonic() - last_check < 1.0:
                    continue
                last_check = time.monotonic()
                try:
                    history = self.client.get_json(f"/history/{self.prompt_id}")
                    if ws is None and self.prompt_id not in (history or {}):
                        self._queue_position()
                    failing_since = None
                except (urllib.error.URLError, OSError, ValueError) as e:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > max(self.timeout, 5):
                        self._events.put({"event": "error", "message": f"ComfyUI at {self.url} stopped answering ({getattr(e, 'reason', e)})."})
                        return
                    continue
                entry = (history or {}).get(self.prompt_id)
                if entry is not None:
                    self._finished(entry)
                    return
        finally:
            if ws is not None:
                ws.close()

    def _queue_position(self) -> None:
        q = self.client.get_json("/queue")
        if any(item[1] == self.prompt_id for item in q.get("queue_running", [])):
            self._events.put({"event": "progress", "message": "running on ComfyUI"})
            return
        pending = sorted(item[0] for item in q.get("queue_pending", []))
        mine = [item[0] for item in q.get("queue_pending", []) if item[1] == self.prompt_id]
        if mine:
            self._events.put({"event": "progress", "message": f"queued on ComfyUI (position {pending.index(mine[0]) + 1})"})

    def _on_message(self, msg: dict) -> None:
        data = msg.get("data") or {}
        if data.get("prompt_id") not in (None, self.prompt_id):
            return
        kind, node = msg.get("type"), str(data.get("node"))
        recs = list(self._ids.get("reconstruct", {}).values())
        if kind == "progress" and data.get("max"):
            frac = min(1.0, data["value"] / data["max"])
            if node == self._ids.get("generate"):
                self._events.put({"event": "progress", "fraction": 0.02 + (self.GENERATE_SHARE - 0.02) * frac,
                                  "message": f"generating frame {data['value']}/{data['max']} on ComfyUI"})  # fmt: skip
            elif node in recs:
                share = self.RECONSTRUCT_SHARE / len(recs)
                method = next(m for m, i in self._ids["reconstruct"].items() if i == node)
                self._events.put({"event": "progress", "fraction": self.GENERATE_SHARE + share * (recs.index(node) + frac),
                                  "message": f"reconstructing the {method.replace('_', ' ')} on ComfyUI"})  # fmt: skip
        elif kind == "execution_start":
            self._events.put({"event": "progress", "fraction": 0.01, "message": "running on ComfyUI"})

    def _finished(self, entry: dict) -> None:
        status = entry.get("status") or {}
        messages = {m[0]: m[1] for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2}
        if status.get("status_str") != "success":
            if "execution_interrupted" in messages:
                self._events.put({"event": "interrupted"})
                return
            err = messages.get("execution_error") or {}
            where = f" ({err['node_type']})" if err.get("node_type") else ""
            text = err.get("exception_message") or "the workflow failed (see the ComfyUI console)"
            self._events.put({"event": "error", "message": f"ComfyUI failed{where}: {str(text).strip()}"})
            return
        self._events.put({"event": "progress", "fraction": self.GENERATE_SHARE + self.RECONSTRUCT_SHARE, "message": "downloading the results"})
        try:
            files = self._download(entry.get("outputs") or {})
        except AddonError as e:
            self._events.put({"event": "error", "message": str(e)})
            return
        self._events.put({"event": "result", "files": files})

    def _download(self, outputs: dict) -> dict:
        out = Path(os.path.abspath(self.inputs.out_dir))
        files = {}

        def fetch(key: str, entry: dict, name: str) -> None:
            if self._stop.is_set():
                raise AddonError("cancelled")
            target = out / name
            try:
                self.client.download(entry, target)
            except (urllib.error.URLError, OSError) as e:
                raise AddonError(f"The result file {entry.get('filename')} is missing on ComfyUI ({getattr(e, 'reason', e)}); nothing was imported.") from None
            self._written.append(target)
            files[key] = str(target)

        videos = [e for e in (outputs.get(self._ids["video"]) or {}).get("images", []) if str(e.get("filename", "")).endswith(".mp4")]
        if not videos:
            raise AddonError("The result file video.mp4 is missing: ComfyUI's Save Video node reported no video; nothing was imported.")
        fetch("video", videos[0], "video.mp4")
        metrics = {}
        for method, node in self._ids["reconstruct"].items():
            ui = outputs.get(node) or {}
            if not ui.get("3d"):
                raise AddonError(f"The result file of the {method.replace('_', ' ')} is missing: ComfyUI's Reconstruct node reported none.")
            entry = dict(ui["3d"][0])
            key = "mesh" if method == "mesh" else "point_cloud"
            if key in files:
                continue  # point_cloud and neural_field both give scene.ply: the first method asked for wins
            if method != "mesh":  # the node's 3d entry is a .glb preview; the .ply beside it is the result
                entry["filename"] = str(Path(entry["filename"]).with_suffix(".ply"))
            fetch(key, entry, METHOD_FILES[method])
            if ui.get("text"):
                try:
                    metrics[method] = {"quality_metrics": json.loads(ui["text"][0])}
                except (ValueError, TypeError):
                    pass
        traj = out / "trajectory.json"
        shutil.copyfile(self.inputs.trajectory, traj)
        self._written.append(traj)
        files["trajectory"] = str(traj)
        if metrics:
            first = next(iter(metrics))
            path = out / "metrics.json"
            path.write_text(json.dumps({"method": first, **metrics[first], "reconstructions": metrics, "server": self.url}, indent=2))
            self._written.append(path)
            files["metrics"] = str(path)
        return files

    # -- polling and cancelling (caller's thread) ----------------------------------------------
    def poll(self) -> list[dict]:
        """Drain the events since the last call and update state/progress/message."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            if self.state != "running":
                continue
            kind = event["event"]
            if kind == "progress":
                self.progress = max(self.progress, event.get("fraction", self.progress))
                self.message = event.get("message", self.message)
            elif kind == "result":
                missing = [p for p in event["files"].values() if not Path(p).is_file()]
                if missing:
                    self.state, self.message = "failed", f"The result file {missing[0]} is missing; nothing was imported. Run Generate again."
                else:
                    self.result_files, self.state, self.progress = event["files"], "done", 1.0
                    self.message = "done" + (f" ({'; '.join(self.notes)})" if self.notes else "")
            elif kind == "interrupted":
                self.state, self.message = "cancelled", "interrupted on the ComfyUI server"
            elif kind == "error":
                self.state, self.message = "failed", event["message"]
        if self.state == "running" and self._thread is not None and not self._thread.is_alive() and self._events.empty():
            self.state, self.message = "failed", f"Lost track of the prompt on ComfyUI at {self.url}."
        return events

    def cancel(self) -> None:
        """Interrupt this prompt on the server (or drop it from the queue); the job becomes 'cancelled'."""
        if self.state != "running":
            return
        self.state, self.message = "cancelled", "cancelled"
        self._stop.set()
        wait = min(self.timeout, 5.0)
        for path, body in (("/queue", {"delete": [self.prompt_id]}), ("/interrupt", {"prompt_id": self.prompt_id})):
            try:
                self.client.post_json(path, body, timeout=wait)
            except (urllib.error.URLError, OSError, ValueError):
                pass
        if self._thread is not None:
            self._thread.join(timeout=wait)
        for path in self._written:
            path.unlink(missing_ok=True)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> bool:
        """Poll until the job leaves 'running'; True if it did within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            if self.state != "running":
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)


def _digest(path) -> str:
    """A short content hash: the same input uploads under the same name (ComfyUI's input folder does not fill up)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _prompt_errors(answer: dict) -> str:
    """One line out of /prompt's {"error", "node_errors"} answer."""
    parts = []
    err = answer.get("error")
    if isinstance(err, dict):
        parts.append(err.get("message", "") + (f": {err['details']}" if err.get("details") else ""))
    elif err:
        parts.append(str(err))
    for node_id, info in (answer.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): {e.get('message', '')} {e.get('details', '')}".strip())
    return "; ".join(p for p in parts if p) or "no reason given"
