"""The sidebar panel (3D Viewport > Sidebar > WorldStereo)."""

import bpy

from . import generate


class VIEW3D_PT_worldstereo(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "WorldStereo"
    bl_label = "WorldStereo"

    def draw(self, context):
        layout = self.layout
        settings, state = context.scene.worldstereo, context.window_manager.worldstereo
        col = layout.column(align=True)
        col.prop(settings, "trajectory_source", text="")
        if settings.trajectory_source == "ANIMATION":
            col.prop(settings, "frame_step")
        col.label(text=f"{generate.frame_count(context)} frames", icon="CAMERA_DATA")
        col = layout.column(align=True)
        col.prop(settings, "image_source", text="")
        if settings.image_source == "FILE":
            col.prop(settings, "image_path", text="")
        elif settings.image_source == "PANORAMA":
            col.prop(settings, "panorama_height")
        layout.prop(settings, "use_depth_prior")
        col = layout.column(align=True)
        col.prop(settings, "size")
        col.prop(settings, "steps")
        col.prop(settings, "seed")
        row = layout.row(align=True)
        row.prop(settings, "point_cloud", toggle=True)
        row.prop(settings, "mesh", toggle=True)
        layout.prop(settings, "video")
        layout.prop(settings, "output_dir", text="")
        if state.running:
            layout.progress(factor=state.progress, text=state.status or "running")
            layout.operator("worldstereo.cancel", icon="CANCEL")
        else:
            layout.operator("worldstereo.generate", icon="PLAY")
            if state.status:
                layout.label(text=state.status)
        row = layout.row(align=True)
        row.operator("worldstereo.export_trajectory", text="Export", icon="EXPORT")
        row.operator("worldstereo.import_trajectory", text="Import", icon="IMPORT")
        layout.operator("worldstereo.import_result", icon="IMPORT")


def register():
    bpy.utils.register_class(VIEW3D_PT_worldstereo)


def unregister():
    bpy.utils.unregister_class(VIEW3D_PT_worldstereo)
