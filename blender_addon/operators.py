"""Operators: connect, create an avatar from a photo, cancel, list/load avatars, preview a frame.

Nothing here blocks the UI: operators only submit to the connection thread; `poll_results`
(a bpy.app.timers callback, called directly by the tests in background mode where timers never
fire) applies what comes back to the scene.
"""
from __future__ import annotations

import numpy as np
import bpy

from . import rig
from .blender_camera import camera_dict
from .connection import Connection

PREVIEW_IMAGE = "Avatar Preview"
FIT_PREVIEW_IMAGE = "Avatar Fit Preview"
_state = {"connection": None, "job": None}


def connection() -> Connection | None:
    return _state["connection"]


def settings(context=None):
    return (context or bpy.context).scene.one_shot_avatar


def image_pixels(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file read by Blender -> (H, W, 3) uint8 RGB, and (H, W) uint8 alpha if it has one."""
    img = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
    try:
        w, h = img.size
        if w == 0 or h == 0:
            raise ValueError(f"{path}: not a readable image")
        flat = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(flat)
        rgba = (np.clip(flat.reshape(h, w, 4)[::-1], 0, 1) * 255).round().astype(np.uint8)  # Blender rows go up
        alpha = rgba[..., 3] if img.channels == 4 and rgba[..., 3].min() < 255 else None
        return np.ascontiguousarray(rgba[..., :3]), alpha
    finally:
        bpy.data.images.remove(img)


def put_image(name: str, rgba: np.ndarray):
    """(H, W, 3|4) uint8 -> a bpy image (created or resized), shown wherever it is used."""
    h, w = rgba.shape[:2]
    img = bpy.data.images.get(name)
    if img is None or tuple(img.size) != (w, h):
        if img is not None:
            bpy.data.images.remove(img)
        img = bpy.data.images.new(name, w, h, alpha=True)
    if rgba.shape[2] == 3:
        rgba = np.concatenate([rgba, np.full((h, w, 1), 255, np.uint8)], -1)
    img.pixels.foreach_set((rgba[::-1].astype(np.float32) / 255.0).ravel())
    img.update()
    return img


def current_view(context) -> dict:
    s = settings(context)
    if s.armature is None:
        raise ValueError("choose the SMPL armature in the panel")
    if context.scene.camera is None:
        raise ValueError("the scene has no active camera")
    depsgraph = context.evaluated_depsgraph_get()
    pose, transl = rig.read_pose(s.armature, depsgraph)
    return {"pose": pose, "transl": transl, "camera": camera_dict(context.scene, context.scene.camera, depsgraph)}


class AVATAR_OT_connect(bpy.types.Operator):
    bl_idname = "one_shot_avatar.connect"
    bl_label = "Connect"
    bl_description = "Connect to the avatar backend and list its avatars"

    def execute(self, context):
        s = settings(context)
        old = connection()
        if old is not None:
            old.close()
        conn = Connection(s.backend_address)
        _state["connection"] = conn
        conn.submit("list")
        s.status = "connecting"
        if not bpy.app.timers.is_registered(poll_results):
            bpy.app.timers.register(poll_results, first_interval=0.1, persistent=True)
        return {"FINISHED"}


class AVATAR_OT_create(bpy.types.Operator):
    bl_idname = "one_shot_avatar.create"
    bl_label = "Create avatar"
    bl_description = "Fit an avatar to the photo, posed like the armature and seen by the scene camera"

    def execute(self, context):
        s = settings(context)
        conn = connection()
        if conn is None:
            self.report({"ERROR"}, "not connected: press Connect first")
            return {"CANCELLED"}
        if not s.photo:
            self.report({"ERROR"}, "choose a photo of the person first")
            return {"CANCELLED"}
        try:
            photo, alpha = image_pixels(s.photo)
            mask = image_pixels(s.mask)[0][..., 0] if s.mask else alpha
            view = current_view(context)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        cam = view["camera"]
        if (cam["height"], cam["width"]) != photo.shape[:2]:
            self.report({"ERROR"}, f"set the render resolution to the photo's size, {photo.shape[1]} x "
                                   f"{photo.shape[0]} (now {cam['width']} x {cam['height']})")
            return {"CANCELLED"}
        conn.submit("fit", photo=photo, mask=mask, pose=view["pose"], transl=view["transl"], camera=cam,
                    prompt=s.prompt or None, preset=s.preset, name=bpy.path.display_name_from_filepath(s.photo))
        s.status, s.progress = "fit queued", 0.0
        return {"FINISHED"}


class AVATAR_OT_cancel(bpy.types.Operator):
    bl_idname = "one_shot_avatar.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if connection() is not None and _state["job"]:
            connection().cancel_fit(_state["job"])
        return {"FINISHED"}


class AVATAR_OT_load(bpy.types.Operator):
    bl_idname = "one_shot_avatar.load"
    bl_label = "Load avatar"
    bl_description = "Use the selected avatar: make its SMPL rig if needed and preview it"

    def execute(self, context):
        s = settings(context)
        if connection() is None or not s.avatar_id:
            self.report({"ERROR"}, "connect and choose an avatar first")
            return {"CANCELLED"}
        connection().submit("load", avatar=s.avatar_id)
        return {"FINISHED"}


class AVATAR_OT_preview(bpy.types.Operator):
    bl_idname = "one_shot_avatar.preview"
    bl_label = "Preview frame"
    bl_description = "Render the avatar for the current armature pose and camera"

    def execute(self, context):
        s = settings(context)
        if connection() is None or not s.avatar_id:
            self.report({"ERROR"}, "connect and load an avatar first")
            return {"CANCELLED"}
        try:
            view = current_view(context)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        connection().request_render(context.scene.frame_current, s.avatar_id, view)
        return {"FINISHED"}


def _scaled_camera(cam: dict, scale: float) -> dict:
    if scale == 1.0:
        return cam
    K = np.asarray(cam["K"], dtype=np.float64) * np.array([[scale], [scale], [1.0]])
    return {**cam, "K": K.tolist(), "width": max(16, round(cam["width"] * scale)),
            "height": max(16, round(cam["height"] * scale))}


class AVATAR_OT_render_animation(bpy.types.Operator):
    bl_idname = "one_shot_avatar.render_animation"
    bl_label = "Render avatar animation"
    bl_description = "Render every frame of the scene's range (armature and camera as keyed) to PNG files"

    preview: bpy.props.BoolProperty(name="Camera path preview", default=False,
                                    description="Quarter resolution: a fast look along the camera's path")

    def execute(self, context):
        s = settings(context)
        if connection() is None or not s.avatar_id:
            self.report({"ERROR"}, "connect and load an avatar first")
            return {"CANCELLED"}
        scene = context.scene
        frames = list(range(scene.frame_start, scene.frame_end + 1, max(1, scene.frame_step)))
        current = scene.frame_current
        views = []
        _state["busy"] = True  # stepping through the frames must not trigger live previews
        try:
            for f in frames:
                scene.frame_set(f)
                view = current_view(context)
                view["camera"] = _scaled_camera(view["camera"], 0.25 if self.preview else 1.0)
                views.append(view)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            scene.frame_set(current)
            _state["busy"] = False
        _state["stream_frames"] = frames
        _state["stream_dir"] = bpy.path.abspath(s.output_dir)
        connection().submit("stream", avatar=s.avatar_id, views=views)
        s.status, s.progress = f"rendering {len(frames)} frames", 0.0
        return {"FINISHED"}


class AVATAR_OT_cancel_render(bpy.types.Operator):
    bl_idname = "one_shot_avatar.cancel_render"
    bl_label = "Stop rendering"

    def execute(self, context):
        if connection() is not None:
            connection().cancel_stream()
        return {"FINISHED"}


def save_frame(rgba: np.ndarray, path: str) -> None:
    """Write an RGBA uint8 frame as PNG through Blender (no image library needed)."""
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = put_image("Avatar Frame Out", rgba)
    img.filepath_raw = path
    img.file_format = "PNG"
    img.save()


def show_in_camera(scene, img) -> None:
    """The preview as the active camera's background image (what the camera sees)."""
    cam = scene.camera
    if cam is None or cam.type != "CAMERA":
        return
    cam.data.show_background_images = True
    for bg in cam.data.background_images:
        if bg.image == img:
            return
    bg = cam.data.background_images.new()
    bg.image, bg.alpha, bg.display_depth = img, 1.0, "FRONT"


def on_scene_change(scene, depsgraph=None) -> None:
    """Handler for frame changes and edits: ask for a frame when the view really changed
    (applying a frame updates an image, which must not start another render)."""
    s = scene.one_shot_avatar
    conn = connection()
    if not s.live_preview or conn is None or not s.avatar_id or _state.get("busy"):
        return
    try:
        view = current_view(bpy.context)
    except (ValueError, KeyError):
        return
    key = hash((np.round(view["pose"], 5).tobytes(), np.round(view["transl"], 5).tobytes(),
                repr(view["camera"])))
    if key != _state.get("last_view"):
        _state["last_view"] = key
        conn.request_render(scene.frame_current, s.avatar_id, view)


def apply_result(kind: str, payload: dict, context=None) -> None:
    """What the connection thread brought back -> the scene (main thread only)."""
    s = settings(context)
    if kind == "welcome":
        caps = payload["capabilities"]
        s.status = f"connected: {caps['device']}" + ("" if caps["clip"] else " (no CLIP weights)")
    elif kind == "status" or kind == "error":
        s.status = payload["text"][:200]
    elif kind == "avatars":
        s.avatar_list = ";".join(f"{a['id']}:{a['stage']}:{a.get('name') or ''}" for a in payload["avatars"])
        done = [a["id"] for a in payload["avatars"] if a["stage"] == "done"]
        if done and not s.avatar_id:
            s.avatar_id = done[-1]
    elif kind == "accepted":
        _state["job"] = payload["job"]
        s.status = "fitting" + "".join(f" - {w}" for w in payload["warnings"])[:200]
    elif kind == "progress":
        total = max(1, payload.get("total") or 1)
        s.progress = payload["iteration"] / total if payload["stage"] == "B" else 0.0
        eta = payload.get("eta_s")
        s.status = f"fit stage {payload['stage']} {payload['iteration']}/{total}" + (f", ETA {eta:.0f} s" if eta else "")
        if payload.get("preview") is not None:
            put_image(FIT_PREVIEW_IMAGE, payload["preview"])
    elif kind in ("done", "cancelled"):
        _state["job"] = None
        s.status = "avatar ready" if kind == "done" else "fit cancelled"
        if kind == "done":
            s.avatar_id = payload["avatar"]
            s.progress = 1.0
        connection().submit("list")
    elif kind == "loaded":
        if s.armature is None:
            s.armature = rig.create_armature(bpy.context, payload["rest_joints"], name=f"avatar_{payload['avatar'][:6]}")
        rig.write_pose(s.armature, payload["pose"], payload["transl"])
        bpy.context.view_layer.update()  # evaluated bone positions follow the written pose
        s.status = f"loaded avatar {payload['avatar']}"
    elif kind == "frame":
        show_in_camera(bpy.context.scene, put_image(PREVIEW_IMAGE, payload["rgba"]))
    elif kind == "stream_frame":
        frame = _state["stream_frames"][payload["index"]]
        save_frame(payload["rgba"], f"{_state['stream_dir'].rstrip('/')}/frame_{frame:04d}.png")
        s.progress = (payload["index"] + 1) / payload["total"]
        s.status = f"rendered frame {payload['index'] + 1}/{payload['total']}"
    elif kind in ("stream_done", "stream_cancelled"):
        s.status = "animation rendered" if kind == "stream_done" else "animation render stopped"


def poll_results():
    """bpy.app.timers callback: apply results; keep running while connected."""
    conn = connection()
    if conn is None:
        return None
    for kind, payload in conn.drain():
        apply_result(kind, payload)
    return 0.1


classes = (AVATAR_OT_connect, AVATAR_OT_create, AVATAR_OT_cancel, AVATAR_OT_load, AVATAR_OT_preview,
           AVATAR_OT_render_animation, AVATAR_OT_cancel_render)


def _handler(scene, depsgraph=None):
    on_scene_change(scene, depsgraph)


@bpy.app.handlers.persistent
def _on_file_loaded(_filepath=None):
    """A reopened .blend keeps the settings, not the last session's status and progress."""
    for scene in bpy.data.scenes:
        s = scene.one_shot_avatar
        s.status, s.progress = ("connected" if connection() is not None else "not connected"), 0.0


_HOOKS = (("frame_change_post", _handler), ("depsgraph_update_post", _handler), ("load_post", _on_file_loaded))


def add_handlers() -> None:
    for name, fn in _HOOKS:
        hooks = getattr(bpy.app.handlers, name)
        if fn not in hooks:
            hooks.append(fn)


def remove_handlers() -> None:
    for name, fn in _HOOKS:
        hooks = getattr(bpy.app.handlers, name)
        while fn in hooks:
            hooks.remove(fn)


def shutdown() -> None:
    remove_handlers()
    conn = connection()
    if conn is not None:
        conn.close()
    _state["connection"] = None
    if bpy.app.timers.is_registered(poll_results):
        bpy.app.timers.unregister(poll_results)
