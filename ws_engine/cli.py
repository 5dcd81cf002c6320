"""The ``worldstereo`` command: demo, generate, reconstruct, trajectory.

Progress goes to a tqdm bar on stderr, or with ``--progress json`` to one JSON object per line on
stdout (``{"event": "progress", ...}``, finally ``{"event": "result", ...}`` or
``{"event": "error", ...}``) for programs that drive the command (the Blender add-on).
The result event lists every file written, by absolute path. In json mode bad arguments also
come as an error event, and an unexpected failure as ``{"event": "error", "type": ...}`` (exit 1,
the traceback on stderr).
Exit codes: 0 done, 1 unexpected failure, 2 bad input (a message says what to fix), 130 interrupted
(no file is half-written).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class Reporter:
    """Progress and results as a tqdm bar (``bar``), JSON lines (``json``) or nothing (``none``)."""

    def __init__(self, mode: str):
        self.mode, self._bar, self._stage = mode, None, ""

    def stage(self, name: str, total: int | None = None) -> None:
        self.close()
        self._stage = name
        if self.mode == "json":
            self.emit(event="stage", stage=name, total=total)
        elif self.mode == "bar" and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit="frame", file=sys.stderr, leave=True)
        elif self.mode == "bar":
            print(f"{name}...", file=sys.stderr, flush=True)

    def __call__(self, step: int, total: int, latent=None) -> None:
        if self.mode == "json":
            self.emit(event="progress", stage=self._stage, step=int(step), total=int(total))
        elif self._bar is not None:
            self._bar.total = total
            self._bar.n = step
            self._bar.refresh()

    def emit(self, **fields) -> None:
        if self.mode == "json":
            print(json.dumps(fields), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def done(self, files: dict, **extra) -> None:
        self.close()
        if self.mode == "json":
            self.emit(event="result", files={k: str(Path(v).resolve()) for k, v in files.items()}, **extra)
        elif self.mode == "bar":
            for name, path in files.items():
                print(f"{name:>12}: {path}")


class _ArgumentError(Exception):
    """A bad command line (argparse's message), reported as an error event in json mode."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgumentError(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``480x768`` -> (480, 768) as (height, width)."""
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text), int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW (height x width), got {text!r}") from None


def _methods(values: list[str]) -> list[str]:
    """``--reconstruct`` values (several, or a comma list) -> the methods in order, no repeats; [] for none."""
    from .errors import ConfigError
    from .reconstruction import RECONSTRUCTION_METHODS

    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in ("none",) + RECONSTRUCTION_METHODS]
    if bad:
        raise ConfigError(f"--reconstruct {bad[0]!r} is not a method; choose from {', '.join(RECONSTRUCTION_METHODS)} (several allowed) or none.")
    if "none" in names and len(names) > 1:
        raise ConfigError("--reconstruct none cannot be combined with methods; give methods or none.")
    return list(dict.fromkeys(n for n in names if n != "none"))


def _device(name: str):
    """``auto`` -> None (CUDA when available); other names pass through."""
    return None if name == "auto" else name


def build_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS
    from .reconstruction import RECONSTRUCTION_METHODS
    from .trajectory_io import TRAJECTORY_FORMATS

    ap = _Parser(prog="worldstereo", description="WorldStereo: camera-guided video generation with 3D geometric memories, and 3D reconstruction.")
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out", default=None, help="output folder")
        p.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress display (json: one object per line)")
        p.add_argument("--device", default="cpu", help="cpu, cuda (falls back to cpu with a warning) or auto (cuda when available)")

    p = sub.add_parser("demo", help="the embedded default: generate and reconstruct a procedural room (no input, no weights)")
    common(p)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mesh", action="store_true", help="skip the TSDF mesh")

    p = sub.add_parser("generate", help="generate a video from one image along a trajectory")
    common(p)
    p.add_argument("--image", required=True, help="condition image (the view of the trajectory's first camera)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--depth", help="depth map of the image: image file (8/16-bit PNG, TIFF, EXR) or .npy")
    g.add_argument("--depth-model", help="transformers depth model id or folder (needs the neural extra)")
    p.add_argument("--depth-kind", choices=("depth", "disparity"), default="depth")
    p.add_argument("--depth-scale", type=float, default=1.0, help="depth = value x scale (disparity: depth = scale / value)")
    p.add_argument("--scene-depth", type=float, default=None,
                   help="median depth for depth known only up to scale (depth model, fallback prior); default: a camera.json's pivot distance, else 3")  # fmt: skip
    p.add_argument("--point-cloud", help="a point cloud file (.ply, .npy, ...) added to the memory")
    p.add_argument("--trajectory", default="orbit_left", help=f"a preset ({', '.join(PRESETS)}) or a trajectory file")
    p.add_argument("--frames", type=int, default=None, help="frames of a preset (a file gives its own)")
    p.add_argument("--size", type=_size, default=None, help="N or HxW; default: the trajectory file's, else the image's (long side <= 768)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view of a preset's camera (degrees)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="geometric",
                   help="geometric (training-free, default), a folder written by save_pretrained, or a WorldStereo 2.0 checkpoint: "
                        "hanshanxue/WorldStereo or a local folder in its layout, with --variant")
    p.add_argument("--variant", default=None, choices=("worldstereo-camera", "worldstereo-memory", "worldstereo-memory-dmd"),
                   help="subfolder of a WorldStereo 2.0 checkpoint")
    p.add_argument("--dtype", default="auto", help="weights of a neural model: auto (bf16 on CUDA, else fp32), fp32, fp16, bf16")
    p.add_argument("--cpu-offload", action="store_true", help="keep a neural model's weights on the CPU until each part runs")
    p.add_argument("--local-files-only", action="store_true", help="do not contact the hub (use its cache or local folders)")
    p.add_argument("--prompt", default="", help="text prompt of a neural model")
    p.add_argument("--camera-model", choices=("auto", "perspective", "equirectangular"), default="auto",
                   help="the image's camera: auto takes 2:1 images as 360-degree panoramas (explored with perspective cameras "
                        "from their centre; --depth is then an equirectangular map of distances along the rays)")
    p.add_argument("--panorama-out", default=None, metavar="NAME.png",
                   help="also write the explored scene as an equirectangular panorama from the first camera (in --out)")
    p.add_argument("--panorama-size", type=_size, default=None, metavar="HxW",
                   help="size of --panorama-out (default: the input panorama's, else 1024x2048)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps of a neural backbone (default: its own, 40)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale of a neural backbone (default: its own, 5.0)")
    p.add_argument("--reconstruct", nargs="+", default=["point_cloud"], metavar="METHOD",
                   help=f"one or more of {', '.join(RECONSTRUCTION_METHODS)} (space or comma separated), or none; "
                        "point_cloud writes scene.ply, mesh mesh.glb")  # fmt: skip

    p = sub.add_parser("reconstruct", help="reconstruct a scene from a `generate` output folder")
    common(p)
    p.add_argument("--run", required=True, help="folder written by `worldstereo generate` (holds result.safetensors)")
    p.add_argument("--method", choices=RECONSTRUCTION_METHODS, default="mesh")

    p = sub.add_parser("trajectory", help="convert a trajectory between formats, or plot it")
    p.add_argument("source", help="a trajectory file, or a preset name")
    p.add_argument("--frames", type=int, default=16, help="frames of a preset")
    p.add_argument("--size", type=_size, default=(512, 512), help="size of a preset's camera")
    p.add_argument("--to", dest="fmt", choices=TRAJECTORY_FORMATS, default="worldstereo", help="output format")
    p.add_argument("--out", help="write the trajectory here (a folder for colmap)")
    p.add_argument("--plot", help="write a PNG with camera frustums (top and side views)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="output display (json: one object per line)")
    return ap


def _version() -> str:
    from . import __version__

    return f"worldstereo {__version__}"


# ----------------------------------------------------------------------------------------------
def cmd_demo(args, rep: Reporter) -> None:
    from .demo import DEMO_FILES, run_demo

    out = Path(args.out or "output/demo")
    metrics = run_demo(
        out, num_frames=args.frames, size=args.size, seed=args.seed, mesh=not args.no_mesh, device=_device(args.device),
        progress_callback=rep, on_stage=rep.stage,
    )  # fmt: skip
    rep.close()
    files = {name: out / name for name in DEMO_FILES if (out / name).exists()}
    summary = {"psnr_seen": metrics["psnr_seen"], "psnr": metrics["psnr"], "timings_s": metrics["timings_s"]}
    if rep.mode == "bar":
        print(f"PSNR against the exact scene: {metrics['psnr_seen']} dB where the memory saw it, {metrics['psnr']} dB overall")
    rep.done(files, metrics=summary)


def _preset_trajectory(name: str, frames: int, size, fov: float, scene_depth: float):
    from .cameras import CameraTrajectory

    H, W = size
    return CameraTrajectory.preset(name, num_frames=frames, width=W, height=H, fov=fov, scene_depth=scene_depth)


def _default_size(h: int, w: int, long_side: int = 768, multiple: int = 16) -> tuple[int, int]:
    scale = min(1.0, long_side / max(h, w))
    return max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple)


def _load_model(args):
    """The model of ``--model`` (and --variant, --dtype, --cpu-offload, --local-files-only) on ``--device``."""
    from .model import WorldStereo
    from .optimization import enable_model_cpu_offload

    if args.model == "geometric" and not args.variant:
        return WorldStereo(device=_device(args.device))
    model = WorldStereo.from_pretrained(args.model, args.variant, local_files_only=args.local_files_only, torch_dtype=args.dtype,
                                        device=_device(args.device))  # fmt: skip
    if args.cpu_offload:
        enable_model_cpu_offload(model)
    return model


def cmd_generate(args, rep: Reporter) -> None:
    from .depth import resolve_depth
    from .errors import ConfigError
    from .io import load_image
    from .panorama import resolve_camera_model
    from .pipeline import generate_video, load_condition_image, trajectory_scene_depth
    from .presets import PRESETS
    from .trajectory_io import load_trajectory

    out = Path(args.out or "output/generate")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder.")
    methods = _methods(args.reconstruct)
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}.")
    if args.frames is not None and args.frames < 2:
        raise ConfigError(f"--frames must be at least 2, got {args.frames}.")
    image = load_image(args.image)
    model = _load_model(args)
    backbone = model.backbone
    scene_depth = args.scene_depth or 3.0
    if args.panorama_out and Path(args.panorama_out).suffix.lower() != ".png":
        from .errors import OutputPathError

        raise OutputPathError(f"--panorama-out must be a .png file name (written in --out), got {args.panorama_out!r}.")
    if args.panorama_size and args.panorama_size[1] != 2 * args.panorama_size[0]:
        raise ConfigError(f"--panorama-size must be 2:1 (HxW with W = 2H), got {args.panorama_size[0]}x{args.panorama_size[1]}.")
    if resolve_camera_model(args.camera_model, *image.shape[-2:]) == "equirectangular":
        return _generate_from_panorama(args, rep, model, image, out, methods)
    is_preset = args.trajectory in PRESETS
    if not is_preset and not Path(args.trajectory).exists():
        from .errors import UnknownNameError

        raise UnknownNameError("trajectory preset or file", args.trajectory, PRESETS)
    if is_preset:
        from .cameras import CameraParameters

        size = args.size or backbone.preferred_size(*_default_size(*image.shape[-2:]))
        first = CameraParameters.from_fov(args.fov, size[1], size[0])
    else:
        traj, meta = load_trajectory(args.trajectory, return_meta=True)
        traj = traj.rescale(args.size[1], args.size[0]) if args.size else traj
        scene_depth = args.scene_depth or trajectory_scene_depth(meta) or 3.0
        first, size = traj[0], (traj.height, traj.width)
    cam_image = load_condition_image(image, *size)
    depth = None
    if args.depth or args.depth_model or not args.point_cloud:  # a point cloud alone may start the memory
        depth = resolve_depth(cam_image, first, depth=args.depth, depth_kind=args.depth_kind, depth_scale=args.depth_scale,
                              depth_model=args.depth_model, device=args.device, scene_depth=scene_depth)  # fmt: skip
    if is_preset:  # a preset's motion is scaled by the scene's median depth
        scene_depth = float(depth[depth > 0].median()) if depth is not None else 1.0
        default_frames = 21 if backbone.chunk_size > 1 else 16  # a neural backbone takes 1 + 20k frames
        traj = _preset_trajectory(args.trajectory, args.frames or default_frames, size, args.fov, scene_depth)
    elif args.frames and args.frames != len(traj):
        traj = traj.resample(args.frames)
    traj = backbone.prepare_trajectory(traj, args.frames)
    backbone.check_frames(len(traj))
    rep.stage("generate", len(traj))
    video, result = generate_video(model, cam_image, traj, seed=args.seed, depth=depth, point_cloud=args.point_cloud, progress_callback=rep,
                                   num_inference_steps=args.steps, guidance_scale=args.guidance, prompt=args.prompt, return_result=True)  # fmt: skip
    recs = _reconstruct_all(methods, result, traj, model, rep)
    _write_outputs(args, rep, model, traj, video, result, recs, out)


def _write_outputs(args, rep, model, traj, video, result, recs, out: Path, default_panorama_height: int = 1024) -> None:
    """Write the run's files (video, frames, trajectory, result, memory, reconstructions, panorama) and report them."""
    from safetensors.torch import save_file

    from .io import atomic_path, save_frame_grid, save_image, save_video
    from .panorama import render_panorama
    from .trajectory_io import save_trajectory

    rep.stage("write")
    files = {}
    if args.panorama_out:
        name = Path(args.panorama_out).name
        H = (args.panorama_size or (default_panorama_height, 0))[0]
        c2w = traj.cameras.c2wb[0].cpu()
        pano, _, _ = render_panorama(model, c2w[:3, 3], 2 * H, H, rotation=c2w[:3, :3])
        files["panorama"] = save_image(out / name, pano)
    files["video"] = save_video(out / "video.mp4", video, fps=traj.fps)
    files["frames"] = save_frame_grid(out / "frames.png", video)
    files["trajectory"] = save_trajectory(traj, out / "trajectory.json")
    with atomic_path(out / "result.safetensors") as tmp:
        save_file({"frames": result.frames.contiguous().cpu(), "depth": result.depth.contiguous().cpu(),
                   "confidence": result.confidence.contiguous().cpu(), "holes": result.holes.contiguous().cpu()}, str(tmp))  # fmt: skip
    files["result"] = out / "result.safetensors"
    files["memory"] = model.global_memory.save(out / "memory.safetensors")
    if recs:
        files.update(_write_reconstructions(recs, out))
    rep.done(files, frames=len(traj))


def _reconstruct_all(methods, result, traj, model, rep) -> dict:
    from .reconstruction import reconstruct

    recs = {}
    for method in methods:
        rep.stage(f"reconstruct ({method})")
        memory = model.global_memory if method == "point_cloud" else None
        recs[method] = reconstruct(result.frames, result.depth, traj, method, memory=memory, confidences=result.confidence, progress_callback=rep)
    return recs


def _generate_from_panorama(args, rep, model, pano, out: Path, methods) -> None:
    """``generate`` for an equirectangular image: perspective cameras from its centre (frame 0 the crop)."""
    import torch

    from .cameras import CameraParameters
    from .panorama import panorama_camera, panorama_depth
    from .pipeline import generate_video
    from .presets import PRESETS
    from .trajectory_io import load_trajectory

    if args.point_cloud:
        from .errors import ConfigError

        raise ConfigError("--point-cloud cannot be combined with a panorama yet; give the panorama's --depth or --depth-model instead.")
    if args.trajectory in PRESETS:
        side = max(16, min(512, pano.shape[-2] // 2) // 16 * 16)
        size = args.size or backbone_size(model, side)
        first = CameraParameters.from_fov(args.fov, size[1], size[0])
        pano_cam = panorama_camera(first.c2wb[0], pano.shape[-1], pano.shape[-2])
        depth = panorama_depth(pano, pano_cam, depth=args.depth, depth_kind=args.depth_kind, depth_scale=args.depth_scale,
                               depth_model=args.depth_model, scene_depth=args.scene_depth or 3.0, device=args.device)  # fmt: skip
        scene_depth = float(depth[depth > 0].median()) if bool((depth > 0).any()) else 1.0
        default_frames = 21 if model.backbone.chunk_size > 1 else 16
        traj = _preset_trajectory(args.trajectory, args.frames or default_frames, size, args.fov, scene_depth)
    else:
        traj = load_trajectory(args.trajectory)
        traj = traj.rescale(args.size[1], args.size[0]) if args.size else traj
        traj = traj.resample(args.frames) if args.frames and args.frames != len(traj) else traj
        depth = None if args.depth is None else args.depth
    traj = model.backbone.prepare_trajectory(traj, args.frames)
    model.backbone.check_frames(len(traj))
    rep.stage("generate", len(traj))
    kind, scale = ("depth", 1.0) if isinstance(depth, torch.Tensor) else (args.depth_kind, args.depth_scale)
    video, result = generate_video(model, pano, traj, seed=args.seed, depth=depth, depth_kind=kind, depth_scale=scale, depth_model=args.depth_model,
                                   scene_depth=args.scene_depth, progress_callback=rep, num_inference_steps=args.steps,
                                   guidance_scale=args.guidance, prompt=args.prompt, return_result=True, camera_model="equirectangular")  # fmt: skip
    recs = _reconstruct_all(methods, result, traj, model, rep)
    _write_outputs(args, rep, model, traj, video, result, recs, out, default_panorama_height=min(pano.shape[-2], 2048))


def backbone_size(model, side: int) -> tuple[int, int]:
    """A square perspective size for panorama crops, or the neural backbone's square bucket."""
    return model.backbone.preferred_size(side, side)


def _write_reconstructions(recs: dict, out: Path) -> dict:
    """Write the reconstructions {method: Reconstruction}; returns {key: path}.

    scene.ply (key ``point_cloud``) holds the point_cloud method's points, else a neural field's,
    else the mesh's vertices; mesh.glb (key ``mesh``) the mesh method's mesh, else a neural field's.
    A neural field beside those writes neural_field.ply / neural_field.glb. metrics.json has the
    first method's ``method``/``quality_metrics`` and every method under ``reconstructions``.
    """
    from .io import atomic_write_text, save_ply

    files = {}
    for method in ("point_cloud", "neural_field", "mesh"):
        if method in recs and "point_cloud" not in files:
            rec = recs[method]
            files["point_cloud"] = save_ply(out / "scene.ply", rec.points, rec.colors, rec.normals)
    for method in ("mesh", "neural_field"):
        if method in recs and recs[method].mesh is not None and "mesh" not in files:
            files["mesh"] = recs[method].mesh.save(out / "mesh.glb")
    field = recs.get("neural_field")
    if field is not None and ("point_cloud" in recs or "mesh" in recs):
        if "point_cloud" in recs:
            files["neural_field_points"] = save_ply(out / "neural_field.ply", field.points, field.colors, field.normals)
        if field.mesh is not None and "mesh" in recs:
            files["neural_field_mesh"] = field.mesh.save(out / "neural_field.glb")
    first = next(iter(recs.values()))
    metrics = {"method": first.method, "quality_metrics": first.quality_metrics,
               "reconstructions": {m: {"quality_metrics": r.quality_metrics} for m, r in recs.items()}}  # fmt: skip
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return files


def cmd_reconstruct(args, rep: Reporter) -> None:
    from safetensors.torch import load_file

    from .errors import InputFileError
    from .memory import GlobalGeometricMemory
    from .reconstruction import reconstruct
    from .trajectory_io import load_trajectory

    run = Path(args.run)
    needed = [run / "result.safetensors", run / "trajectory.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise InputFileError(f"{', '.join(missing)} not found; --run must be a folder written by `worldstereo generate`.")
    try:
        data = load_file(str(run / "result.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise InputFileError(f"{run / 'result.safetensors'} cannot be read ({e}); run `worldstereo generate` again.") from None
    traj = load_trajectory(run / "trajectory.json")
    memory = GlobalGeometricMemory.load(run / "memory.safetensors") if args.method == "point_cloud" and (run / "memory.safetensors").is_file() else None
    rep.stage(f"reconstruct ({args.method})")
    rec = reconstruct(data["frames"], data["depth"], traj, args.method, memory=memory, confidences=data.get("confidence"), progress_callback=rep)
    out = Path(args.out or run)
    rep.done(_write_reconstructions({args.method: rec}, out))


def cmd_trajectory(args, rep: Reporter) -> None:
    from .errors import ConfigError, UnknownNameError
    from .plot import save_trajectory_plot
    from .presets import PRESETS
    from .trajectory_io import load_trajectory, save_trajectory

    if not args.out and not args.plot:
        raise ConfigError("Nothing to do: pass --out FILE (convert) and/or --plot FILE.png.")
    if Path(args.source).exists():
        traj = load_trajectory(args.source)
    elif args.source in PRESETS:
        traj = _preset_trajectory(args.source, args.frames, args.size, 60.0, 1.0)
    else:
        raise UnknownNameError("trajectory preset or file", args.source, PRESETS)
    files = {}
    if args.out:
        files["trajectory"] = save_trajectory(traj, args.out, format=args.fmt)
    if args.plot:
        files["plot"] = save_trajectory_plot(traj, args.plot)
    rep.done(files, frames=len(traj))


def _json_requested(argv: list[str]) -> bool:
    """``--progress json`` (or ``--progress=json``) on a command line argparse rejected."""
    return any(a == "--progress=json" or (a == "--progress" and argv[i + 1 : i + 2] == ["json"]) for i, a in enumerate(argv))


COMMANDS = {"demo": cmd_demo, "generate": cmd_generate, "reconstruct": cmd_reconstruct, "trajectory": cmd_trajectory}


def main(argv=None) -> int:
    from .errors import WorldStereoError

    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if hasattr(signal, "SIGBREAK"):  # Windows: Ctrl+Break (how the Blender add-on cancels) stops cleanly like Ctrl+C
        try:
            signal.signal(signal.SIGBREAK, signal.default_int_handler)
        except ValueError:  # not the main thread
            pass
    try:
        args = build_parser().parse_args(argv)
    except _ArgumentError as e:
        if _json_requested(argv):
            Reporter("json").emit(event="error", type="ArgumentError", message=str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = Reporter(getattr(args, "progress", "bar"))
    start = time.perf_counter()
    try:
        COMMANDS[args.command](args, rep)
    except WorldStereoError as e:
        rep.close()
        rep.emit(event="error", type=type(e).__name__, message=str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        rep.close()
        rep.emit(event="error", type="KeyboardInterrupt", message="interrupted; no file is half-written")
        print("interrupted; no file is half-written", file=sys.stderr)
        return 130
    except Exception as e:
        if rep.mode != "json":
            raise
        import traceback

        rep.close()
        traceback.print_exc()
        rep.emit(event="error", type=type(e).__name__, message=f"unexpected failure: {e}")
        return 1
    if rep.mode == "bar":
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
