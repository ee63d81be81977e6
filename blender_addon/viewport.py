"""The avatar drawn in the 3D viewport from the viewport's own view, hidden behind the scene's
geometry where it is behind it.

A POST_VIEW draw handler, per viewport region: `prepare` turns the region's view and the rig's
pose into a request when they changed (viewport_view.ViewportScheduler: a quarter size while
moving, full size at rest) and returns the newest frame that has arrived; `_draw` puts that frame
over the region with its depth converted to the region's depth range, so the depth test hides
what the scene covers. Only `_draw` needs a GPU (background Blender cannot draw); the rest runs
in tests. Orthographic views draw nothing (the avatar is a perspective render); the camera's
background preview (live.py) remains for looking through the camera.
"""
from __future__ import annotations

import traceback

import bpy
import numpy as np

from . import live, preferences, rig
from .runtime import runtime
from .viewport_view import Frame, ViewportScheduler, view_camera

scheduler = ViewportScheduler()
_handle = None
_gpu: dict = {}          # the shader, and per slot (seq, colour texture, depth texture)
_reported: set = set()   # draw errors already printed (a draw callback runs many times a second)

VERTEX = "void main() { uv = pos * 0.5 + 0.5; gl_Position = vec4(pos, 0.0, 1.0); }"
# The frame is sRGB; Blender sets `srgbTarget` on bind when the framebuffer stores linear colour
# and encodes it itself (then the colour is decoded first, or it would be encoded twice).
FRAGMENT = """
void main() {
    vec4 c = texture(image, uv);
    if (c.a <= 0.0) { discard; }
    gl_FragDepth = texture(depth, uv).r;
    vec3 rgb = c.rgb;
    if (srgbTarget) {
        rgb = mix(rgb / 12.92, pow((rgb + 0.055) / 1.055, vec3(2.4)), step(vec3(0.04045), rgb));
    }
    FragColor = vec4(rgb * c.a, c.a);
}
"""


def prepare(context, region, rv3d) -> Frame | None:
    """Ask for this region's frame if its view or the pose changed; the frame to draw (or None).
    Raises ValueError with a user-readable line when it cannot (orthographic, no rig)."""
    s = context.scene.one_shot_avatar
    conn = runtime.connection
    if not s.show_in_viewport or conn is None or not s.avatar_id or s.armature is None:
        return None
    slot = region.as_pointer()
    scheduler.moving_scale = preferences.get().scrub_scale
    if not (runtime.rendering or runtime.stepping_frames):
        cam = view_camera(rv3d.view_matrix, rv3d.window_matrix, region.width, region.height)
        pose, transl = rig.read_pose(s.armature, context.evaluated_depsgraph_get(),
                                     rest_joints=runtime.rest_joints(s.avatar_id))
        view = {"pose": pose, "transl": transl, "camera": cam}
        req = scheduler.on_view(slot, live.view_key(view), view, rv3d.window_matrix)
        if req is not None:
            conn.request_render(req.seq, s.avatar_id, req.view, slot=slot, depth=True)
    return scheduler.shown.get(slot)


def tick() -> None:
    """From the result timer: full-size frames for the views that have rested."""
    conn, s = runtime.connection, bpy.context.scene.one_shot_avatar
    if conn is None or not s.show_in_viewport or not s.avatar_id or runtime.rendering:
        return
    for req in scheduler.due():
        conn.request_render(req.seq, s.avatar_id, req.view, slot=req.slot, depth=True)


def on_frame(payload: dict) -> None:
    """A viewport frame arrived (results.apply_result): keep it and redraw the viewports."""
    if scheduler.on_frame(payload["slot"], payload["key"], payload["rgba"], payload["depth"]) is None:
        return
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


# ---------------------------------------------------------------------------- the GPU side (thin)
def _shader():
    if "shader" not in _gpu:
        import gpu

        info = gpu.types.GPUShaderCreateInfo()
        info.vertex_in(0, "VEC2", "pos")
        varyings = gpu.types.GPUStageInterfaceInfo("avatar_viewport")
        varyings.smooth("VEC2", "uv")
        info.vertex_out(varyings)
        info.sampler(0, "FLOAT_2D", "image")
        info.sampler(1, "FLOAT_2D", "depth")
        info.push_constant("BOOL", "srgbTarget")
        info.fragment_out(0, "VEC4", "FragColor")
        info.depth_write("ANY")
        info.vertex_source(VERTEX)
        info.fragment_source(FRAGMENT)
        _gpu["shader"] = gpu.shader.create_from_info(info)
    return _gpu["shader"]


def _textures(slot, frame: Frame):
    import gpu

    cached = _gpu.get(slot)
    if cached is not None and cached[0] == frame.request.seq:
        return cached[1], cached[2]
    h, w = frame.rgba.shape[:2]
    colour = np.ascontiguousarray(frame.rgba[::-1], dtype=np.float32).ravel() / 255.0   # GL rows go up
    depth = np.ascontiguousarray(frame.depth[::-1], dtype=np.float32).ravel()
    tex = gpu.types.GPUTexture((w, h), format="RGBA32F", data=gpu.types.Buffer("FLOAT", colour.size, colour))
    ztex = gpu.types.GPUTexture((w, h), format="R32F", data=gpu.types.Buffer("FLOAT", depth.size, depth))
    _gpu[slot] = (frame.request.seq, tex, ztex)
    return tex, ztex


def _draw(slot, frame: Frame) -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    shader = _shader()
    tex, ztex = _textures(slot, frame)
    batch = batch_for_shader(shader, "TRI_FAN", {"pos": ((-1, -1), (1, -1), (1, 1), (-1, 1))})
    test, mask = gpu.state.depth_test_get(), gpu.state.depth_mask_get()
    gpu.state.depth_test_set("LESS_EQUAL")
    gpu.state.depth_mask_set(True)
    gpu.state.blend_set("ALPHA_PREMULT")
    try:
        shader.bind()
        shader.uniform_sampler("image", tex)
        shader.uniform_sampler("depth", ztex)
        batch.draw(shader)
    finally:
        gpu.state.blend_set("NONE")
        gpu.state.depth_mask_set(mask)
        gpu.state.depth_test_set(test)


def draw_callback() -> None:
    """SpaceView3D POST_VIEW handler: never raises (each distinct error is printed once)."""
    try:
        context = bpy.context
        region, rv3d = context.region, context.region_data
        if region is None or rv3d is None:
            return
        frame = prepare(context, region, rv3d)
        if frame is not None:
            _draw(region.as_pointer(), frame)
    except ValueError:
        return   # orthographic view, no rig: nothing to draw (the panel says why elsewhere)
    except Exception as exc:  # noqa: BLE001 - a draw handler must never break the viewport
        if repr(exc) not in _reported:
            _reported.add(repr(exc))
            traceback.print_exc()


def add_handler() -> None:
    global _handle
    if _handle is None:
        _handle = bpy.types.SpaceView3D.draw_handler_add(draw_callback, (), "WINDOW", "POST_VIEW")


def remove_handler() -> None:
    global _handle
    if _handle is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_handle, "WINDOW")
        _handle = None
    scheduler.forget()
    _gpu.clear()
