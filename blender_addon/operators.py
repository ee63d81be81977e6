"""Operators: connect, add a rig, create an avatar from a photo, cancel, load, preview, render,
import the avatar's exported mesh, key a motion file onto the rig.

Nothing here blocks the UI: operators only submit to the connection thread; the result timer
(results.poll_results) applies what comes back. User errors are one report line, never a
traceback; each operator's poll() greys it out when it cannot run.
"""
from __future__ import annotations

import bpy
import numpy as np

from . import mesh_import, motion, preferences, rig, scene_setup
from .blender_camera import camera_dict, render_size
from .connection import Connection, check_keys, is_local_address
from .results import import_note, start_timer
from .runtime import runtime
from .shared.camera import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, scaled_camera
from .shared.protocol import EXPORT_PRESETS


def settings(context=None):
    return (context or bpy.context).scene.one_shot_avatar


def connected() -> bool:
    return runtime.connection is not None


def image_pixels(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file read by Blender -> (H, W, 3) uint8 RGB, and (H, W) uint8 alpha if it has one."""
    img = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
    try:
        w, h = img.size
        if w == 0 or h == 0:
            raise ValueError(f"{bpy.path.basename(path)} is not an image Blender can read")
        flat = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(flat)
        rgba = (np.clip(flat.reshape(h, w, 4)[::-1], 0, 1) * 255).round().astype(np.uint8)  # Blender rows go up
        alpha = rgba[..., 3] if img.channels == 4 and rgba[..., 3].min() < 255 else None
        return np.ascontiguousarray(rgba[..., :3]), alpha
    finally:
        bpy.data.images.remove(img)


def current_view(context, scale: float = 1.0, avatar_id: str | None = None) -> dict:
    """The armature's pose and the scene camera, as the backend takes them (ValueError with a
    user-readable line when something is missing). With `avatar_id` loaded, the rig's pose is
    mapped onto that avatar's own rest skeleton."""
    return scene_view(context.scene, context.evaluated_depsgraph_get(), scale, avatar_id)


def scene_view(scene, depsgraph, scale: float = 1.0, avatar_id: str | None = None) -> dict:
    """current_view for a given depsgraph (a render's own, while Blender renders a frame)."""
    s = scene.one_shot_avatar
    if s.armature is None:
        raise ValueError("choose the SMPL armature in the panel (or add one with 'Add SMPL rig')")
    if scene.camera is None:
        raise ValueError("the scene has no active camera")
    try:
        pose, transl = rig.read_pose(s.armature, depsgraph, rest_joints=runtime.rest_joints(avatar_id))
    except KeyError as exc:
        raise ValueError(str(exc).strip("'\"")) from None
    cam = camera_dict(scene, scene.camera, depsgraph)
    size = (cam["width"], cam["height"])
    cam = scaled_camera(cam, scale)
    if not MIN_IMAGE_SIDE <= min(cam["width"], cam["height"]) <= max(cam["width"], cam["height"]) <= MAX_IMAGE_SIDE:
        raise ValueError(f"the render size {size[0]} x {size[1]} (with its %) is outside "
                         f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels a side")
    return {"pose": pose, "transl": transl, "camera": cam}


class _NeedsAvatar:
    @classmethod
    def poll(cls, context):
        s = settings(context)
        return connected() and bool(s.avatar_id) and s.armature is not None and not runtime.streaming


class AVATAR_OT_connect(bpy.types.Operator):
    bl_idname = "one_shot_avatar.connect"
    bl_label = "Connect"
    bl_description = "Connect to the avatar backend set in the add-on's preferences and list its avatars"

    def execute(self, context):
        p = preferences.get(context)
        address = p.backend_address.strip()
        try:
            local = is_local_address(address)
            server_key, client_key = check_keys(p.server_key, p.client_key)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not local and not bpy.app.online_access:
            self.report({"ERROR"}, "Blender's online access is off (Preferences > System > Network): "
                                   f"allow it to reach the backend at {address}")
            return {"CANCELLED"}
        if not local and server_key is None:
            self.report({"ERROR"}, "a backend on another computer needs its server key (add-on preferences)")
            return {"CANCELLED"}
        if runtime.connection is not None:
            runtime.connection.close()
        runtime.connection = Connection(address, timeout=p.timeout_s, server_key=server_key, client_key=client_key)
        runtime.connection.submit("list")
        settings(context).status = f"connecting to {address}"
        start_timer()
        return {"FINISHED"}


class AVATAR_OT_add_rig(bpy.types.Operator):
    bl_idname = "one_shot_avatar.add_rig"
    bl_label = "Add SMPL rig"
    bl_description = "Add an SMPL rig (the built-in body's skeleton, T-pose) at the 3D cursor and use it"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def execute(self, context):
        obj = scene_setup.add_rig(context)
        settings(context).armature = obj
        self.report({"INFO"}, f"added rig '{obj.name}': pose it like the person in the photo")
        return {"FINISHED"}


class AVATAR_OT_frame_photo(bpy.types.Operator):
    bl_idname = "one_shot_avatar.frame_photo"
    bl_label = "Camera for photo"
    bl_description = ("Set the render size to the photo's and aim a camera at the rig as the photo's camera "
                      "would be (default lens until a fit knows better)")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(settings(context).photo)

    def execute(self, context):
        s = settings(context)
        try:
            scene_setup.frame_photo_file(context, s.photo, s.armature)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class AVATAR_OT_create(bpy.types.Operator):
    bl_idname = "one_shot_avatar.create"
    bl_label = "Create avatar"
    bl_description = ("Fit an avatar to the photo, seen by the scene camera. With no armature chosen the "
                      "backend estimates the pose from the photo and Load makes the rig; with one, its pose "
                      "is the starting point")

    @classmethod
    def poll(cls, context):
        return connected() and runtime.job is None

    def execute(self, context):
        s = settings(context)
        if not s.photo:
            self.report({"ERROR"}, "choose a photo of the person first")
            return {"CANCELLED"}
        try:
            photo, alpha = image_pixels(s.photo)
            mask = image_pixels(s.mask)[0][..., 0] if s.mask else alpha
            if s.armature is None:
                # photo only: the camera the photo would have had, looking at the 3D cursor; the
                # backend estimates the body in it (so it stands where the cursor is, upright)
                if not _camera_fits_photo(context, photo.shape[:2]):
                    scene_setup.frame_photo(context, photo.shape[1], photo.shape[0], None)
                view = {"pose": None, "transl": None,
                        "camera": camera_dict(context.scene, context.scene.camera, context.evaluated_depsgraph_get())}
            else:
                view = current_view(context)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        cam = view["camera"]
        if (cam["height"], cam["width"]) != photo.shape[:2]:
            self.report({"ERROR"}, f"the render size is {cam['width']} x {cam['height']} but the photo is "
                                   f"{photo.shape[1]} x {photo.shape[0]}: press 'Camera for photo'")
            return {"CANCELLED"}
        runtime.job = "queued"
        runtime.connection.submit("fit", photo=photo, mask=mask, pose=view["pose"], transl=view["transl"],
                                  camera=cam, prompt=s.prompt or None, preset=s.preset,
                                  name=bpy.path.display_name_from_filepath(s.photo))
        s.status, s.progress = "fit queued", 0.0
        return {"FINISHED"}


def _camera_fits_photo(context, hw) -> bool:
    """The scene has a perspective camera and renders at the photo's size."""
    cam = context.scene.camera
    if cam is None or cam.type != "CAMERA" or cam.data.type != "PERSP":
        return False
    return render_size(context.scene)[::-1] == tuple(hw)


class AVATAR_OT_cancel(bpy.types.Operator):
    bl_idname = "one_shot_avatar.cancel"
    bl_label = "Cancel fit"
    bl_description = "Stop the running fit on the backend"

    @classmethod
    def poll(cls, context):
        return connected() and runtime.job not in (None, "queued")

    def execute(self, context):
        runtime.connection.cancel_fit(runtime.job)
        return {"FINISHED"}


class AVATAR_OT_load(bpy.types.Operator):
    bl_idname = "one_shot_avatar.load"
    bl_label = "Load avatar"
    bl_description = ("Use the chosen avatar: pose the rig (a new one if none is chosen) and the photo camera "
                      "as in its photo; an animated rig keeps its animation")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return connected() and bool(settings(context).avatar_id)

    def execute(self, context):
        runtime.connection.submit("load", avatar=settings(context).avatar_id)
        return {"FINISHED"}


class AVATAR_OT_preview(_NeedsAvatar, bpy.types.Operator):
    bl_idname = "one_shot_avatar.preview"
    bl_label = "Preview frame"
    bl_description = "Render the avatar for the current armature pose and camera, at full size"

    def execute(self, context):
        try:
            view = current_view(context, avatar_id=settings(context).avatar_id)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        runtime.connection.request_render(context.scene.frame_current, settings(context).avatar_id, view)
        return {"FINISHED"}


class AVATAR_OT_render_animation(_NeedsAvatar, bpy.types.Operator):
    bl_idname = "one_shot_avatar.render_animation"
    bl_label = "Render avatar animation"
    bl_description = "Render every frame of the scene's range (armature and camera as keyed) to PNG files"

    preview: bpy.props.BoolProperty(name="Camera path preview", default=False,
                                    description="Quarter resolution: a fast look along the camera's path")

    def execute(self, context):
        s = settings(context)
        scene = context.scene
        frames = list(range(scene.frame_start, scene.frame_end + 1, max(1, scene.frame_step)))
        current = scene.frame_current
        views = []
        runtime.stepping_frames = True   # walking the timeline must not trigger live previews
        try:
            for f in frames:
                scene.frame_set(f)
                views.append(current_view(context, 0.25 if self.preview else 1.0, s.avatar_id))
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            scene.frame_set(current)
            runtime.stepping_frames = False
        runtime.stream_frames, runtime.stream_dir, runtime.streaming = frames, bpy.path.abspath(s.output_dir), True
        runtime.connection.submit("stream", avatar=s.avatar_id, views=views)
        s.status, s.progress = f"rendering {len(frames)} frames", 0.0
        return {"FINISHED"}


class AVATAR_OT_import_mesh(bpy.types.Operator):
    bl_idname = "one_shot_avatar.import_mesh"
    bl_label = "Import as mesh"
    bl_description = ("Import an avatar baked by 'python -m backend export' (.glb) as a textured mesh: bound to "
                      "the chosen rig when it is our rig of the same body, else with its own SMPL skeleton")
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(name="File", subtype="FILE_PATH", description="The avatar's .glb file")
    filter_glob: bpy.props.StringProperty(default="*.glb", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        s = settings(context)
        try:
            obj, note = mesh_import.import_mesh(context, self.filepath, s.armature)
        except Exception as exc:  # noqa: BLE001 - a failed import is one report line, never a traceback
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            s.status = f"could not import the mesh: {message}"[:200]
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        bound = not note
        s.status = import_note(s, obj, s.armature, note)[:200]
        self.report({"WARNING"} if not bound and s.armature is not None else {"INFO"}, s.status)
        return {"FINISHED"}


class AVATAR_OT_load_motion(bpy.types.Operator):
    bl_idname = "one_shot_avatar.load_motion"
    bl_label = "Load SMPL motion"
    bl_description = ("Key a motion file onto the chosen rig from the start frame, one key per scene frame: "
                      ".npz with SMPL 'poses' (N, 72) and optional 'transl' (N, 3), or an AMASS file "
                      "(body joints, 'trans', resampled to the scene's frame rate)")
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(name="File", subtype="FILE_PATH", description="The motion's .npz file")
    filter_glob: bpy.props.StringProperty(default="*.npz", options={"HIDDEN"})
    start_frame: bpy.props.IntProperty(name="Start frame", default=1, min=-motion.MAX_BLENDER_FRAME,
                                       max=motion.MAX_BLENDER_FRAME, description="The frame of the motion's first pose")

    @classmethod
    def poll(cls, context):
        return settings(context).armature is not None and context.mode == "OBJECT"

    def invoke(self, context, event):
        self.start_frame = context.scene.frame_current
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        s = settings(context)
        path = bpy.path.abspath(self.filepath)
        name = bpy.path.basename(path) or path
        try:
            m = motion.read_motion(path)
            first, last, note = motion.apply_motion(context, s.armature, m, self.start_frame,
                                                    rest_joints=runtime.rest_joints(s.avatar_id))
        except Exception as exc:  # noqa: BLE001 - a failed load is one report line, never a traceback
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            s.status = f"could not load the motion: {message}"[:200]
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        s.status = (f"keyed {last - first + 1} frames ({first}–{last}) of {name} on '{s.armature.name}'"
                    + (f"; {note}" if note else ""))[:200]
        self.report({"INFO"}, s.status)
        return {"FINISHED"}


class AVATAR_OT_bake_mesh(bpy.types.Operator):
    bl_idname = "one_shot_avatar.bake_mesh"
    bl_label = "Bake mesh"
    bl_description = ("Have the backend bake the chosen avatar into a rigged, textured mesh (a minute or so on "
                      "a CPU) and import it: bound to the rig when the avatar is loaded, so it plays without "
                      "the backend. The .glb is kept beside the .blend file (avatars/) or in the temp folder")
    bl_options = {"REGISTER"}

    preset: bpy.props.EnumProperty(
        name="Preset", items=[(p, p.capitalize(), "") for p in EXPORT_PRESETS], default=EXPORT_PRESETS[0],
        description="Default: up to 100k triangles and a 2048² texture; Tiny: 8k triangles, 256² (a quick look)")

    @classmethod
    def poll(cls, context):
        s = settings(context)
        return (connected() and bool(s.avatar_id) and runtime.exporting is None
                and any(a["id"] == s.avatar_id and a["stage"] == "done" for a in runtime.avatars))

    def execute(self, context):
        s = settings(context)
        path = mesh_import.bake_path(s.avatar_id)
        runtime.exporting = s.avatar_id
        runtime.connection.submit("export", avatar=s.avatar_id, path=path, preset=self.preset)
        s.status = f"baking avatar {s.avatar_id} into a mesh on the backend (about a minute on a CPU)"
        return {"FINISHED"}


class AVATAR_OT_cancel_render(bpy.types.Operator):
    bl_idname = "one_shot_avatar.cancel_render"
    bl_label = "Stop rendering"
    bl_description = "Stop the avatar animation render (also on the backend)"

    @classmethod
    def poll(cls, context):
        return connected() and runtime.streaming

    def execute(self, context):
        runtime.connection.cancel_stream()
        return {"FINISHED"}


classes = (AVATAR_OT_connect, AVATAR_OT_add_rig, AVATAR_OT_frame_photo, AVATAR_OT_create, AVATAR_OT_cancel,
           AVATAR_OT_load, AVATAR_OT_preview, AVATAR_OT_render_animation, AVATAR_OT_cancel_render,
           AVATAR_OT_import_mesh, AVATAR_OT_bake_mesh, AVATAR_OT_load_motion)
