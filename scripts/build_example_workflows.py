"""Write the example workflows (ComfyUI UI format) and their thumbnails from a real run.

    python scripts/build_example_workflows.py            # workflows + thumbnails
    python scripts/build_example_workflows.py --no-run   # workflows only

Each workflow is described here as nodes and links; widget values follow the node definitions
(the pack's INPUT_TYPES and the core nodes' inputs), so a saved workflow always matches the nodes.
The thumbnails come from running the workflow through tests/comfy_pack.py on the procedural room.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import comfy_pack  # noqa: E402

OUT = ROOT / "example_workflows"
EXAMPLE_IMAGE = "worldstereo_example.png"
# sizes at least the front end's own minimum for each node (it enlarges smaller ones on load)
NODE_SIZE = {
    "MarkdownNote": (440, 160), "LoadImage": (300, 320), "WorldStereoLoadModel": (300, 190), "WorldStereoCameraTrajectory": (320, 330),
    "PreviewImage": (320, 260), "WorldStereoGeometricMemory": (300, 280), "WorldStereoGenerate": (320, 300), "CreateVideo": (260, 80),
    "SaveVideo": (300, 110), "WorldStereoReconstruct": (320, 150), "Preview3D": (400, 550), "WorldStereoRenderMemory": (260, 90),
    "WorldStereoUpdateMemory": (300, 140), "ImageBlur": (280, 90), "ImageCompositeMasked": (300, 160),
}  # fmt: skip
MIN_READABLE_SCALE = 0.6  # the front end hides text below about 0.58


class Graph:
    """A UI-format workflow built node by node."""

    def __init__(self):
        self.defs = comfy_pack.definitions()
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, kind: str, pos, title: str | None = None, **widgets) -> dict:
        node_id = len(self.nodes) + 1
        if kind in ("Note", "MarkdownNote"):
            node = {"id": node_id, "type": kind, "pos": list(pos), "size": list(NODE_SIZE[kind]), "flags": {}, "order": node_id - 1,
                    "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [widgets["text"]]}  # fmt: skip
            self.nodes.append(node)
            return node
        spec = self.defs[kind]
        values, inputs = [], []
        for section in ("required", "optional"):
            for name, entry in (spec["input"].get(section) or {}).items():
                kind_ = entry[0]
                options = entry[1] if len(entry) > 1 else {}
                is_widget = isinstance(kind_, list) or kind_ in ("INT", "FLOAT", "STRING", "BOOLEAN")
                if not is_widget:
                    inputs.append({"name": name, "type": kind_, "link": None})
                    continue
                default = options.get("default", kind_[0] if isinstance(kind_, list) and kind_ else None)
                value = widgets.pop(name, default)
                values.append(value)
                widget_type = "COMBO" if isinstance(kind_, list) else kind_
                inputs.append({"name": name, "type": widget_type, "widget": {"name": name}, "link": None})
                if kind_ == "INT" and name in ("seed", "noise_seed"):
                    values.append("fixed")  # control_after_generate
                if options.get("image_upload"):
                    values.append("image")  # the upload button
        if widgets:
            raise KeyError(f"{kind} has no widget(s) {sorted(widgets)}")
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(zip(_names(self.defs[kind]), spec["output"]))]
        node = {"id": node_id, "type": kind, "pos": list(pos), "size": list(NODE_SIZE[kind]), "flags": {}, "order": node_id - 1,
                "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": kind}, "widgets_values": values}  # fmt: skip
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, source: dict, output: str, target: dict, input_name: str) -> None:
        slot = next(o["slot_index"] for o in source["outputs"] if o["name"] == output)
        kind = source["outputs"][slot]["type"]
        target_slot = next(i for i, x in enumerate(target["inputs"]) if x["name"] == input_name)
        link_id = len(self.links) + 1
        self.links.append([link_id, source["id"], slot, target["id"], target_slot, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][target_slot]["link"] = link_id

    def workflow(self, groups: list | None = None) -> dict:
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
            "groups": groups or [], "config": {}, "extra": {"ds": self.view()}, "version": 0.4,
        }  # fmt: skip

    def view(self, screen=(1480, 860), margin: float = 40) -> dict:
        """The saved canvas view: the whole graph if it fits readably, else its top-left (the note) at a readable zoom."""
        x0 = min(n["pos"][0] for n in self.nodes)
        y0 = min(n["pos"][1] for n in self.nodes) - 30  # the title bar
        x1 = max(n["pos"][0] + n["size"][0] for n in self.nodes)
        y1 = max(n["pos"][1] + n["size"][1] for n in self.nodes)
        scale = max(MIN_READABLE_SCALE, min(0.8, screen[0] / (x1 - x0), screen[1] / (y1 - y0)))
        return {"scale": round(scale, 3), "offset": [round(margin / scale - x0, 1), round(margin / scale - y0, 1)]}


def _names(definition: dict) -> list[str]:
    return list(definition.get("output_name") or definition["output"])


# ----------------------------------------------------------------------------------------------
def image_to_video_and_3d() -> dict:
    g = Graph()
    g.node("MarkdownNote", (20, -200), text=(
        "## WorldStereo: one image -> camera-guided video + 3D\n"
        "1. **Load Image**: pick your image.\n"
        "2. **Camera Trajectory**: a preset, or paste a trajectory JSON (e.g. from the Blender add-on).\n"
        "3. **Geometric Memory**: connect a depth node's output (e.g. Depth Anything) to `depth` for real geometry; "
        "without it a rough floor-and-backdrop prior is used.\n"
        "4. Frames go to the core **Create Video / Save Video**; **Reconstruct** writes a mesh (.glb) to the output folder; "
        "the core **Preview 3D** shows it."
    ))  # fmt: skip
    image = g.node("LoadImage", (20, 40), image=EXAMPLE_IMAGE)
    model = g.node("WorldStereoLoadModel", (720, 340))
    traj = g.node("WorldStereoCameraTrajectory", (360, 40), preset="orbit_left", frames=16, angle=15.0, focus_distance=3.0, width=384, height=384)
    plot = g.node("PreviewImage", (720, 580), title="Trajectory plot")
    memory = g.node("WorldStereoGeometricMemory", (720, 40))
    generate = g.node("WorldStereoGenerate", (1080, 40))
    video = g.node("CreateVideo", (1440, 40), fps=16.0)
    save = g.node("SaveVideo", (1740, 40), filename_prefix="WorldStereo/video")
    rec = g.node("WorldStereoReconstruct", (1440, 360), method="mesh", filename_prefix="WorldStereo/scene")
    view = g.node("Preview3D", (1800, 360))
    g.link(image, "IMAGE", memory, "image")
    g.link(traj, "trajectory", memory, "trajectory")
    g.link(traj, "plot", plot, "images")
    g.link(model, "model", generate, "model")
    g.link(image, "IMAGE", generate, "image")
    g.link(traj, "trajectory", generate, "trajectory")
    g.link(memory, "memory", generate, "memory")
    g.link(generate, "frames", video, "images")
    g.link(video, "VIDEO", save, "video")
    g.link(generate, "memory", rec, "memory")
    g.link(generate, "frames", rec, "frames")
    g.link(traj, "trajectory", rec, "trajectory")
    g.link(rec, "model_file", view, "model_file")
    return g.workflow()


def two_trajectories_shared_memory() -> dict:
    g = Graph()
    g.node("MarkdownNote", (20, -200), text=(
        "## Two trajectories, one memory\n"
        "The second **Generate** continues the memory the first one grew, so what the left orbit made stays where it is when "
        "the right orbit sees it. Both trajectories start at the image's camera. The point cloud is reconstructed from "
        "the memory after both."
    ))  # fmt: skip
    image = g.node("LoadImage", (20, 40), image=EXAMPLE_IMAGE)
    model = g.node("WorldStereoLoadModel", (720, 340))
    left = g.node("WorldStereoCameraTrajectory", (360, 40), title="Trajectory A", preset="orbit_left", frames=12, angle=20.0, focus_distance=3.0, width=384, height=384)
    right = g.node("WorldStereoCameraTrajectory", (360, 460), title="Trajectory B", preset="orbit_right", frames=12, angle=20.0, focus_distance=3.0, width=384, height=384)
    memory = g.node("WorldStereoGeometricMemory", (720, 40))
    gen_a = g.node("WorldStereoGenerate", (1080, 40), title="Generate A")
    gen_b = g.node("WorldStereoGenerate", (1080, 460), title="Generate B")
    vid_a = g.node("CreateVideo", (1440, 40), fps=12.0)
    vid_b = g.node("CreateVideo", (1440, 460), fps=12.0)
    save_a = g.node("SaveVideo", (1740, 40), filename_prefix="WorldStereo/orbit_left")
    save_b = g.node("SaveVideo", (1740, 460), filename_prefix="WorldStereo/orbit_right")
    rec = g.node("WorldStereoReconstruct", (1440, 820), method="point_cloud", filename_prefix="WorldStereo/shared")
    view = g.node("Preview3D", (1800, 820))
    g.link(image, "IMAGE", memory, "image")
    g.link(left, "trajectory", memory, "trajectory")
    for gen, traj, vid, save in ((gen_a, left, vid_a, save_a), (gen_b, right, vid_b, save_b)):
        g.link(model, "model", gen, "model")
        g.link(image, "IMAGE", gen, "image")
        g.link(traj, "trajectory", gen, "trajectory")
        g.link(gen, "frames", vid, "images")
        g.link(vid, "VIDEO", save, "video")
    g.link(memory, "memory", gen_a, "memory")
    g.link(gen_a, "memory", gen_b, "memory")
    g.link(gen_b, "memory", rec, "memory")
    g.link(gen_b, "frames", rec, "frames")
    g.link(right, "trajectory", rec, "trajectory")
    g.link(rec, "model_file", view, "model_file")
    return g.workflow()


def external_model_loop() -> dict:
    g = Graph()
    g.node("MarkdownNote", (20, -200), text=(
        "## Any video model fills the memory\n"
        "**Render Memory** gives what the memory already knows along the trajectory: `renders` (colours), `holes` "
        "(1 = unknown, to fill) and `depth`. Give them to your video model and its frames to **Update Memory**, which lifts "
        "them into the memory (optionally with a depth node's per-frame depth), then reconstruct.\n\n"
        "**The two nodes in the 'video model' group are a placeholder** (a blur pasted into the holes) so the workflow runs "
        "as it is. Replace them with your model, e.g. Wan VACE: `renders` -> control_video, `holes` -> control_masks, "
        "the decoded frames -> Update Memory's `frames` (same frame count and size as the trajectory)."
    ))  # fmt: skip
    image = g.node("LoadImage", (20, 40), image=EXAMPLE_IMAGE)
    traj = g.node("WorldStereoCameraTrajectory", (360, 40), preset="left", frames=12, distance=0.4, width=384, height=384)
    memory = g.node("WorldStereoGeometricMemory", (720, 40))
    render = g.node("WorldStereoRenderMemory", (1080, 40))
    blur = g.node("ImageBlur", (1080, 300), title="placeholder: blur", blur_radius=15, sigma=1.0)
    fill = g.node("ImageCompositeMasked", (1380, 300), title="placeholder: fill holes")
    update = g.node("WorldStereoUpdateMemory", (1700, 40))
    video = g.node("CreateVideo", (1700, 360), fps=12.0)
    save = g.node("SaveVideo", (2000, 360), filename_prefix="WorldStereo/external")
    rec = g.node("WorldStereoReconstruct", (2000, 40), method="point_cloud", filename_prefix="WorldStereo/external")
    view = g.node("Preview3D", (2360, 40))
    g.link(image, "IMAGE", memory, "image")
    g.link(traj, "trajectory", memory, "trajectory")
    g.link(memory, "memory", render, "memory")
    g.link(traj, "trajectory", render, "trajectory")
    g.link(render, "renders", blur, "image")
    g.link(render, "renders", fill, "destination")
    g.link(blur, "IMAGE", fill, "source")
    g.link(render, "holes", fill, "mask")
    g.link(memory, "memory", update, "memory")
    g.link(fill, "IMAGE", update, "frames")
    g.link(traj, "trajectory", update, "trajectory")
    g.link(fill, "IMAGE", video, "images")
    g.link(video, "VIDEO", save, "video")
    g.link(update, "memory", rec, "memory")
    g.link(fill, "IMAGE", rec, "frames")
    g.link(traj, "trajectory", rec, "trajectory")
    g.link(rec, "model_file", view, "model_file")
    return g.workflow([{"title": "video model (replace with yours)", "bounding": [1060, 220, 620, 280], "color": "#3f789e", "flags": {}}])


WORKFLOWS = {
    "worldstereo_image_to_video_and_3d": image_to_video_and_3d,
    "worldstereo_two_trajectories_shared_memory": two_trajectories_shared_memory,
    "worldstereo_external_video_model_loop": external_model_loop,
}


# ----------------------------------------------------------------------------------------------
def example_image(folder: Path) -> Path:
    """The procedural room from the trajectories' first camera, as the example input image."""
    from ws_engine.io import save_image
    from ws_engine.scenes import ProceduralRoom

    room = ProceduralRoom()
    rgb, _ = room.render(room.camera(512, 512, fov=60.0))
    return save_image(folder / EXAMPLE_IMAGE, rgb[0])


def thumbnail(name: str, workflow: dict, work: Path) -> Path:
    """Run the workflow and write a thumbnail: frames of its first video beside its plot or reconstruction."""
    import av
    import numpy as np
    from PIL import Image

    rt = comfy_pack.runtime()
    out_dir = work / name
    rt.set_directories(input=work / "input", output=out_dir)
    comfy_pack.run_prompt(comfy_pack.ui_to_api(workflow))
    videos = sorted(out_dir.rglob("*.mp4"))
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 4).round().astype(int)]
    tiles = [Image.fromarray(p).resize((256, 256)) for p in picks]
    sheet = Image.new("RGB", (2 * 256 + 4, 2 * 256 + 4), "white")  # square: the template browser's cards are square
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % 2) * 260, (i // 2) * 260))
    path = OUT / f"{name}.jpg"
    sheet.save(path, quality=85)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="write the workflows only, no thumbnails")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    comfy_pack.load_pack()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "input").mkdir()
        example_image(work / "input")
        for name, build in WORKFLOWS.items():
            workflow = build()
            (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
            print("wrote", OUT / f"{name}.json")
            if not args.no_run:
                print("wrote", thumbnail(name, workflow, work))


if __name__ == "__main__":
    main()
