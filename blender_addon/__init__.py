"""One-Shot Avatar: Blender side. Runs in Blender's own Python: bpy, numpy, pyzmq, msgpack
and the vendored shared/ package only, never torch.

The panel connects to a backend (docs/protocol.md), creates avatars from a photo posed like
an SMPL armature, loads them (making the rig), previews frames live in the camera's background
as the frame, pose or camera changes, and renders the animation (or a quick camera-path
preview) to PNG files.
"""
import bpy

from . import operators
from ._vendor import shared


class AvatarSettings(bpy.types.PropertyGroup):
    backend_address: bpy.props.StringProperty(
        name="Backend", default="tcp://127.0.0.1:5557",
        description="Address of the avatar backend (ZeroMQ); localhost unless you run it elsewhere")
    photo: bpy.props.StringProperty(name="Photo", subtype="FILE_PATH")
    mask: bpy.props.StringProperty(name="Mask", subtype="FILE_PATH", description="Optional person mask")
    prompt: bpy.props.StringProperty(name="Prompt", description="Optional text, e.g. 'red hoodie, black jeans'")
    preset: bpy.props.EnumProperty(name="Quality", items=[
        ("quick", "Quick", "minutes on a CPU"), ("full", "Full", "GPU quality"), ("tiny", "Tiny", "tests")],
        default="quick")
    armature: bpy.props.PointerProperty(name="Armature", type=bpy.types.Object,
                                        poll=lambda self, obj: obj.type == "ARMATURE",
                                        description="The SMPL rig that poses the avatar")
    avatar_id: bpy.props.StringProperty(name="Avatar", description="The avatar on the backend to use")
    # runtime state, reset when a .blend is opened (operators._on_file_loaded)
    avatar_list: bpy.props.StringProperty()
    status: bpy.props.StringProperty(name="Status", default="not connected")
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    live_preview: bpy.props.BoolProperty(name="Live preview", default=True,
                                         description="Render the avatar whenever the frame, pose or camera changes")
    output_dir: bpy.props.StringProperty(name="Output", subtype="DIR_PATH", default="//avatar_frames/",
                                         description="Where 'Render avatar animation' writes its PNG frames")


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
        col.prop(settings, "preset")
        col.prop(settings, "armature")
        col.operator("one_shot_avatar.connect")
        col.label(text=settings.status)
        row = col.row()
        row.operator("one_shot_avatar.create")
        row.operator("one_shot_avatar.cancel")
        col.prop(settings, "progress")
        col.prop(settings, "avatar_id")
        row = col.row()
        row.operator("one_shot_avatar.load")
        row.operator("one_shot_avatar.preview")
        col.prop(settings, "live_preview")
        col.prop(settings, "output_dir")
        row = col.row()
        row.operator("one_shot_avatar.render_animation")
        row.operator("one_shot_avatar.render_animation", text="Camera path preview").preview = True
        col.operator("one_shot_avatar.cancel_render")


_classes = (AvatarSettings, VIEW3D_PT_one_shot_avatar) + operators.classes


def register():
    for cls in _classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.one_shot_avatar = bpy.props.PointerProperty(type=AvatarSettings)
    operators.add_handlers()


def unregister():
    operators.shutdown()  # stop the connection thread and close its socket first
    del bpy.types.Scene.one_shot_avatar
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
