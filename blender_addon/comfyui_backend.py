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

import ipaddress
import json
import os
import queue
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from .depth_points import depth_to_points, first_camera, read_image_rgb
from .errors import AddonError
from .jobs import JobInputs
from .ply import write_ply
from .websocket import WebSocket

__all__ = ["DEFAULT_URL", "WORKFLOW", "Client", "ComfyJob", "build_prompt", "check_online_access",
           "normalise_url"]  # fmt: skip

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
            ws = WebSocket(f"{self.url}/ws?clientId={self.client_id}", self.timeout)
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
