"""What the connection thread brings back, applied to the scene on Blender's main thread.

`poll_results` is a bpy.app.timers callback (tests call it directly: timers never fire in
background mode). It never dies: a result that cannot be applied is reported in the panel's
status line and the console, and the timer keeps running.
"""
from __future__ import annotations

import os
import traceback

import bpy
import numpy as np

from . import live, rig, scene_setup, viewport
from .runtime import runtime

PREVIEW_IMAGE = "Avatar Preview"
FIT_PREVIEW_IMAGE = "Avatar Fit Preview"
POLL_S = 0.1


def settings():
    return bpy.context.scene.one_shot_avatar


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


def save_frame(rgba: np.ndarray, path: str) -> None:
    """Write an RGBA uint8 frame as PNG through Blender, atomically (a half-written file never
    has the final name)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = put_image("Avatar Frame Out", rgba)
    tmp = path + ".part.png"
    img.filepath_raw = tmp
    img.file_format = "PNG"
    img.save()
    os.replace(tmp, path)


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


def _pose_rig(s, avatar: str, body: dict) -> list[str]:
    """The rig (made if none is chosen) posed like the photo's body, the camera like the photo's;
    notes for the status line."""
    context = bpy.context
    notes = []
    body = scene_setup.upright(body)   # a fit made outside Blender: stood upright, on the ground
    if s.armature is None:
        s.armature = rig.create_armature(context, body["rest_joints"], name=f"avatar_{avatar[:6]}")
    if rig.has_keyed_pose(s.armature):
        notes.append(f"'{s.armature.name}' is animated: its keyed pose was kept")
    else:
        rig.write_pose(s.armature, body["pose"], body["transl"], rest_joints=body["rest_joints"])
    runtime.loaded = (avatar, body["rest_joints"])
    if scene_setup.use_fit_camera(context, body["camera"]):
        notes.append("camera set to the photo's")
    context.view_layer.update()   # evaluated bone positions follow the written pose
    return notes


def shadow_proxy_notes(s) -> list[str]:
    """Make (or remove) the rig's shadow proxy as the checkbox says; notes for the status line."""
    from . import proxy

    if s.armature is None:
        return []
    if not s.shadow_proxy or runtime.proxy_mesh is None or runtime.loaded is None:
        proxy.remove_proxy(s.armature)
        return []
    why = proxy.unsupported_reason(s.armature, runtime.loaded[1])
    if why is not None:
        proxy.remove_proxy(s.armature)
        return [why]
    proxy.make_proxy(bpy.context, s.armature, runtime.proxy_mesh, runtime.loaded[1])
    return ["shadow proxy added"]


def _loaded(s, payload: dict) -> None:
    kept = bool(payload.get("keep_pose")) and s.armature is not None   # a fit just finished: the rig stays
    if kept:
        runtime.loaded = (payload["avatar"], payload["rest_joints"])
        notes = []
    else:
        notes = _pose_rig(s, payload["avatar"], payload)
    runtime.proxy_mesh = payload.get("proxy")
    viewport.scheduler.forget()   # frames of another avatar (or an older fit) are not this one's
    notes += shadow_proxy_notes(s)
    if s.in_renders:   # F12 and Render Animation now include the avatar
        from . import compositing

        notes += compositing.install(bpy.context.scene)
    s.status = ("avatar ready" if kept else f"loaded avatar {payload['avatar']}") + "".join(f"; {n}" for n in notes)


def import_note(s, obj, armature, note: str) -> str:
    """The status after importing the mesh `obj`. Bound to the rig (`note` empty), it stands in
    for the neural avatar: the add-on stops drawing and compositing that one and removes its
    shadow proxy (the mesh casts its own shadow)."""
    if note:
        return note
    switched = [name for name in ("show_in_viewport", "in_renders", "shadow_proxy") if getattr(s, name)]
    for name in switched:
        setattr(s, name, False)   # (their update callbacks take the node and the proxy out)
    return (f"imported '{obj.name}', bound to '{armature.name}'"
            + ("; it stands in for the neural avatar (now hidden in the viewport, F12 and shadows)"
               if switched else ""))


def _exported(s, payload: dict) -> None:
    """The backend's bake is on disk: import it, bound to the rig when it is this avatar's."""
    from . import mesh_import

    runtime.exporting = None
    rest = runtime.rest_joints(payload["avatar"])
    armature = s.armature if rest is not None else None   # a rig posed for another avatar is not this mesh's
    obj, note = mesh_import.import_mesh(bpy.context, payload["path"], armature, rest)
    s.status = (f"baked {payload['triangles']} triangles into {os.path.basename(payload['path'])}; "
                + import_note(s, obj, armature, note))[:200]


def apply_result(kind: str, payload: dict) -> None:
    s = settings()
    if kind == "welcome":
        caps = payload["capabilities"]
        s.status = f"connected: {caps['device']}" + ("" if caps["clip"] else " (no CLIP weights)")
        runtime.connection.submit("list")   # (again, after a reconnect: the backend may have restarted)
    elif kind in ("status", "error"):
        s.status = payload["text"][:200]
    elif kind == "lost":
        interrupted = [w for w, on in (("the fit", runtime.job), ("the animation render", runtime.streaming),
                                       ("the mesh bake", runtime.exporting)) if on]
        runtime.job, runtime.streaming, runtime.exporting = None, False, None
        s.status = (payload["text"] + "".join(f"; {w} was interrupted" for w in interrupted))[:200]
    elif kind == "fit_failed":
        runtime.job = None
        s.status = payload["text"][:200]
    elif kind == "export_failed":
        runtime.exporting = None
        s.status = payload["text"][:200]
    elif kind == "exported":
        _exported(s, payload)
    elif kind == "avatars":
        runtime.avatars = list(payload["avatars"])
        done = [a["id"] for a in runtime.avatars if a["stage"] == "done"]
        if done and not s.avatar_id:
            s.avatar_id = done[-1]
    elif kind == "accepted":
        runtime.job = payload["job"]
        s.status = "fitting" + "".join(f" - {w}" for w in payload["warnings"])[:200]
    elif kind == "progress":
        total = max(1, payload.get("total") or 1)
        s.progress = payload["iteration"] / total if payload["stage"] == "B" else 0.0
        eta = payload.get("eta_s")
        s.status = f"fit stage {payload['stage']} {payload['iteration']}/{total}" + (f", ETA {eta:.0f} s" if eta else "")
        if payload.get("body") is not None and s.armature is None:   # photo only: the rig appears now
            _pose_rig(s, payload["job"], payload["body"])
        if payload.get("preview") is not None:
            put_image(FIT_PREVIEW_IMAGE, payload["preview"]).preview_ensure()   # the panel shows its icon
    elif kind in ("done", "cancelled"):
        runtime.job = None
        s.status = "avatar ready" if kind == "done" else "fit cancelled"
        if kind == "done":
            s.avatar_id = payload["avatar"]
            s.progress = 1.0
            # load it: the rig (made and posed now if none exists; a rig that exists keeps its
            # pose), its rest skeleton, the shadow proxy and the F12 compositing
            runtime.connection.submit("load", avatar=payload["avatar"], keep_pose=s.armature is not None)
        runtime.connection.submit("list")
    elif kind == "loaded":
        _loaded(s, payload)
    elif kind == "frame":
        if payload.get("slot", "camera") == "camera":
            show_in_camera(bpy.context.scene, put_image(PREVIEW_IMAGE, payload["rgba"]))
        else:
            viewport.on_frame(payload)
    elif kind == "stream_frame":
        frame = runtime.stream_frames[payload["index"]]
        save_frame(payload["rgba"], os.path.join(runtime.stream_dir, f"frame_{frame:04d}.png"))
        s.progress = (payload["index"] + 1) / payload["total"]
        s.status = f"rendered frame {payload['index'] + 1}/{payload['total']}"
    elif kind in ("stream_done", "stream_cancelled"):
        runtime.streaming = False
        s.status = "animation rendered" if kind == "stream_done" else "animation render stopped"


def poll_results():
    """Timer: apply what arrived, refine an idle live preview; keep running while connected."""
    conn = runtime.connection
    if conn is None:
        return None
    for kind, payload in conn.drain():
        try:
            apply_result(kind, payload)
        except Exception as exc:  # noqa: BLE001 - one bad result must not stop the timer
            runtime.errors += 1
            traceback.print_exc()
            try:
                settings().status = f"could not apply '{kind}': {type(exc).__name__}: {exc}"[:200]
            except Exception:  # noqa: BLE001 - no scene (e.g. while a file loads): the console has it
                pass
    for tick in (live.tick, viewport.tick):
        try:
            tick()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    return POLL_S


def start_timer() -> None:
    if not bpy.app.timers.is_registered(poll_results):
        bpy.app.timers.register(poll_results, first_interval=POLL_S, persistent=True)


def stop_timer() -> None:
    if bpy.app.timers.is_registered(poll_results):
        bpy.app.timers.unregister(poll_results)
