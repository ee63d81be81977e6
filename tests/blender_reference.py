"""Independent references rendered by Blender (bpy, Blender as a Python module).

Cycles shares no code with our rasteriser, so agreeing with it checks our projection
convention, pixel-centre handling and coverage rule at once.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from backend.quality.cycles_render import cycles_settings, new_scene
from shared.camera import PinholeCamera


def setup_scene(vertices: np.ndarray, faces: np.ndarray, cam: PinholeCamera):
    return new_scene(vertices, faces, cam)


def render_cycles_mask(vertices: np.ndarray, faces: np.ndarray, cam: PinholeCamera, samples: int = 16) -> np.ndarray:
    """Cycles' alpha (H, W) in [0, 1] for the mesh seen by the camera."""
    import bpy

    scene, _, _ = setup_scene(vertices, faces, cam)
    cycles_settings(scene, samples, filter_width=0.01)  # a box of almost nothing: pixel-centre coverage
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        from PIL import Image

        return np.asarray(Image.open(path))[..., 3].astype(np.float32) / 255.0
