"""One-Shot Avatar: Blender side. Runs in Blender's own Python: bpy, numpy, pyzmq, msgpack
and its vendored copy of the project's shared/ package only, never torch.

The sidebar panel (View3D > Sidebar > Avatar) connects to a backend (address and keys in the
add-on's preferences), adds an SMPL rig and a camera matching the photo, creates avatars from a
photo posed like the rig, loads them, previews frames live in the camera's background as the
frame, pose or camera changes, and renders the animation (or a quick camera-path preview) to
PNG files. docs/addon.md walks through it.
"""
import bpy

from . import live, operators, preferences, results, viewport
from .runtime import runtime


def _avatar_items(self, context):
    """The server's avatars for the dropdown (the list object is kept alive: Blender does not
    copy the strings of dynamic enum items)."""
    items = [(a["id"], f"{a.get('name') or a['id'][:8]}  ({a['preset']}, {a['stage']})",
              f"avatar {a['id']}: preset {a['preset']}, stage {a['stage']}, iteration {a['iteration']}")
             for a in reversed(runtime.avatars)]
    if self.avatar_id and self.avatar_id not in {i[0] for i in items}:
        items.append((self.avatar_id, self.avatar_id[:12], "not on the connected backend's list"))
    runtime.enum_items = items or [("", "(none)", "connect to list the backend's avatars")]
    return runtime.enum_items


def _get_avatar_choice(self):
    ids = [i[0] for i in _avatar_items(self, bpy.context)]
    return ids.index(self.avatar_id) if self.avatar_id in ids else 0


def _set_avatar_choice(self, index):
    items = _avatar_items(self, bpy.context)
    if 0 <= index < len(items):
        self.avatar_id = items[index][0]


def _photo_changed(self, context):
    """Choosing a photo sets the render size and the photo camera (errors go to the status line)."""
    if not self.photo:
        return
    try:
        from . import scene_setup

        w, h = scene_setup.frame_photo_file(context, self.photo, self.armature)
        self.status = f"photo {w} x {h}: render size and camera set"
    except Exception as exc:  # noqa: BLE001 - an update callback must not raise into the UI
        self.status = f"could not use the photo: {exc}"[:200]


def _in_renders_changed(self, context):
    """The checkbox puts the avatar into (or takes it out of) the scene's compositing."""
    try:
        from . import compositing

        if self.in_renders and self.avatar_id:
            notes = compositing.install(context.scene)
            self.status = "the avatar is in F12 and Render Animation" + "".join(f"; {n}" for n in notes)
        elif not self.in_renders:
            compositing.uninstall(context.scene)
            self.status = "the avatar is no longer in Blender's renders"
    except Exception as exc:  # noqa: BLE001 - an update callback must not raise into the UI
        self.status = f"could not change the compositing: {exc}"[:200]


def _shadow_proxy_changed(self, context):
    try:
        notes = results.shadow_proxy_notes(self)
        self.status = ("; ".join(notes) if notes else
                       "shadow proxy removed" if not self.shadow_proxy else "load an avatar to add its shadow proxy")
    except Exception as exc:  # noqa: BLE001 - an update callback must not raise into the UI
        self.status = f"could not change the shadow proxy: {exc}"[:200]


class AvatarSettings(bpy.types.PropertyGroup):
    photo: bpy.props.StringProperty(name="Photo", subtype="FILE_PATH", update=_photo_changed,
                                    description="A photo of one person, whole body in view")
    mask: bpy.props.StringProperty(name="Mask", subtype="FILE_PATH",
                                   description="Optional person mask (white = person); else the photo's alpha")
    prompt: bpy.props.StringProperty(name="Prompt", description="Optional text, e.g. 'red hoodie, black jeans'")
    preset: bpy.props.EnumProperty(name="Quality", items=[
        ("quick", "Quick", "minutes on a CPU"), ("full", "Full", "GPU quality"), ("tiny", "Tiny", "seconds; tests")],
        default="quick")
    armature: bpy.props.PointerProperty(name="Armature", type=bpy.types.Object,
                                        poll=lambda self, obj: obj.type == "ARMATURE",
                                        description="The SMPL-compatible rig that poses the avatar")
    avatar_id: bpy.props.StringProperty(name="Avatar id", description="The avatar on the backend to use")
    avatar_choice: bpy.props.EnumProperty(name="Avatar", items=_avatar_items, get=_get_avatar_choice,
                                          set=_set_avatar_choice, description="The backend's avatars")
    # runtime state, reset when a .blend is opened (live._on_file_loaded)
    status: bpy.props.StringProperty(name="Status", default="not connected")
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    live_preview: bpy.props.BoolProperty(name="Camera background", default=False,
                                         description="Also show the avatar as the active camera's background "
                                                     "image, rendered whenever the frame, pose or camera changes")
    show_in_viewport: bpy.props.BoolProperty(
        name="Show in viewport", default=True,
        description="Draw the avatar in the 3D viewport from any perspective view, hidden behind the scene's "
                    "geometry (a quarter size while you navigate or scrub, full size at rest)")
    in_renders: bpy.props.BoolProperty(
        name="In F12 and Render Animation", default=True, update=_in_renders_changed,
        description="Composite the avatar by depth into Blender's own renders (a node in the scene's "
                    "compositor, fetched from the backend for every rendered frame)")
    shadow_proxy: bpy.props.BoolProperty(
        name="Shadow proxy", default=True, update=_shadow_proxy_changed,
        description="A hidden body mesh bound to the rig, so the avatar casts shadows in Cycles and EEVEE")
    output_dir: bpy.props.StringProperty(name="Output", subtype="DIR_PATH", default="//avatar_frames/",
                                         description="Where 'Render avatar animation' writes its PNG frames")


class VIEW3D_PT_one_shot_avatar(bpy.types.Panel):
    bl_label = "One-Shot Avatar"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Avatar"

    def draw(self, context):
        s = context.scene.one_shot_avatar
        layout = self.layout
        box = layout.box()
        row = box.row()
        row.label(text=preferences.get(context).backend_address, icon="URL")
        row.operator("one_shot_avatar.connect", text="Reconnect" if runtime.connection else "Connect")
        box.label(text=s.status)

        box = layout.box()
        box.label(text="Create", icon="OUTLINER_OB_ARMATURE")
        box.prop(s, "photo")
        box.prop(s, "mask")
        box.prop(s, "prompt")
        box.prop(s, "preset")
        row = box.row(align=True)
        row.prop(s, "armature", text="")
        row.operator("one_shot_avatar.add_rig", text="", icon="ADD")
        box.operator("one_shot_avatar.load_motion", icon="ANIM")
        box.operator("one_shot_avatar.frame_photo", icon="CAMERA_DATA")
        row = box.row()
        row.operator("one_shot_avatar.create")
        row.operator("one_shot_avatar.cancel")
        if runtime.job is not None or 0.0 < s.progress < 1.0:
            box.progress(factor=s.progress, type="BAR", text=f"{s.progress * 100:.0f} %")
        preview = bpy.data.images.get(results.FIT_PREVIEW_IMAGE)
        if preview is not None and preview.preview is not None:
            box.template_icon(icon_value=preview.preview.icon_id, scale=6.0)

        box = layout.box()
        box.label(text="Avatar", icon="USER")
        box.prop(s, "avatar_choice", text="")
        row = box.row()
        row.operator("one_shot_avatar.load")
        row.operator("one_shot_avatar.preview")
        row = box.row()
        row.operator("one_shot_avatar.bake_mesh", icon="MESH_DATA")
        row.operator("one_shot_avatar.import_mesh", icon="IMPORT")
        row = box.row()
        row.prop(s, "show_in_viewport")
        row.prop(s, "live_preview")

        box = layout.box()
        box.label(text="Render", icon="RENDER_ANIMATION")
        box.prop(s, "in_renders")
        box.prop(s, "shadow_proxy")
        box.label(text="Avatar layer only (PNG):")
        box.prop(s, "output_dir")
        row = box.row()
        row.operator("one_shot_avatar.render_animation")
        row.operator("one_shot_avatar.render_animation", text="Camera path preview").preview = True
        box.operator("one_shot_avatar.cancel_render")


_classes = (preferences.AvatarPreferences, AvatarSettings, VIEW3D_PT_one_shot_avatar) + operators.classes


def register():
    for cls in _classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.one_shot_avatar = bpy.props.PointerProperty(type=AvatarSettings)
    live.add_handlers()
    viewport.add_handler()


def unregister():
    # stop the connection thread and close its socket first (Blender must not hang on quit)
    live.remove_handlers()
    viewport.remove_handler()
    results.stop_timer()
    if runtime.connection is not None:
        runtime.connection.close()
    runtime.reset()
    del bpy.types.Scene.one_shot_avatar
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
