"""Live preview: app handlers that ask for a frame when the view changes.

While the artist scrubs or poses, frames are asked for at the preferences' scrubbing size (a
quarter by default) so a CPU or remote backend keeps up; once nothing has changed for IDLE_S
seconds the same view is asked for at full size. Blender's own renders (F12, Render Animation)
ask for their frames through compositing.fetch_frame; operators that walk the timeline ask for
nothing. Every handler is @persistent (it survives
File > Open) and swallows its own errors (a handler that raises is reported on every frame).
"""
from __future__ import annotations

import traceback

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import compositing, preferences
from .shared.camera import scaled_camera
from .runtime import now, runtime

IDLE_S = 0.4


def view_key(view: dict) -> int:
    return hash((np.round(view["pose"], 5).tobytes(), np.round(view["transl"], 5).tobytes(),
                 repr(view["camera"])))


def on_scene_change(scene) -> None:
    """Ask for a frame when the view really changed (applying a frame updates an image, which
    must not start another render)."""
    from .operators import current_view

    s = scene.one_shot_avatar
    conn = runtime.connection
    if (not s.live_preview or conn is None or not s.avatar_id or s.armature is None
            or runtime.stepping_frames or runtime.rendering or runtime.streaming):
        return
    try:
        view = current_view(bpy.context, avatar_id=s.avatar_id)
    except ValueError:
        return
    key = view_key(view)
    if key == runtime.last_view_key:
        return
    runtime.last_view_key, runtime.last_change = key, now()
    scale = preferences.get().scrub_scale
    if scale < 1.0:
        runtime.reduced_view = (key, s.avatar_id, view)
        view = {**view, "camera": scaled_camera(view["camera"], scale)}
    conn.request_render(scene.frame_current, s.avatar_id, view)


def tick() -> None:
    """From the result timer: the view has rested for IDLE_S -> the full-size frame."""
    pending = runtime.reduced_view
    if pending is None or runtime.connection is None or now() - runtime.last_change < IDLE_S:
        return
    runtime.reduced_view = None
    key, avatar, view = pending
    live = bpy.context.scene.one_shot_avatar.live_preview
    if key == runtime.last_view_key and live and not (runtime.rendering or runtime.streaming):
        runtime.connection.request_render(key, avatar, view)


@persistent
def _on_change(scene, depsgraph=None):
    try:
        on_scene_change(scene)
    except Exception:  # noqa: BLE001 - never break the artist's frame changes
        traceback.print_exc()


@persistent
def _on_frame(scene, depsgraph=None):
    try:
        if runtime.rendering and depsgraph is not None:
            # Blender's render prepares a frame (its own depsgraph, after render_pre): the avatar's
            # layers for this frame's compositing
            compositing.fetch_frame(scene, depsgraph)
        else:
            on_scene_change(scene)
    except Exception:  # noqa: BLE001 - never break the artist's frame changes or renders
        traceback.print_exc()


@persistent
def _on_render_start(scene, *_):
    runtime.rendering = True


@persistent
def _on_render_end(scene, *_):
    runtime.rendering = False
    try:
        compositing.close_render_client()
    except Exception:  # noqa: BLE001
        traceback.print_exc()


@persistent
def _on_file_loaded(*_):
    """A reopened .blend keeps the settings, not the last session's status and progress."""
    runtime.last_view_key = runtime.reduced_view = None
    for scene in bpy.data.scenes:
        s = scene.one_shot_avatar
        s.status, s.progress = ("connected" if runtime.connection is not None else "not connected"), 0.0


HOOKS = (("frame_change_post", _on_frame), ("depsgraph_update_post", _on_change),
         ("render_init", _on_render_start), ("render_pre", _on_render_start),
         ("render_complete", _on_render_end), ("render_cancel", _on_render_end),
         ("load_post", _on_file_loaded))


def add_handlers() -> None:
    for name, fn in HOOKS:
        hooks = getattr(bpy.app.handlers, name)
        if fn not in hooks:
            hooks.append(fn)


def remove_handlers() -> None:
    for name, fn in HOOKS:
        hooks = getattr(bpy.app.handlers, name)
        while fn in hooks:
            hooks.remove(fn)
