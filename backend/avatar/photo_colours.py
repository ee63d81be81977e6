"""The photo's colours on the body's vertices: what the photo says where it is valid.

A body vertex the photo's camera sees (in front in the z-buffer, facing the camera, inside the
person mask) takes the photo's colour at its projection. The others are filled from the seen
ones in the rest pose, by one of two rules:

* "rim": the median colour of the nearest seen vertices on the rim of what the photo sees (seen
  vertices next to unseen ones: the body's sides), of the same body part where it has any: a
  garment's colour continues round the sides to the back, while a print in the middle of the
  chest stays on the chest (the stage-A colour of the avatar, issue 14);
* "mirror": the seen vertex nearest to the front-back mirror image (the back is the front's
  copy, print included: the naive texture completion of the projection baseline).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from backend.body.body_model import BodyModel
from backend.render.raster import camera_tensors, project, rasterize
from shared.camera import PinholeCamera

DEPTH_TOLERANCE = 0.01  # metres behind the z-buffer that still count as seen
FACING_MIN = 0.1        # cos of the angle between the normal and the view ray
FILL_RULES = ("rim", "mirror")
RIM_NEIGHBOURS = 8      # rim vertices whose median colour an unseen vertex takes


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, orient: bool = True) -> np.ndarray:
    """Area-weighted vertex normals, flipped if needed so that they point out of the body
    (orient=False: as the faces wind, for an open surface that has no inside)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # signed volume of the mesh: negative when the faces wind inward
    if orient and np.einsum("ij,ij->", tri[:, 0], fn) < 0:
        fn = -fn
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
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


def seen_colours(body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera, pose, betas, transl
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, 3) photo colours (0 where unseen), (V,) which vertices the photo sees, and the (V, 3)
    rest-pose vertices (for filling the rest)."""
    faces = body.faces.cpu().numpy()
    with torch.no_grad():
        out = body(pose, np.asarray(betas), transl)
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
    person = np.asarray(mask)
    person = person > (127 if person.dtype == np.uint8 else 0.5)
    seen[idx] = (z[idx] <= zbuf[py[idx], px[idx]] + DEPTH_TOLERANCE) & person[py[idx], px[idx]]
    seen &= facing
    if not seen.any():
        raise ValueError("the body is not visible in the photo: nothing to project")
    image = np.asarray(photo)
    image = image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    colours = np.zeros((len(v), 3))
    colours[seen] = bilinear(image[..., :3], uv[seen])
    return colours, seen, out.rest_vertices[0].cpu().numpy()


def rim(seen: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Seen vertices that share a face with an unseen one: the edge of what the photo sees."""
    f = np.asarray(faces)
    mixed = f[seen[f].any(1) & ~seen[f].all(1)]
    out = np.zeros_like(seen)
    out[mixed.ravel()] = True
    return out & seen


def _median_of_nearest(points: np.ndarray, source: np.ndarray, colours: np.ndarray) -> np.ndarray:
    k = min(RIM_NEIGHBOURS, len(source))
    _, idx = cKDTree(source).query(points, k=k)
    idx = idx.reshape(len(points), k)
    return np.median(colours[idx], axis=1)


def fill_unseen(colours: np.ndarray, seen: np.ndarray, rest: np.ndarray, rule: str = "rim",
                parts: np.ndarray | None = None, faces: np.ndarray | None = None) -> np.ndarray:
    """Every vertex coloured: the unseen ones from the seen ones, by `rule` (FILL_RULES; "rim"
    needs the mesh's faces, and uses the parts when given)."""
    if rule not in FILL_RULES:
        raise ValueError(f"fill rule {rule!r} is not one of {FILL_RULES}")
    out = np.array(colours, dtype=np.float64)
    unseen = ~seen
    if not unseen.any():
        return out
    if rule == "mirror":
        mirror = rest.copy()
        mirror[:, 2] = 2 * np.median(rest[:, 2]) - rest[:, 2]   # front <-> back about the body's mid plane
        _, nearest = cKDTree(rest[seen]).query(mirror[unseen])
        out[unseen] = out[seen][nearest]
        return out
    if faces is None:
        raise ValueError("the rim rule needs the mesh's faces")
    edge = rim(seen, faces)
    if not edge.any():
        edge = seen
    out[unseen] = _median_of_nearest(rest[unseen], rest[edge], out[edge])
    if parts is not None:   # prefer the rim of the same part (an arm's back is the arm's colour)
        for p in np.unique(parts[unseen]):
            have, todo = edge & (parts == p), unseen & (parts == p)
            if have.any():
                out[todo] = _median_of_nearest(rest[todo], rest[have], out[have])
    return out


def photo_vertex_colours(body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera, pose,
                         betas, transl, rule: str = "rim") -> tuple[np.ndarray, float]:
    """(V, 3) colours for every body vertex, and the fraction of vertices the photo sees."""
    colours, seen, rest = seen_colours(body, photo, mask, camera, pose, betas, transl)
    return (fill_unseen(colours, seen, rest, rule, body.part_labels.cpu().numpy(), body.faces.cpu().numpy()),
            float(seen.mean()))
