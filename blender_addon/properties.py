"""Per-scene settings (``scene.worldstereo``) and the running job's state (``window_manager.worldstereo``)."""

import bpy


class WorldStereoSettings(bpy.types.PropertyGroup):
    trajectory_source: bpy.props.EnumProperty(
        name="Cameras",
        items=[
            ("ANIMATION", "Active Camera Animation", "The scene camera over the frame range"),
            ("SELECTED", "Selected Cameras", "The selected cameras, ordered by name"),
        ],
        default="ANIMATION",
    )
    frame_step: bpy.props.IntProperty(name="Every Nth Frame", default=1, min=1, max=1000)
    image_source: bpy.props.EnumProperty(
        name="Image",
        items=[
            ("RENDER", "Render First Camera", "Render the first camera (the current render engine)"),
            ("FILE", "Image File", ""),
            ("PANORAMA", "Render Panorama", "Render a 360 x 180 degree equirectangular panorama (Cycles) from the first camera's position, "
             "looking where it looks; the trajectory explores it"),
        ],
        default="RENDER",
    )
    panorama_height: bpy.props.IntProperty(
        name="Panorama Height", default=512, min=64, max=8192, description="Height of the rendered panorama; its width is twice this"
    )
    image_path: bpy.props.StringProperty(name="Image File", subtype="FILE_PATH", default="")
    use_depth_prior: bpy.props.BoolProperty(
        name="Depth from Scene", default=True, description="Start from the exact depth of the first camera (ray cast of the scene's geometry)"
    )
    size: bpy.props.IntProperty(name="Size", default=512, min=64, max=2048, step=16, description="Long side of the frames in pixels")
    steps: bpy.props.IntProperty(name="Steps", default=50, min=1, max=1000)
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0)
    point_cloud: bpy.props.BoolProperty(name="Point Cloud", default=True)
    mesh: bpy.props.BoolProperty(name="Mesh", default=True)
    video: bpy.props.EnumProperty(
        name="Video",
        items=[("BACKGROUND", "Camera Background", ""), ("SEQUENCE", "Sequencer Strip", ""), ("NONE", "Don't Import", "")],
        default="BACKGROUND",
    )
    output_dir: bpy.props.StringProperty(name="Output", subtype="DIR_PATH", default="//worldstereo/")


class WorldStereoJobState(bpy.types.PropertyGroup):
    running: bpy.props.BoolProperty(default=False)
    progress: bpy.props.FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: bpy.props.StringProperty(default="")


CLASSES = (WorldStereoSettings, WorldStereoJobState)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.worldstereo = bpy.props.PointerProperty(type=WorldStereoSettings)
    bpy.types.WindowManager.worldstereo = bpy.props.PointerProperty(type=WorldStereoJobState)


def unregister():
    del bpy.types.WindowManager.worldstereo
    del bpy.types.Scene.worldstereo
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
