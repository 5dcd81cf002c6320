"""Saved ComfyUI workflows (UI format) -> the API format ``POST /prompt`` takes.

ComfyUI's server does not convert: its front end does. This module does the same for scripts,
tests and the Blender add-on, from node definitions shaped like ``GET /object_info``
(``{class_type: {"input": {"required": {...}, "optional": {...}}}}``) or from a pack's
``NODE_CLASS_MAPPINGS`` (:func:`definitions_from_mappings`). Pure Python (no torch, no ComfyUI).

Rules (those of the front end): ``widgets_values`` hold one value per widget input in definition
order (required, then optional), linked or not; an INT named ``seed``/``noise_seed`` (or with
``control_after_generate``) is followed by its control value, an upload combo by its upload
button's value. Muted nodes (mode 2) are left out, bypassed nodes (mode 4) pass their input of the
same type through, front-end-only nodes (notes, reroutes, primitives) are resolved away.
"""

from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
SEED_NAMES = ("seed", "noise_seed")
MUTED, BYPASSED = 2, 4

__all__ = ["ui_to_api", "widget_inputs", "definitions_from_mappings", "WorkflowError"]


class WorkflowError(ValueError):
    """A workflow that cannot be converted (unknown node type, broken link), with what to fix."""


def definitions_from_mappings(mappings: dict) -> dict:
    """``{class_type: {"input", "output", "output_name"}}`` (as /object_info gives them) of a NODE_CLASS_MAPPINGS."""
    return {
        name: {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))}
        for name, cls in mappings.items()
    }


def _is_widget(spec) -> bool:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def widget_inputs(definition: dict) -> list[tuple[str, int]]:
    """(name, number of widgets_values it takes) of every widget input, in widgets_values order."""
    out = []
    inputs = definition.get("input", {})
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            if not _is_widget(spec):
                continue
            kind = spec[0] if isinstance(spec, (list, tuple)) else spec
            options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            extra = 0
            if kind == "INT" and (name in SEED_NAMES or options.get("control_after_generate")):
                extra = 1
            if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
                extra = 1
            out.append((name, 1 + extra))
    return out


def ui_to_api(workflow: dict, definitions: dict) -> dict:
    """The API prompt ``{node_id: {"class_type", "inputs"}}`` of a UI-format workflow."""
    nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
    links = {int(link[0]): link for link in workflow.get("links", [])}
    prompt = {}
    for node_id, node in sorted(nodes.items()):
        kind = node.get("type")
        if kind in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        if kind not in definitions:
            raise WorkflowError(f"Node {node_id} is of type {kind!r}, which this ComfyUI does not have; install the pack that provides it.")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        pos = 0
        for name, width in widget_inputs(definitions[kind]):
            if pos < len(values) and name not in linked:
                inputs[name] = values[pos]
            pos += width
        for name, link_id in linked.items():
            source = _source(link_id, links, nodes)
            if source is not None:
                inputs[name] = source
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or kind}}
    return prompt


def _source(link_id: int, links: dict, nodes: dict):
    """``[from_id, slot]`` of a link, or a constant (a primitive's value), through reroutes and bypassed nodes."""
    seen = set()
    while True:
        if link_id in seen or link_id not in links:
            raise WorkflowError(f"Link {link_id} is broken (missing or circular); reconnect the input in ComfyUI and save again.")
        seen.add(link_id)
        _, from_id, from_slot, *_rest = links[link_id]
        link_type = links[link_id][5] if len(links[link_id]) > 5 else None
        source = nodes.get(int(from_id))
        if source is None:
            raise WorkflowError(f"Link {link_id} comes from node {from_id}, which is not in the workflow.")
        kind, mode = source.get("type"), source.get("mode", 0)
        if kind == "PrimitiveNode":
            return (source.get("widgets_values") or [None])[0]
        if kind == "Reroute" or mode == BYPASSED:
            ins = [i for i in source.get("inputs", []) if i.get("link") is not None]
            if kind != "Reroute":
                ins = [i for i in ins if i.get("type") == link_type] or []
            if not ins:
                return None  # nothing to pass through: the input stays unset
            link_id = int(ins[0]["link"])
            continue
        if mode == MUTED:
            return None
        return [str(from_id), int(from_slot)]
