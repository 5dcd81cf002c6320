"""Generation out of process: the ``worldstereo`` CLI run by the engine's own Python interpreter.

Pure Python (no bpy, no torch): Blender's Python starts ``<python> -m ws_engine.cli generate ...
--progress json`` and reads one JSON event per line from it on a daemon thread. A job is polled,
never waited on, so the modal operator's timer (or a test's loop) drives it:

    job = CliJob(python, JobInputs(image=..., trajectory=..., out_dir=...))
    job.start()
    while job.poll() or job.state == "running": ...   # state, progress (0..1), message
    job.result_files  # {"video": ..., "point_cloud": ..., "mesh": ...} once state == "done"

States: ``running`` -> ``done`` | ``failed`` (``message`` says why) | ``cancelled``. The ComfyUI
backend (comfyui_backend.ComfyJob) has the same interface.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AddonError

__all__ = ["OUTPUT_NAMES", "RECONSTRUCT_METHODS", "CliJob", "JobInputs", "check_interpreter", "engine_env", "stage_progress", "write_inputs"]

RECONSTRUCT_METHODS = ("point_cloud", "mesh", "neural_field")
# files the CLI writes into its output folder (removed again when a run is cancelled)
OUTPUT_NAMES = ("video.mp4", "frames.png", "trajectory.json", "result.safetensors", "memory.safetensors", "scene.ply", "mesh.glb",
                "neural_field.ply", "neural_field.glb", "metrics.json")  # fmt: skip
INSTALL_HINT = "pip install <the WorldStereo project folder> (package comfyui-worldstereo) into that environment"


@dataclass
class JobInputs:
    """What one generation needs (paths are files on this machine).

    image: condition image (the first camera's view); trajectory: project-format JSON (OpenCV c2w,
    K in pixels); depth: optional .npy (H,W) float z-depth of the first camera at ``size``;
    size: (H, W) of the output (None: the trajectory's); frames: resample the trajectory to this
    many (None: its own); reconstruct: methods among point_cloud, mesh, neural_field; out_dir:
    where the results go.
    """

    image: str
    trajectory: str
    out_dir: str
    depth: str | None = None
    size: tuple[int, int] | None = None
    frames: int | None = None
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    reconstruct: list[str] = field(default_factory=lambda: ["point_cloud", "mesh"])
    camera_model: str = "perspective"

    def check(self) -> None:
        """AddonError for a missing input file, an unknown method, or a bad size/frame count."""
        for what, path in (("condition image", self.image), ("trajectory", self.trajectory), ("depth prior", self.depth)):
            if path is not None and not Path(path).is_file():
                raise AddonError(f"The {what} file {path} does not exist; run Generate again (it writes the inputs).")
        bad = [m for m in self.reconstruct if m not in RECONSTRUCT_METHODS]
        if bad:
            raise AddonError(f"Unknown reconstruction method {bad[0]!r}; choose from {', '.join(RECONSTRUCT_METHODS)}.")
        if self.size is not None and (len(self.size) != 2 or min(int(s) for s in self.size) < 16):
            raise AddonError(f"The output size must be (height, width) of at least 16 pixels each, got {tuple(self.size)}.")
        if self.frames is not None and self.frames < 2:
            raise AddonError(f"A trajectory needs at least 2 frames, got {self.frames}.")
        if self.steps < 1:
            raise AddonError(f"Steps must be at least 1, got {self.steps}.")

    def cli_args(self, device: str = "auto") -> list[str]:
        """The ``worldstereo generate`` arguments (without the interpreter and ``-m ws_engine.cli``)."""
        a = os.path.abspath  # the process runs in the output folder
        args = ["generate", "--image", a(self.image), "--trajectory", a(self.trajectory), "--out", a(self.out_dir),
                "--steps", str(int(self.steps)), "--guidance", str(float(self.guidance)), "--seed", str(int(self.seed)),
                "--device", device, "--progress", "json", "--reconstruct", *(list(self.reconstruct) or ["none"])]  # fmt: skip
        if self.depth is not None:
            args += ["--depth", a(self.depth)]
        args += ["--camera-model", self.camera_model]
        if self.size is not None:
            args += ["--size", f"{int(self.size[0])}x{int(self.size[1])}"]
        if self.frames is not None:
            args += ["--frames", str(int(self.frames))]
        return args


def write_inputs(trajectory, depth=None, folder=None) -> tuple[str, str | None]:
    """Write a trajectory (dict or JSON text) and an optional depth (H,W) array into a job folder.

    folder: where (None: a new temporary folder). Returns (trajectory.json path, depth.npy path or None).
    """
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="worldstereo_job_"))
    folder.mkdir(parents=True, exist_ok=True)
    traj_path = folder / "trajectory.json"
    traj_path.write_text(trajectory if isinstance(trajectory, str) else json.dumps(trajectory, indent=1), encoding="utf-8")
    depth_path = None
    if depth is not None:
        import numpy as np

        depth_path = folder / "depth.npy"
        np.save(depth_path, np.asarray(depth, dtype=np.float32))
    return str(traj_path), None if depth_path is None else str(depth_path)


# ----------------------------------------------------------------------------------------------
# the interpreter
# ----------------------------------------------------------------------------------------------
def engine_env() -> dict:
    """The environment for the engine's interpreter: Blender's own PYTHONHOME/PYTHONPATH removed
    (they would point another Python at Blender's library), output unbuffered and UTF-8."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    return env


def check_interpreter(python: str, timeout: float = 20) -> None:
    """AddonError unless ``python`` is an executable interpreter that imports ws_engine."""
    if not python:
        raise AddonError("No engine interpreter is set: in the add-on preferences, pick the Python of an environment where WorldStereo is installed.")
    path = Path(python)
    if not path.exists():
        raise AddonError(f"The engine's Python '{python}' does not exist: fix the interpreter path in the add-on preferences.")
    if path.is_dir():
        hint = "Scripts\\python.exe" if os.name == "nt" else "bin/python"
        raise AddonError(f"The engine's Python '{python}' is a folder: pick the interpreter inside it (e.g. {path / hint}).")
    if not os.access(path, os.X_OK):
        raise AddonError(f"The engine's Python '{python}' is not executable: pick a Python interpreter (e.g. .venv/bin/python).")
    code = "import ws_engine, sys; print(ws_engine.__version__)"
    try:
        out = subprocess.run([str(path), "-c", code], check=False, capture_output=True, text=True, timeout=timeout, env=engine_env(), stdin=subprocess.DEVNULL,
                             cwd=tempfile.gettempdir())  # not a folder that holds ws_engine itself  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AddonError(f"The engine's Python '{python}' did not answer within {timeout:g} s; check that it starts (run it in a terminal).") from None
    except OSError as e:
        raise AddonError(f"The engine's Python '{python}' cannot be started ({e.strerror or e}); pick a Python interpreter.") from None
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AddonError(f"The Python '{python}' lacks the WorldStereo engine ({last[0]}): {INSTALL_HINT}.")


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------
GENERATE_SHARE, RECONSTRUCT_SHARE = 0.75, 0.2  # the rest is writing the files


def stage_progress(stage: str, step: int, total: int, methods) -> tuple[float, str]:
    """(overall fraction 0..1, message) of a CLI progress/stage event; ``methods``: the reconstructions asked for."""
    methods = list(methods)
    frac = min(max(step / total, 0.0), 1.0) if total else 0.0
    gen = GENERATE_SHARE if methods else GENERATE_SHARE + RECONSTRUCT_SHARE
    if stage == "generate":
        return gen * frac, f"generating frame {step}/{total}" if total and step else "generating the video"
    if stage.startswith("reconstruct"):
        method = stage[stage.find("(") + 1 : stage.rfind(")")] if "(" in stage else ""
        i = methods.index(method) if method in methods else 0
        share = RECONSTRUCT_SHARE / max(1, len(methods))
        label = method.replace("_", " ") or "scene"
        return gen + share * (i + frac), f"reconstructing the {label}" + (f" ({step}/{total})" if total and step else "")
    if stage == "write":
        return GENERATE_SHARE + RECONSTRUCT_SHARE, "writing the files"
    return 0.0, stage


# ----------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------
class CliJob:
    """``worldstereo generate`` in a subprocess; ``poll()`` drains its events.

    Attributes: state ('idle' before start, then 'running' | 'done' | 'failed' | 'cancelled'),
    progress (0..1), message, result_files ({key: absolute path} once done), returncode.
    """

    KILL_AFTER = 5.0  # seconds between SIGINT and kill on cancel
    STDERR_LINES = 40

    def __init__(self, python: str, inputs: JobInputs, device: str = "auto"):
        self.python, self.inputs, self.device = str(python), inputs, device
        self.state, self.progress, self.message = "idle", 0.0, ""
        self.result_files: dict[str, str] = {}
        self.returncode: int | None = None
        self.process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: collections.deque = collections.deque(maxlen=self.STDERR_LINES)
        self._readers: list[threading.Thread] = []
        self._result: dict | None = None
        self._error: dict | None = None
        self._before: dict[str, float] = {}
        self._reaper: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "ws_engine.cli", *self.inputs.cli_args(self.device)]

    def start(self) -> CliJob:
        """Check the inputs and launch the process (AddonError if it cannot start)."""
        if self.state != "idle":
            raise AddonError("This job was started already; make a new one.")
        self.inputs.check()
        out = Path(os.path.abspath(self.inputs.out_dir))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AddonError(f"The output folder {out} cannot be created ({e.strerror or e}); choose another output folder.") from None
        self._before = {name: (out / name).stat().st_mtime_ns for name in OUTPUT_NAMES if (out / name).exists()}
        kw = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        try:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                errors="replace", bufsize=1, env=engine_env(), cwd=str(out), **kw,
            )  # fmt: skip
        except OSError as e:
            raise AddonError(f"The engine's Python '{self.python}' cannot be started ({e.strerror or e}); check the add-on preferences.") from None
        self.state, self.message = "running", "starting the engine"
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True, name="worldstereo-stdout"),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True, name="worldstereo-stderr"),
        ]
        for t in self._readers:
            t.start()
        return self

    # readers (worker threads: they only touch the queue and the deque)
    def _read_stdout(self, stream) -> None:
        for line in stream:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                self._events.put(event)
        stream.close()

    def _read_stderr(self, stream) -> None:
        for line in stream:
            if line.strip():
                self._stderr.append(line.rstrip())
        stream.close()

    # polling (the caller's thread)
    def poll(self) -> list[dict]:
        """Drain the events that came since the last call and update state/progress/message."""
        if self.process is None:
            return []
        events = self._drain()
        if self.state != "running":
            return events
        code = self.process.poll()
        if code is None:
            return events
        for t in self._readers:  # the process is gone: read what it printed last
            t.join(timeout=2)
        events += self._drain()
        self.returncode = code
        self._finish(code)
        return events

    def _drain(self) -> list[dict]:
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            events.append(event)
            self._apply(event)

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "result":
            self._result = event
        elif kind == "error":
            self._error = event
        elif self.state == "running" and kind in ("stage", "progress"):
            step, total = (event.get("step", 0), event.get("total") or 0) if kind == "progress" else (0, event.get("total") or 0)
            progress, self.message = stage_progress(event.get("stage", ""), step, total, self.inputs.reconstruct)
            self.progress = max(self.progress, progress)

    def _finish(self, code: int) -> None:
        if self.state == "cancelled":
            return
        if code == 0 and self._result is not None:
            files = {k: str(v) for k, v in (self._result.get("files") or {}).items()}
            missing = [p for p in files.values() if not Path(p).is_file()]
            if missing:
                self.state, self.message = "failed", f"The result file {missing[0]} is missing; nothing was imported. Run Generate again."
                return
            self.result_files, self.state, self.progress, self.message = files, "done", 1.0, "done"
            return
        self.state = "failed"
        if self._error is not None and self._error.get("message"):
            self.message = f"The engine stopped: {self._error['message']}"
        else:
            tail = " | ".join(list(self._stderr)[-3:]) or "no output"
            what = f"exit code {code}" if code >= 0 else f"signal {-code}"
            self.message = f"The engine process died ({what}) without a result: {tail}"

    # cancelling
    def cancel(self) -> None:
        """Interrupt the process (SIGINT; killed after KILL_AFTER s) and mark the job cancelled.

        Returns at once; files this run wrote into out_dir are removed once the process is gone.
        """
        if self.process is None or self.state != "running":
            return
        self.state, self.message = "cancelled", "cancelled"
        if self.process.poll() is None:
            try:
                if os.name == "nt":
                    self.process.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    self.process.send_signal(signal.SIGINT)
            except OSError:
                pass
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="worldstereo-reaper")
        self._reaper.start()

    def _reap(self) -> None:
        try:
            self.process.wait(self.KILL_AFTER)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.returncode = self.process.returncode
        out = Path(self.inputs.out_dir)
        for name in OUTPUT_NAMES:
            path = out / name
            try:
                if path.exists() and self._before.get(name) != path.stat().st_mtime_ns:
                    path.unlink()
            except OSError:
                pass

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> bool:
        """Poll until the job leaves 'running' and its process is gone; True if so within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            gone = self.process is None or (self.process.poll() is not None and (self._reaper is None or not self._reaper.is_alive()))
            if self.state != "running" and gone:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def __del__(self):  # a job dropped while running does not leave the engine behind
        proc = getattr(self, "process", None)
        if proc is not None and proc.poll() is None and sys is not None:
            try:
                proc.kill()
            except OSError:
                pass
