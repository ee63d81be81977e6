"""Baseline: the photo projected onto the fitted body, mirrored to the back.

Every body vertex the input camera sees takes the photo's colour at its projection; every other
vertex takes the colour of the seen vertex nearest to its front-back mirror image in the rest
pose (the back gets the front's colours, as a naive texture completion would), or failing that
the nearest seen vertex (backend/avatar/photo_colours.py). The coloured body is then posed and
rasterised like any mesh.
"""
from __future__ import annotations

import numpy as np
import torch

from backend.avatar.photo_colours import photo_vertex_colours
from backend.body.body_model import BodyModel
from backend.render.raster import camera_tensors, rasterize
from shared.camera import PinholeCamera


class ProjectionBaseline:
    """Vertex colours from one photo; `render(camera, pose, transl)` like an avatar."""

    def __init__(self, body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera,
                 pose, betas, transl):
        self.body, self.betas = body, np.asarray(betas)
        colours, self.seen_fraction = photo_vertex_colours(body, photo, mask, camera, pose, betas, transl,
                                                           rule="mirror")
        self.colours = torch.as_tensor(colours, dtype=torch.float32)

    def render(self, camera: PinholeCamera, pose, transl, background=(1.0, 1.0, 1.0)) -> np.ndarray:
        with torch.no_grad():
            verts = self.body(pose, self.betas, transl).vertices
            K, R, t = camera_tensors(camera, verts.device, verts.dtype)
            face_index, _, bary = rasterize(verts, self.body.faces, K, R, t, camera.height, camera.width)
        fi, bary = face_index[0].cpu(), bary[0].cpu()
        faces = self.body.faces.cpu()
        hit = fi >= 0
        rgb = torch.tensor(background, dtype=torch.float32).expand(camera.height, camera.width, 3).clone()
        corner = self.colours[faces[fi[hit]]]                      # (N, 3 corners, 3)
        rgb[hit] = (corner * bary[hit][..., None]).sum(1)
        return rgb.numpy()
