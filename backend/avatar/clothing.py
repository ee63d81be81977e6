"""Clothing and hair beyond the body model, as the photo shows them (ours).

The body model is a naked body: a skirt, a loose shirt or a hair volume leaves its surface. The
photo says where: person pixels outside the body's silhouette. From them we take

* the reach: how far (metres, at the body's depth) the person extends past the body's
  silhouette (a high quantile of those pixels' distance to it, capped). A fit widens its
  marched margin and its novel-view clothing allowance to it, so that clothing the photo shows
  is neither outside every ray nor pushed away by the outside loss on novel views;
* the stage-A targets: a rest-pose point near the body whose posed position projects onto those
  pixels starts occupied, with the photo's colour there. The photo gives clothing's extent
  across the view only; its depth starts as that of the body it hangs from.

A photo of skin-tight clothes (or a mask no wider than the body) changes nothing.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from backend.avatar.skinning import skin_points
from backend.body.body_model import BodyModel
from backend.render.raster import camera_tensors, hard_silhouette
from shared.camera import PinholeCamera

if TYPE_CHECKING:
    from backend.avatar.config import AvatarFitConfig

MIN_FRACTION = 0.02     # of the person's pixels outside the body's silhouette: less is mask noise
QUANTILE = 0.98         # of their distance to the silhouette: the reach (the farthest few are strays)
MAX_REACH = 0.25        # metres: a misfitted limb must not open the whole volume
EDGE_PX = 2             # pixels of the silhouette's own edge that never count as clothing


@dataclasses.dataclass
class PhotoClothing:
    reach: float                 # metres past the body's silhouette
    beyond: np.ndarray           # (H, W) bool: person pixels outside the body's silhouette
    photo: np.ndarray            # (H, W, 3) float in [0, 1]
    camera: PinholeCamera
    transforms: np.ndarray       # (24, 4, 4) rest -> photo pose
    weights: np.ndarray          # (V, 24) the body's skinning weights

    def targets(self, points: np.ndarray, nearest: np.ndarray, distance: np.ndarray):
        """For rest-pose points (N, 3) with their nearest body vertex and distance to it: which
        start as clothing (N,) bool and the photo's colour there (N, 3)."""
        posed = skin_points(points, self.weights[nearest], self.transforms)
        uv, z = self.camera.project(posed), _depth(self.camera, posed)
        H, W = self.beyond.shape
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        ok = (z > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H) & (distance < self.reach)
        hit = np.zeros(len(points), bool)
        hit[ok] = self.beyond[row[ok], col[ok]]
        colours = np.zeros((len(points), 3), np.float32)
        colours[hit] = self.photo[row[hit], col[hit]]
        return hit, colours


def photo_clothing(body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera, pose, betas,
                   transl) -> PhotoClothing | None:
    """What the photo shows beyond the body, or None when it shows nothing worth a change."""
    with torch.no_grad():
        out = body.to("cpu")(pose, betas, transl)
        K, R, t = camera_tensors(camera)
        sil = hard_silhouette(out.vertices, body.faces, K, R, t, camera.height, camera.width)[0].numpy()
    person = np.asarray(mask) > 0.5
    grown = cv2.dilate(sil.astype(np.uint8), np.ones((2 * EDGE_PX + 1,) * 2, np.uint8)) > 0
    beyond = person & ~grown
    if beyond.sum() < MIN_FRACTION * max(1, person.sum()):
        return None
    dist = cv2.distanceTransform((~sil).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    depth = float(np.median(_depth(camera, out.vertices[0].numpy())))
    reach = min(MAX_REACH, float(np.quantile(dist[beyond], QUANTILE)) * depth / float(camera.K[0, 0]))
    return PhotoClothing(reach, beyond, np.asarray(photo, np.float32), camera,
                         out.transforms[0].numpy().astype(np.float64), body.weights.detach().cpu().numpy())


def allowance_for(cfg: AvatarFitConfig, clothing: PhotoClothing | None) -> AvatarFitConfig:
    """The fit config with its novel-view clothing allowance narrowed to what the photo shows:
    `bare_margin` where the person reaches no further than the body, up to `clothing_margin` as
    far as it does (unchanged when bare_margin is 0 or not below clothing_margin)."""
    b = cfg.stage_b
    if not 0 < b.bare_margin < b.clothing_margin:
        return cfg
    reach = clothing.reach if clothing is not None else 0.0
    margin = min(b.clothing_margin, max(b.bare_margin, reach))
    return dataclasses.replace(cfg, stage_b=dataclasses.replace(b, clothing_margin=margin))


def hang_for(cfg: AvatarFitConfig, clothing: PhotoClothing | None) -> AvatarFitConfig:
    """The fit config whose renders move the samples the skinning round trip loses below the
    waist with the pelvis (RenderConfig.hang_from_pelvis) when the photo shows clothing reaching
    past the body's tight allowance: emptying them cut a skirt's hem between the legs."""
    if clothing is None or clothing.reach <= cfg.stage_b.bare_margin:
        return cfg
    return dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, hang_from_pelvis=True))


def widened_for(cfg: AvatarFitConfig, reach: float) -> AvatarFitConfig:
    """The fit config with room for clothing `reach` metres past the body: the marched margin
    and the novel-view clothing allowance at least that (never narrower than the preset's)."""
    render = dataclasses.replace(cfg.render, margin=max(cfg.render.margin, reach + 0.02))
    stage_b = dataclasses.replace(cfg.stage_b, clothing_margin=max(cfg.stage_b.clothing_margin, reach))
    return dataclasses.replace(cfg, render=render, stage_b=stage_b)


def _depth(camera: PinholeCamera, points: np.ndarray) -> np.ndarray:
    return points @ camera.R[2] + camera.t[2]
