"""Stage B: optimise the avatar on one photo with ELICIT's losses and hybrid sampling.

Each iteration is, with probability `input_view_prob`, the input view (reconstruction of the
person crop: MSE + LPIPS, or 1 - SSIM without LPIPS weights, + alpha vs. the person mask) or
a novel view around the body: a part is drawn (part-aware sampling) and a direction for it
(rotation-aware sampling); the same part is cropped in the photo and in the render, and the
render is pulled towards the photo crop by CLIP (image) and the prompt (text), and towards
the body by the silhouette and edge losses. Renders are made directly at crop size by
cropping the camera, so no pixel outside the crop is ever marched.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar import losses as L
from backend.avatar.avatar import Avatar
from backend.avatar.config import AvatarFitConfig
from backend.avatar.photo_views import PhotoViews, photo_view_loss
from backend.avatar.sampling import body_box, crop_box, crop_resize, draw_part, resolve_part, sample_novel_view
from backend.render.raster import camera_tensors, part_boxes, project, visible_vertices
from shared.camera import PinholeCamera
from shared.orbit import body_facing_yaw, body_up, orbit_camera, relative_yaw
from shared.smpl import NUM_PARTS, PART_INDEX


@dataclasses.dataclass
class PhotoTarget:
    """The photo side of a fit, prepared once."""
    image: torch.Tensor      # (1, 3, H, W) photo composited over the render background
    mask: torch.Tensor       # (1, 1, H, W) person mask
    camera: PinholeCamera
    pose: np.ndarray         # (72,) fitted body pose
    transl: np.ndarray       # (3,)


@dataclasses.dataclass
class FitState:
    iteration: int
    optimiser: torch.optim.Optimizer
    rng: np.random.Generator
    generator: torch.Generator
    history: list


def make_photo_target(photo: np.ndarray, mask: np.ndarray, camera: PinholeCamera, pose, transl,
                      background, device) -> PhotoTarget:
    img = torch.as_tensor(np.asarray(photo, dtype=np.float32), device=device).permute(2, 0, 1)[None]
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=device)[None, None]
    bg = torch.as_tensor(background, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return PhotoTarget(img * m + bg * (1 - m), m, camera, np.asarray(pose, np.float32),
                       np.asarray(transl, np.float32))


def learning_rates(cfg: AvatarFitConfig, iteration: int) -> tuple[float, float]:
    """(canonical field, motion) learning rates for stage-B `iteration`: an exponential decay to
    `lr_final` of the start at the last iteration. A function of the iteration alone, so a resumed
    fit continues the same schedule."""
    scale = cfg.stage_b.lr_final ** min(1.0, iteration / max(1, cfg.stage_b.iterations))
    return cfg.stage_b.lr_canonical * scale, cfg.stage_b.lr_motion * scale


def make_optimiser(avatar: Avatar, cfg: AvatarFitConfig) -> torch.optim.Optimizer:
    canonical, motion_lr = learning_rates(cfg, 0)
    groups = [{"params": list(avatar.field.parameters()), "lr": canonical}]
    motion = avatar.motion_parameters()
    if motion:
        groups.append({"params": motion, "lr": motion_lr})
    return torch.optim.Adam(groups)


def new_state(avatar: Avatar, cfg: AvatarFitConfig) -> FitState:
    seed = cfg.stage_b.seed
    return FitState(0, make_optimiser(avatar, cfg), np.random.default_rng(seed),
                    torch.Generator(device="cpu").manual_seed(seed), [])


class StageB:
    """One fit's moving parts; `step()` runs one iteration and returns its losses."""

    def __init__(self, avatar: Avatar, target: PhotoTarget, cfg: AvatarFitConfig, clip=None, lpips=None,
                 prompt: str | None = None):
        self.avatar, self.target, self.cfg = avatar, target, cfg
        self.clip, self.lpips, self.prompt = clip, lpips, (prompt or None)
        self.parts, self.rotations = cfg.parts, cfg.rotations
        self.bg = torch.tensor(cfg.render.background, dtype=torch.float32, device=avatar.device)
        with torch.no_grad():
            _, _, verts = avatar.posed(target.pose, target.transl, correct=False)
        self.vertices = verts
        v = verts.cpu().numpy()
        self.centre = (v.min(0) + v.max(0)) / 2.0
        self.up = body_up(target.pose[:3])
        self.facing = body_facing_yaw(target.pose[:3], self.up)
        self.input_rel_yaw = relative_yaw(target.camera, self.centre, self.facing, self.up)
        self.distance = float(np.linalg.norm(target.camera.center - self.centre))
        self.input_boxes = self._part_boxes(target.camera)
        ys, xs = np.nonzero(target.mask[0, 0].cpu().numpy() > 0.5)
        mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float) if len(xs) else np.zeros(4)
        both = np.stack([mask_box, body_box(self.input_boxes[0])])
        self.person_box = body_box(both)
        self.photo_views = PhotoViews(verts, avatar.body.faces, target.image, target.mask, target.camera) \
            if cfg.losses.photo_views else None

    # ------------------------------------------------------------------ helpers
    def _part_boxes(self, camera: PinholeCamera):
        K, R, t = camera_tensors(camera, device=self.avatar.device)
        uv, z = project(self.vertices[None], K, R, t)
        seen = z > 0
        if self.parts.occlusion:
            small = camera.scaled(min(1.0, self.parts.visibility_size / max(camera.width, camera.height)))
            seen = visible_vertices(self.vertices[None], self.avatar.body.faces,
                                    *camera_tensors(small, device=self.avatar.device), small.height, small.width)
        boxes, valid = part_boxes(uv, self.avatar.body.part_labels, NUM_PARTS, camera.height, camera.width,
                                  visible_mask=seen)
        return boxes[0].cpu().numpy(), valid[0].cpu().numpy()

    def _render_crop(self, camera: PinholeCamera, box, size: int, jitter: bool):
        crop = camera.cropped(*box, size, size)
        return self.avatar.render(crop, self.target.pose, self.target.transl, jitter=jitter,
                                  generator=self.gen)

    @staticmethod
    def _chw(x: torch.Tensor) -> torch.Tensor:
        return x.permute(2, 0, 1)[None]

    # ------------------------------------------------------------------ the two kinds of iteration
    def input_view(self) -> dict:
        size = self.cfg.stage_b.input_size
        t = self.target
        box = crop_box(self.person_box, 0.05, t.camera.width, t.camera.height)
        # a random shift of up to half an output pixel: every pixel of the photo gets seen
        shift = (self.rng.uniform(-0.5, 0.5, 2) * (box[2] - box[0]) / size)
        box = (box[0] + shift[0], box[1] + shift[1], box[2] + shift[0], box[3] + shift[1])
        out = self._render_crop(t.camera, box, size, jitter=True)
        photo = crop_resize(t.image, [box], size, fill=self.bg)   # (boxes as numbers: no device read)
        mask = crop_resize(t.mask, [box], size, fill=0.0)
        pred = self._chw(out.rgb)
        terms = {"mse": L.mse(pred, photo), "input_alpha": L.mse(out.alpha[None, None], mask)}
        if self.lpips:
            terms["lpips"] = self.lpips(pred, photo)
        else:
            terms["ssim"] = L.ssim_loss(pred, photo)
        return terms

    def novel_view(self) -> dict:
        size = self.cfg.stage_b.novel_size
        t = self.target
        part = draw_part(self.parts, self.rng)
        view = sample_novel_view(part, self.rotations, self.rng)
        cam = orbit_camera(self.centre, self.facing, view.rel_yaw, view.pitch, self.distance * view.distance_scale,
                           float(t.camera.K[0, 0]), t.camera.width, t.camera.height, up=self.up)
        boxes = self._part_boxes(cam)
        part = resolve_part(self.parts, part, [self.input_boxes, boxes])
        pad = self.parts.padding_for(part)

        def box_of(bxs):
            b = bxs[0][PART_INDEX[part]] if part else body_box(bxs[0])
            return crop_box(b, pad, cam.width, cam.height)
        novel_box = box_of(boxes)
        out = self._render_crop(cam, novel_box, size, jitter=True)
        body_mask = out.body_mask[None, None].float()
        crop_focal = float(cam.K[0, 0]) * size / (novel_box[2] - novel_box[0])
        grow = int(round(self.cfg.stage_b.clothing_margin * crop_focal / (self.distance * view.distance_scale)))
        alpha = out.alpha[None, None]
        terms = {"silhouette": L.silhouette_loss(alpha, body_mask),
                 "outside": L.outside_loss(alpha, body_mask, grow),
                 "edge": L.edge_loss(alpha, L.edge_distance_map(body_mask))}
        if self.photo_views is not None:
            terms["photo_views"] = photo_view_loss(out.rgb, self.photo_views.target(cam.cropped(*novel_box, size, size)))
        if self.cfg.losses.holes:
            terms["holes"] = L.hole_loss(alpha, body_mask)
        if self.cfg.losses.opacity:
            near = F.max_pool2d(body_mask, 2 * grow + 1, stride=1, padding=grow) if grow > 0 else body_mask
            terms["opacity"] = L.opacity_entropy(alpha, near)
        if self.clip is not None:
            pred = self._chw(out.rgb)
            if view.self_target:
                # the model's own look from the nearest view the photo supervises
                tcam = orbit_camera(self.centre, self.facing, view.target_rel_yaw, view.pitch, self.distance,
                                    float(t.camera.K[0, 0]), t.camera.width, t.camera.height, up=self.up)
                with torch.no_grad():
                    tgt = self._chw(self._render_crop(tcam, box_of(self._part_boxes(tcam)), size, False).rgb)
            else:
                tgt = crop_resize(t.image, [box_of(self.input_boxes)], size, fill=self.bg)
            terms["clip_image"] = self.clip.image_loss(pred, tgt)
            if self.prompt:
                terms["clip_text"] = self.clip.text_loss(pred, [self.prompt])
        terms["_part"] = part or "full_body"
        terms["_bin"] = view.bin
        return terms

    def step(self, state: FitState) -> dict:
        self.rng, self.gen = state.rng, state.generator
        w = dataclasses.asdict(self.cfg.losses)
        kind = "input" if self.rng.random() < self.cfg.stage_b.input_view_prob else "novel"
        terms = self.input_view() if kind == "input" else self.novel_view()
        losses = {k: v for k, v in terms.items() if not k.startswith("_")}
        total = sum(w[k] * v for k, v in losses.items())
        if w["smoothness"]:
            total = total + w["smoothness"] * self.avatar.field.smoothness()
        if w["pose_correction"] and self.avatar.pose_corrector is not None:
            losses["pose_correction"] = self.avatar.pose_correction_offset(self.target.pose).square().sum()
            total = total + w["pose_correction"] * losses["pose_correction"]
        state.optimiser.zero_grad(set_to_none=True)
        total.backward()
        for group, lr in zip(state.optimiser.param_groups, learning_rates(self.cfg, state.iteration)):
            group["lr"] = lr
        state.optimiser.step()
        state.iteration += 1
        # the log's numbers in one read-back (each separate read would make the host wait for a GPU)
        values = torch.stack([v.detach().float().reshape(()) for v in (total, *losses.values())]).tolist()
        record = {"iteration": state.iteration, "view": kind, "total": values[0]}
        record.update(zip(losses, values[1:]))
        record.update({k[1:]: v for k, v in terms.items() if k.startswith("_")})
        return record


def run_stage_b(stage: StageB, state: FitState, iterations: int,
                progress: Callable[[dict], None] | None = None,
                checkpoint: Callable[[FitState], None] | None = None, checkpoint_every: int = 0) -> FitState:
    start = time.perf_counter()
    first = state.iteration
    while state.iteration < iterations:
        rec = stage.step(state)
        state.history.append(rec)
        done = state.iteration - first
        rate = (time.perf_counter() - start) / done
        rec["of"] = iterations
        rec["eta_s"] = rate * (iterations - state.iteration)
        rec["seconds_per_iteration"] = rate
        if progress is not None:
            progress(rec)
        if checkpoint is not None and checkpoint_every and state.iteration % checkpoint_every == 0 \
                and state.iteration < iterations:
            checkpoint(state)
    return state
