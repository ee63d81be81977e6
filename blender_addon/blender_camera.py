"""Blender camera -> the backend's pinhole camera (shared/camera.py convention).

Frames: the backend works in SMPL's frame (Y up); Blender's world is Z up. `TO_BLENDER` maps
the first to the second (a +90 degree turn about X: SMPL's up +Y becomes +Z and its facing +Z
becomes -Y, Blender's front). Blender cameras look down -Z with +Y up; OpenCV cameras down +Z
with +Y down. Intrinsics follow Blender's own rules (sensor fit, AUTO choosing the larger side
with pixel aspect, resolution percentage, shift in units of the fitted side), so the result
agrees with `bpy_extras.object_utils.world_to_camera_view`.
"""
from __future__ import annotations

import numpy as np

TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # SMPL/backend -> Blender world
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # Blender camera axes <-> OpenCV camera axes


def render_size(scene) -> tuple[int, int]:
    r = scene.render
    scale = r.resolution_percentage / 100.0
    return max(1, int(r.resolution_x * scale)), max(1, int(r.resolution_y * scale))


def intrinsics(cam_data, width: int, height: int, pixel_aspect_x: float = 1.0, pixel_aspect_y: float = 1.0
               ) -> np.ndarray:
    """3x3 K in pixels for a Blender camera rendered at width x height."""
    if cam_data.type != "PERSP":
        raise ValueError(f"camera '{cam_data.name}' is {cam_data.type}; only perspective cameras are supported")
    fit = cam_data.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if width * pixel_aspect_x >= height * pixel_aspect_y else "VERTICAL"
    sensor = cam_data.sensor_height if cam_data.sensor_fit == "VERTICAL" else cam_data.sensor_width
    ycor = pixel_aspect_y / pixel_aspect_x
    view = width if fit == "HORIZONTAL" else ycor * height   # the fitted side, in x pixels
    fx = cam_data.lens * view / sensor
    fy = fx / ycor
    cx = width / 2.0 - cam_data.shift_x * view
    cy = height / 2.0 + cam_data.shift_y * view / ycor
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def camera_dict(scene, cam_obj, depsgraph=None) -> dict:
    """{K, R, t, width, height} of `cam_obj` (evaluated: constraints and animation applied) in
    the backend's world frame, as the protocol sends it."""
    obj = cam_obj.evaluated_get(depsgraph) if depsgraph is not None else cam_obj
    width, height = render_size(scene)
    K = intrinsics(obj.data, width, height, scene.render.pixel_aspect_x, scene.render.pixel_aspect_y)
    M = np.array(obj.matrix_world)
    rot = M[:3, :3] / np.linalg.norm(M[:3, :3], axis=0)  # drop object scale
    cam_to_world = TO_BLENDER.T @ rot @ _FLIP_YZ            # OpenCV camera -> backend world
    R = cam_to_world.T
    position = TO_BLENDER.T @ M[:3, 3]
    return {"K": K.tolist(), "R": R.tolist(), "t": (-R @ position).tolist(), "width": width, "height": height}


def set_camera(scene, cam_obj, cam: dict) -> None:
    """Make `cam_obj` (and the scene's render size) the pinhole camera `cam` ({K, R, t, width,
    height} in the backend's world): the inverse of camera_dict for square pixels. Blender has
    one focal length, so fy is taken equal to fx (the backend's cameras have square pixels)."""
    from mathutils import Matrix

    K, R, t = (np.asarray(cam[k], dtype=np.float64) for k in ("K", "R", "t"))
    width, height = int(cam["width"]), int(cam["height"])
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    data = cam_obj.data
    data.type, data.sensor_fit = "PERSP", "AUTO"   # AUTO fits the larger side to sensor_width
    view = max(width, height)
    data.lens = K[0, 0] * data.sensor_width / view
    data.shift_x = (width / 2.0 - K[0, 2]) / view
    data.shift_y = (K[1, 2] - height / 2.0) / view
    rot = TO_BLENDER @ R.T @ _FLIP_YZ
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = rot, TO_BLENDER @ (-R.T @ t)
    cam_obj.matrix_world = Matrix(M.tolist())
