"""The benchmark's "exported mesh" row: the full method's avatar baked into a mesh (as
`python -m backend export` does), posed with its own skinning weights at every evaluated view and
rendered by Cycles (emission of its texture, no lighting, the same cameras). Next to the neural
render's row it shows how much quality the bake keeps; `stats` adds how well the silhouettes
agree (IoU of the mesh's and the volume render's alpha at every view) and the asset's size and
bake time."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.export.check import pose_vertices, silhouette_iou
from backend.export.gltf import png_bytes, to_glb

WHITE = np.ones(3, np.float32)


class ExportedMeshRenderer:
    """A renderer for `run.evaluate`: `prepare(setups)` bakes, poses and renders every view in one
    Cycles process; each call then returns the next view's (rgb over white, None)."""

    def __init__(self, avatar, cfg, photo_view=None, samples: int = 16):
        from backend.jobs.avatar_export import bake

        self.avatar, self.samples = avatar, samples
        start = time.perf_counter()
        with torch.no_grad():
            self.mesh, seconds = bake(avatar, cfg, photo_view=photo_view)
        self.texture_png = png_bytes(self.mesh.texture)   # encoded once: for the size and for Cycles
        self.stats = {"bake_seconds": round(time.perf_counter() - start, 1), "steps": seconds,
                      "triangles": int(len(self.mesh.faces)), "vertices": int(len(self.mesh.vertices)),
                      "texture": int(self.mesh.texture.shape[0]),
                      "glb_bytes": len(to_glb(self.mesh, texture_png=self.texture_png))}
        self.images: list[np.ndarray] = []

    def prepare(self, setups: list, transl) -> None:
        """setups: (view, camera, pose) per view, as run.view_setups yields them."""
        from backend.quality.subjects import render_with_cycles

        m = self.mesh
        # posed with the avatar's learned pose correction, as its neural render is: the row
        # measures the bake, not the correction (which the exported skeleton does not carry)
        posed = [pose_vertices(self.avatar, m.vertices, m.joints, m.weights, pose, transl)
                 for _, _, pose in setups]
        cams = [cam for _, cam, _ in setups]
        with tempfile.TemporaryDirectory(prefix="exported-mesh-") as tmp:
            tmp = Path(tmp)
            (tmp / "texture.png").write_bytes(self.texture_png)
            meta = {"kind": "textured", "views": [f"v{i:03d}" for i in range(len(setups))],
                    "width": cams[0].width, "height": cams[0].height, "samples": self.samples,
                    "texture": str(tmp / "texture.png")}
            np.savez(tmp / "job.npz", meta=json.dumps(meta), faces=m.faces, vertices=np.stack(posed), uvs=m.uvs,
                     K=np.stack([c.K for c in cams]), R=np.stack([c.R for c in cams]),
                     t=np.stack([c.t for c in cams]), pose_index=np.arange(len(setups)))
            render_with_cycles(tmp / "job.npz", tmp / "views")
            rgba = [np.asarray(Image.open(tmp / "views" / f"{v}.png").convert("RGBA"), np.float32) / 255.0
                    for v in meta["views"]]
        ious = []
        for (view, cam, pose), image in zip(setups, rgba):
            with torch.no_grad():
                neural = self.avatar.render(cam, pose, transl).alpha.float().cpu().numpy()
            ious.append(silhouette_iou(image[..., 3] > 0.5, neural > 0.5))
        self.stats["silhouette_iou"] = {"min": float(np.min(ious)), "mean": float(np.mean(ious)),
                                        "per_view": [round(float(v), 4) for v in ious]}
        self.images = [im[..., :3] * im[..., 3:] + (1.0 - im[..., 3:]) * WHITE for im in rgba]

    def __call__(self, cam, pose, transl):
        return self.images.pop(0), None
