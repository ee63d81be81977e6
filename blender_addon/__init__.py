"""One-Shot Avatar: Blender side. Runs in Blender's own Python: bpy, numpy, pyzmq, msgpack
and the vendored shared/ package only, never torch.

This is the add-on's skeleton (the backend connection, rig and live preview come with the
add-on issue): it registers the sidebar panel and its settings.
"""
import bpy

from ._vendor import shared


class AvatarSettings(bpy.types.PropertyGroup):
    backend_address: bpy.props.StringProperty(
        name="Backend", default="tcp://127.0.0.1:5557",
        description="Address of the avatar backend (ZeroMQ); localhost unless you run it elsewhere")
    photo: bpy.props.StringProperty(name="Photo", subtype="FILE_PATH")
    mask: bpy.props.StringProperty(name="Mask", subtype="FILE_PATH", description="Optional person mask")
    prompt: bpy.props.StringProperty(name="Prompt", description="Optional text, e.g. 'red hoodie, black jeans'")


class VIEW3D_PT_one_shot_avatar(bpy.types.Panel):
    bl_label = "One-Shot Avatar"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Avatar"

    def draw(self, context):
        settings = context.scene.one_shot_avatar
        col = self.layout.column()
        col.prop(settings, "backend_address")
        col.prop(settings, "photo")
        col.prop(settings, "mask")
        col.prop(settings, "prompt")
        col.label(text=f"SMPL skeleton: {shared.smpl.NUM_JOINTS} joints")


_classes = (AvatarSettings, VIEW3D_PT_one_shot_avatar)


def register():
    for cls in _classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.one_shot_avatar = bpy.props.PointerProperty(type=AvatarSettings)


def unregister():
    del bpy.types.Scene.one_shot_avatar
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
