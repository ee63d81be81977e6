"""Baseline: the photo projected onto the fitted body, mirrored to the back.

Every body vertex the input camera sees (in front in the z-buffer, facing the camera, inside
the person mask) takes the photo's colour at its projection; every other vertex takes the
colour of the seen vertex nearest to its front-back mirror image in the rest pose (the back
gets the front's colours, as a naive texture completion would), or failing that the nearest
seen vertex. The coloured body is then posed and rasterised like any mesh.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from backend.avatar.stage_a import vertex_normals
from backend.body.model import BodyModel
from backend.render.raster import camera_tensors, project, rasterize
from shared.camera import PinholeCamera

DEPTH_TOLERANCE = 0.01  # metres behind the z-buffer that still count as seen
FACING_MIN = 0.1        # cos of the angle between the normal and the view ray


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at pixel coordinates uv (N, 2) (pixel centres at +0.5)."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class ProjectionBaseline:
    """Vertex colours from one photo; `render(camera, pose, transl)` like an avatar."""

    def __init__(self, body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera,
                 pose, betas, transl):
        self.body, self.betas = body, np.asarray(betas)
        faces = body.faces.cpu().numpy()
        with torch.no_grad():
            out = body(pose, self.betas, transl)
            verts = out.vertices
            K, R, t = camera_tensors(camera, verts.device, verts.dtype)
            _, zbuf, _ = rasterize(verts, body.faces, K, R, t, camera.height, camera.width)
            uv, z = project(verts, K, R, t)
        v, uv, z, zbuf = verts[0].cpu().numpy(), uv[0].cpu().numpy(), z[0].cpu().numpy(), zbuf[0].cpu().numpy()
        px, py = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (px >= 0) & (px < camera.width) & (py >= 0) & (py < camera.height) & (z > 0)
        seen = np.zeros(len(v), bool)
        idx = np.nonzero(inside)[0]
        to_cam = camera.center[None] - v
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True)
        facing = (vertex_normals(v, faces) * to_cam).sum(1) > FACING_MIN
        seen[idx] = (z[idx] <= zbuf[py[idx], px[idx]] + DEPTH_TOLERANCE) & (np.asarray(mask)[py[idx], px[idx]] > 0.5)
        seen &= facing
        if not seen.any():
            raise ValueError("the body is not visible in the photo: nothing to project")
        colours = np.zeros((len(v), 3))
        colours[seen] = _bilinear(np.asarray(photo, np.float64), uv[seen])
        rest = out.rest_vertices[0].cpu().numpy()
        mirror = rest.copy()
        mirror[:, 2] = 2 * np.median(rest[:, 2]) - rest[:, 2]   # front <-> back about the body's mid plane
        tree = cKDTree(rest[seen])
        _, nearest = tree.query(mirror[~seen])
        colours[~seen] = colours[seen][nearest]
        self.colours = torch.as_tensor(colours, dtype=torch.float32)
        self.seen_fraction = float(seen.mean())

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
