"""Independent references rendered by Blender (bpy, Blender as a Python module).

Cycles shares no code with our rasteriser, so agreeing with it checks our projection
convention, pixel-centre handling and coverage rule at once.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shared.camera import PinholeCamera

SENSOR_WIDTH = 36.0  # mm; any value works as long as lens is derived from it


def blender_camera_params(cam: PinholeCamera) -> dict:
    """Blender camera settings equivalent to an OpenCV pinhole camera (square pixels)."""
    W, H = cam.width, cam.height
    fx, cx, cy = cam.K[0, 0], cam.K[0, 2], cam.K[1, 2]
    fit = W  # shift is in units of the fitted sensor side: the width with sensor_fit HORIZONTAL
    # Blender's camera looks down -Z with +Y up: flip the OpenCV camera's Y and Z axes.
    cam_to_world = cam.R.T @ np.diag([1.0, -1.0, -1.0])
    return {
        "lens": fx * SENSOR_WIDTH / W, "sensor_width": SENSOR_WIDTH, "sensor_fit": "HORIZONTAL",
        "shift_x": (W / 2.0 - cx) / fit, "shift_y": (cy - H / 2.0) / fit,
        "rotation": cam_to_world, "location": -cam.R.T @ cam.t,
    }


def setup_scene(vertices: np.ndarray, faces: np.ndarray, cam: PinholeCamera):
    import bpy
    import mathutils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    mesh = bpy.data.meshes.new("body")
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    mesh.update()
    obj = bpy.data.objects.new("body", mesh)
    scene.collection.objects.link(obj)
    p = blender_camera_params(cam)
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = p["lens"], p["sensor_width"], p["sensor_fit"]
    cam_data.shift_x, cam_data.shift_y = p["shift_x"], p["shift_y"]
    cam_data.clip_start, cam_data.clip_end = 0.01, 1000.0
    cam_obj = bpy.data.objects.new("cam", cam_data)
    M = mathutils.Matrix.Identity(4)
    for i in range(3):
        for j in range(3):
            M[i][j] = float(p["rotation"][i, j])
        M[i][3] = float(p["location"][i])
    cam_obj.matrix_world = M
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    scene.render.resolution_x, scene.render.resolution_y = cam.width, cam.height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    return scene, obj, cam_obj


def render_cycles_mask(vertices: np.ndarray, faces: np.ndarray, cam: PinholeCamera, samples: int = 16) -> np.ndarray:
    """Cycles' alpha (H, W) in [0, 1] for the mesh seen by the camera."""
    import bpy

    scene, _, _ = setup_scene(vertices, faces, cam)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.filter_width = 0.01  # a box of almost nothing: coverage of the pixel centre
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        from PIL import Image

        return np.asarray(Image.open(path))[..., 3].astype(np.float32) / 255.0
