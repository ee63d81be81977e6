"""The photo seen from a novel view: colour targets where the photo sees the body (issue 14).

Without CLIP nothing speaks for the colour of a novel view but the field's shared features.
Where a novel view sees a point of the body that the photo also sees,
the photo's colour at that point's projection is a valid target, sharper than the body's vertex
colours (it is read from the photo itself, per pixel). Each such pixel is weighted by how
squarely the photo saw the surface there (grazing surfaces smear the photo), so the sides
count less than the front and the unseen back not at all.

On clothing off the body the target sits at the body surface under it, in the clothing's colour
(what the photo shows along that ray): right in colour, a few centimetres off in depth.

Off by default (`LossWeights.photo_views`): on the benchmark it tied the full method, whose
front-view error lay at the silhouette, not in the colours (docs/benchmark.md).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

# what counts as seen by the photo: the same rule as the stage-A colours'
from backend.avatar.photo_colours import DEPTH_TOLERANCE, FACING_MIN
from backend.render.raster import camera_tensors, project, rasterize
from shared.camera import PinholeCamera

ZBUFFER_SIDE = 512       # the photo's z-buffer is rasterised at most this many pixels a side


@dataclasses.dataclass
class ViewTarget:
    rgb: torch.Tensor     # (H, W, 3) the photo's colour where weight > 0
    weight: torch.Tensor  # (H, W) in [0, 1]


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) unit normals, pointing out of a closed body (signed volume positive)."""
    tri = vertices[faces]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    if (tri[:, 0] * n).sum() < 0:
        n = -n
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class PhotoViews:
    """Targets for novel views of the body in the photo's pose.

    vertices (V, 3) the posed body (world), faces (F, 3); image (1, 3, H, W) the photo over the
    render background, mask (1, 1, H, W) the person; camera the photo's."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                 camera: PinholeCamera, supersample: int = 2):
        self.vertices, self.faces = vertices.detach(), faces
        self.image, self.mask, self.camera = image, mask, camera
        self.supersample = supersample
        dev = vertices.device
        self.normals = face_normals(self.vertices, faces)
        small = camera.scaled(min(1.0, ZBUFFER_SIDE / max(camera.width, camera.height)))
        self.zcam = small
        self.zbuf = rasterize(self.vertices[None], faces, *camera_tensors(small, device=dev),
                              small.height, small.width)[1][0]
        self.K, self.R, self.t = camera_tensors(camera, device=dev)
        self.centre = torch.as_tensor(camera.center, dtype=torch.float32, device=dev)

    @staticmethod
    def _sample(image: torch.Tensor, uv: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
        """image (1, C, h, w) at pixel coordinates uv (N, 2) of a width x height image -> (N, C)."""
        grid = torch.stack([uv[:, 0] / width * 2 - 1, uv[:, 1] / height * 2 - 1], -1)[None, None]
        out = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)
        return out[0, :, 0].T

    @torch.no_grad()
    def target(self, camera: PinholeCamera) -> ViewTarget:
        """The photo's colours as `camera` would see them on the body, and their weights."""
        s = self.supersample
        big = camera.scaled(s)
        dev = self.vertices.device
        face, _, bary = (a[0] for a in rasterize(self.vertices[None], self.faces, *camera_tensors(big, device=dev),
                                                 big.height, big.width))
        hit = face >= 0
        rgb = torch.zeros(big.height, big.width, 3, device=dev)
        weight = torch.zeros(big.height, big.width, device=dev)
        if hit.any():
            f = face[hit]
            points = (bary[hit][..., None] * self.vertices[self.faces[f]]).sum(1)
            to_photo = self.centre - points
            facing = (self.normals[f] * to_photo).sum(-1) / to_photo.norm(dim=-1).clamp(min=1e-9)
            uv, z = project(points[None], self.K, self.R, self.t)
            uv, z = uv[0], z[0]
            cam = self.camera
            inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height) & (z > 0)
            scale = self.zcam.width / cam.width
            zb = self._sample(self.zbuf[None, None], uv * scale, self.zcam.width, self.zcam.height, "nearest")[:, 0]
            person = self._sample(self.mask, uv, cam.width, cam.height, "bilinear")[:, 0]
            seen = inside & (z <= zb + DEPTH_TOLERANCE) & (facing > FACING_MIN) & (person > 0.5)
            weight[hit] = torch.where(seen, facing.clamp(0, 1), torch.zeros_like(facing))
            rgb[hit] = self._sample(self.image, uv, cam.width, cam.height, "bilinear")
        if s > 1:   # average s x s samples per pixel: the target is as sharp as the render, no sharper
            rgb = F.avg_pool2d((rgb * weight[..., None]).permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            weight = F.avg_pool2d(weight[None, None], s)[0, 0]
            rgb = rgb / weight[..., None].clamp(min=1e-6)
        return ViewTarget(rgb, weight)


def photo_view_loss(rgb: torch.Tensor, target: ViewTarget) -> torch.Tensor:
    """Weighted squared error (H, W, 3) vs the target, averaged over all pixels: a view that
    sees little of what the photo saw pulls little."""
    return (target.weight[..., None] * (rgb - target.rgb) ** 2).mean()
