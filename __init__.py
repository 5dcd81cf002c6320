"""The repository root is a ComfyUI custom-node folder: clone it into ComfyUI/custom_nodes/."""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # ws_engine lives beside this file
    sys.path.insert(0, _here)

from .comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
