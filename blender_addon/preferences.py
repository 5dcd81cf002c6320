"""Add-on preferences: where the engine runs (an interpreter with the project installed, or a ComfyUI server)."""

import bpy

BACKENDS = [
    ("CLI", "Local engine", "Run the worldstereo command with the Python interpreter below"),
    ("COMFYUI", "ComfyUI server", "Submit the shipped example workflow to a ComfyUI server"),
]


class WorldStereoPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend: bpy.props.EnumProperty(name="Backend", items=BACKENDS, default="CLI")
    python_path: bpy.props.StringProperty(
        name="Engine Python",
        description="Python interpreter of a virtual environment where this project is installed (e.g. .venv/bin/python)",
        subtype="FILE_PATH",
        default="",
    )
    device: bpy.props.EnumProperty(
        name="Device", items=[("auto", "Auto", "CUDA when available"), ("cpu", "CPU", ""), ("cuda", "CUDA", "")], default="auto"
    )
    comfyui_url: bpy.props.StringProperty(name="ComfyUI URL", default="http://127.0.0.1:8188")
    timeout: bpy.props.IntProperty(name="Server Timeout (s)", default=10, min=1, max=600)

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend", expand=True)
        if self.backend == "CLI":
            layout.prop(self, "python_path")
            layout.prop(self, "device")
            layout.operator("worldstereo.check_engine", icon="CHECKMARK")
        else:
            layout.prop(self, "comfyui_url")
            layout.prop(self, "timeout")
            if not bpy.app.online_access:
                layout.label(text="Online access is off: only a server on this machine can be used.", icon="INFO")


def get(context) -> WorldStereoPreferences:
    return context.preferences.addons[__package__].preferences


def register():
    bpy.utils.register_class(WorldStereoPreferences)


def unregister():
    bpy.utils.unregister_class(WorldStereoPreferences)
