"""The avatar: a canonical field skinned by a body model, and its volume renderer.

Rendering is fast by construction: the posed body is rasterised first (cheap), and only rays
within `margin` metres of its silhouette are marched, with samples in a band around the body
surface they hit. Rays that miss cost nothing and no sample is wasted in empty space; the band
is wide enough for clothes and hair (`band_front`, `margin`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from backend.avatar.field import FieldConfig, make_field
from backend.avatar.skinning import (MotionConfig, NonRigidOffsets, PoseCorrector, SkinningVolume,
                                     apply_inverse, blend)
from backend.body.model import BodyModel
from backend.render.raster import camera_tensors, rasterize_layers
from backend.render.silhouette import near_silhouette
from shared.camera import PinholeCamera


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    samples: int = 24           # per ray
    band_front: float = 0.12    # metres marched in front of the body surface (clothes, hair)
    band_back: float = 0.08     # and behind it (the field is opaque well before)
    margin: float = 0.08        # metres around the body silhouette whose rays are marched
    box_padding: float = 0.15   # canonical box around the rest body
    chunk_rays: int = 16384     # rays per batch when rendering without gradients
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Samples deeper than this (metres) behind the surface their ray hits first start inverse
    # skinning from their nearest bone, not from that surface's weights (which, for a ray
    # grazing an arm into the torso, are the arm's). 0: every sample starts from the surface's.
    nearest_bone_behind: float = 0.0
    # A ray whose next body surface facing the camera lies beyond its band (the thigh behind a
    # hand, the torso behind an arm) also marches this many samples in a second band around
    # that surface (behind_front in front of it to band_back behind), composited behind the
    # first: a faint first surface (fingers, hair) no longer shows the background through the
    # body behind it. 0: one band (docs/benchmark.md has the measured difference).
    behind_samples: int = 8
    behind_front: float = 0.04


@dataclasses.dataclass
class Rendered:
    rgb: torch.Tensor        # (H, W, 3), composited over the background
    alpha: torch.Tensor      # (H, W)
    body_mask: torch.Tensor  # (H, W) bool: hard silhouette of the posed body model
    rays: int                # rays marched (for the speed report)
    depth: torch.Tensor | None = None  # (H, W) expected camera depth (z, metres) of the volume, 0 where alpha is 0


def bone_segments(body: BodyModel, betas) -> tuple[torch.Tensor, ...]:
    """The rest skeleton as segments for `nearest_bone_weights`: each end a rest point and the
    joint whose transform moves it, and the joint owning the segment (a bone from parent p to
    child j moves with p; leaves (head, feet, hands) get a short bone of their own, extending
    the one before them)."""
    from shared.smpl import PARENTS

    with torch.no_grad():
        rest = body.rest(torch.as_tensor(np.asarray(betas, np.float32)).reshape(1, -1)
                         .to(body.smpl.v_template.device))[1][0].cpu()
    a, a_by, b, b_by, owner = [], [], [], [], []
    for j, p in enumerate(PARENTS):
        if p >= 0:
            a.append(rest[p]), a_by.append(p), b.append(rest[j]), b_by.append(j), owner.append(p)
        if j not in PARENTS:
            a.append(rest[j]), a_by.append(j), owner.append(j), b_by.append(j)
            b.append(rest[j] + 0.5 * (rest[j] - rest[PARENTS[j]]))
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return torch.stack(a), as_long(a_by), torch.stack(b), as_long(b_by), as_long(owner)


def nearest_bone_weights(points: torch.Tensor, transforms: torch.Tensor, a_rest, a_by, b_rest, b_by,
                         owner) -> torch.Tensor:
    """One-hot skinning weights (N, 24): the owner of the posed bone nearest each point."""
    dev = points.device

    def posed(rest, by):
        T = transforms[by.to(dev)]
        return (T[:, :3, :3] @ rest.to(dev, points.dtype)[..., None])[..., 0] + T[:, :3, 3]
    a, b = posed(a_rest, a_by), posed(b_rest, b_by)
    ab = b - a
    rel = points[:, None, :] - a
    t = ((rel * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-9)).clamp(0, 1)
    d = (rel - t[..., None] * ab).pow(2).sum(-1)
    return torch.nn.functional.one_hot(owner.to(dev)[d.argmin(1)], transforms.shape[0]).to(points.dtype)


class Avatar(torch.nn.Module):
    def __init__(self, body: BodyModel, betas, field_cfg: FieldConfig = FieldConfig(),
                 motion_cfg: MotionConfig = MotionConfig(), render_cfg: RenderConfig = RenderConfig()):
        super().__init__()
        self.body = body  # not saved with the avatar: the file records its identity instead
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float32)).reshape(1, -1)
        self.register_buffer("betas", betas)
        self.field_cfg, self.motion_cfg, self.render_cfg = field_cfg, motion_cfg, render_cfg
        with torch.no_grad():
            rest_v, _ = body.rest(betas.to(body.smpl.v_template.device))
        rest_v = rest_v[0].cpu().numpy()
        pad = render_cfg.box_padding
        box_min, box_max = rest_v.min(0) - pad, rest_v.max(0) + pad
        self.register_buffer("rest_vertices", torch.from_numpy(rest_v))
        self.field = make_field(box_min, box_max, field_cfg)
        self.skin = SkinningVolume(box_min, box_max, rest_v, body.weights.detach().cpu().numpy(),
                                   motion_cfg.weight_voxel)
        self.pose_corrector = PoseCorrector(motion_cfg.pose_hidden) if motion_cfg.pose_correction else None
        # bones for the nearest-bone first guess (not state: rebuilt from the body and betas)
        self._bones = bone_segments(body, betas) if render_cfg.nearest_bone_behind > 0 else None
        self.nonrigid = (NonRigidOffsets(box_min, box_max, motion_cfg.nonrigid_hidden)
                         if motion_cfg.nonrigid else None)

    def avatar_state(self) -> dict:
        """Learned state without the body model's own tensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("body.")}

    def load_avatar_state(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("body.")]
        if missing or unexpected:
            raise ValueError(f"avatar state does not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def motion_parameters(self):
        return [p for m in (self.skin, self.pose_corrector, self.nonrigid) if m is not None
                for p in m.parameters()]

    def posed(self, pose, transl, correct: bool = True):
        """Corrected pose (1, 72), per-joint transforms (24, 4, 4) and posed body vertices (V, 3)."""
        dev = self.device
        pose = torch.as_tensor(pose, dtype=torch.float32, device=dev).reshape(1, -1)
        transl = torch.as_tensor(transl, dtype=torch.float32, device=dev).reshape(1, 3)
        if correct and self.pose_corrector is not None:
            pose = self.pose_corrector(pose)
        out = self.body(pose, self.betas, transl)
        return pose, out.transforms[0], out.vertices[0]

    def render(self, camera: PinholeCamera, pose, transl, *, jitter: bool = False,
               background=None, correct_pose: bool = True, generator: torch.Generator | None = None) -> Rendered:
        cfg = self.render_cfg
        dev = self.device
        bg = torch.as_tensor(cfg.background if background is None else background, dtype=torch.float32,
                             device=dev)
        pose_c, transforms, vertices = self.posed(pose, transl, correct_pose)
        H, W = camera.height, camera.width
        K, R, t = camera_tensors(camera, device=dev)
        behind = cfg.behind_samples > 0
        first, second = rasterize_layers(vertices.detach()[None], self.body.faces, K, R, t, H, W,
                                         behind=cfg.band_back + cfg.behind_front if behind else None)
        face_index, depth, bary = (a[0] for a in first)
        covered = face_index >= 0
        rgb = bg.expand(H, W, 3).clone()
        alpha = torch.zeros(H, W, device=dev)
        ray_pix, src_pix = self._rays(camera, covered, depth)
        if ray_pix.numel() == 0:
            return Rendered(rgb, alpha, covered, 0, torch.zeros(H, W, device=dev))
        w_ray = self._surface_weights(face_index, bary, src_pix)
        z_surf = depth.reshape(-1)[src_pix]
        band = (cfg.band_front, cfg.band_back, cfg.samples)
        march = lambda sel, z0, w0, band: self._march(camera, K, R, t, ray_pix[sel], z0[sel], w0[sel], band,  # noqa: E731
                                                      transforms, pose_c, bg, jitter, generator)
        chunk = ray_pix.numel() if torch.is_grad_enabled() else cfg.chunk_rays
        colours, alphas, depths = (torch.cat(v) for v in zip(*(
            march(slice(s, s + chunk), z_surf, w_ray, band) for s in range(0, ray_pix.numel(), chunk))))
        if behind:
            face2, depth2, bary2 = (a[0] for a in second)
            z_next = depth2.reshape(-1)[src_pix]
            two = torch.isfinite(z_next).nonzero()[:, 0]
            if two.numel():
                w_next = self._surface_weights(face2, bary2, src_pix)
                band2 = (cfg.behind_front, cfg.band_back, cfg.behind_samples)
                c2, a2, d2 = (torch.cat(v) for v in zip(*(
                    march(two[s:s + chunk], z_next, w_next, band2) for s in range(0, two.numel(), chunk))))
                # the second band lies wholly behind the first: "over" compositing
                c1, a1, d1 = colours[two], alphas[two], depths[two]
                a = a1 + (1.0 - a1) * a2
                colours = colours.index_put((two,), c1 + (1.0 - a1)[:, None] * (c2 - bg))
                alphas = alphas.index_put((two,), a)
                depths = depths.index_put((two,), (a1 * d1 + (1.0 - a1) * a2 * d2) / a.clamp(min=1e-6))
        rgb = rgb.reshape(-1, 3).index_put((ray_pix,), colours).reshape(H, W, 3)
        alpha = alpha.reshape(-1).index_put((ray_pix,), alphas).reshape(H, W)
        depth = torch.zeros(H * W, device=dev).index_put((ray_pix,), depths).reshape(H, W)
        return Rendered(rgb, alpha, covered, int(ray_pix.numel()), depth)

    @torch.no_grad()
    def render_rgba(self, camera: PinholeCamera, pose, transl) -> torch.Tensor:
        """(H, W, 4) in [0, 1] with straight (not premultiplied) alpha: for files and for
        compositing over anything (Blender, the add-on's viewport)."""
        return self.render_layers(camera, pose, transl)[0]

    @torch.no_grad()
    def render_layers(self, camera: PinholeCamera, pose, transl) -> tuple[torch.Tensor, torch.Tensor]:
        """render_rgba's image and the avatar's depth (H, W): the expected camera depth (z along
        the camera's axis, metres) of the volume render where alpha > 0, else 0; for compositing
        with a scene by depth."""
        out = self.render(camera, pose, transl, background=(0.0, 0.0, 0.0))  # premultiplied colour
        straight = out.rgb / out.alpha[..., None].clamp(min=1e-6)
        rgba = torch.cat([straight, out.alpha[..., None]], -1).clamp(0, 1)
        return rgba, torch.where(out.alpha > 0, out.depth, torch.zeros_like(out.depth))

    def _rays(self, camera: PinholeCamera, covered: torch.Tensor, depth: torch.Tensor):
        """Flat indices of the pixels to march (the body silhouette grown by `margin` metres)
        and, for each, the covered pixel whose surface depth and weights it borrows. Stays on
        the device: one read-back (the silhouette's box and median depth, which size the
        search) before the pixels themselves are counted."""
        rows, cols = covered.any(1), covered.any(0)
        H, W = covered.shape
        z_med = torch.where(covered, depth, torch.full_like(depth, float("nan"))).nanmedian()
        stats = torch.stack([rows.sum(), rows.int().argmax(), H - rows.flip(0).int().argmax(),
                             cols.int().argmax(), W - cols.flip(0).int().argmax()]).double()
        n_rows, y0, y1, x0, x1, z = torch.cat([stats, z_med.double()[None]]).tolist()
        if n_rows == 0:
            empty = torch.zeros(0, dtype=torch.long, device=covered.device)
            return empty, empty
        grow = math.ceil(self.render_cfg.margin * float(camera.K[0, 0]) / max(z, 1e-3))
        return near_silhouette(covered, grow, (int(y0), int(y1), int(x0), int(x1)))

    def _surface_weights(self, face_index: torch.Tensor, bary: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
        """The body's skinning weights (n, 24) at the surface seen at pixels `pix` (0 where none)."""
        f = face_index.reshape(-1)[pix]
        w = (bary.reshape(-1, 3)[pix, :, None] * self.body.weights[self.body.faces[f.clamp(min=0)]]).sum(1)
        return w * (f >= 0)[:, None]

    def _march(self, camera, K, R, t, ray_pix, z_surf, w_ray, band, transforms, pose, bg, jitter, generator):
        """Volume-render rays `ray_pix` over (front, back, samples) = `band` around the depths
        z_surf, starting inverse skinning from the weights w_ray: (rgb over bg, alpha, depth)."""
        cfg = self.render_cfg
        dev = self.device
        W = camera.width
        front, back, S = band
        n = ray_pix.numel()
        u = (ray_pix % W).float() + 0.5
        v = torch.div(ray_pix, W, rounding_mode="floor").float() + 0.5
        # K^-1 (u, v, 1) by back substitution (K is upper triangular): no solver, no host sync
        y = (v - K[1, 2]) / K[1, 1]
        d_cam = torch.stack([(u - K[0, 1] * y - K[0, 2]) / K[0, 0], y, torch.ones_like(u)], 1)  # (n, 3), z = 1
        steps = torch.linspace(-front, back, S + 1, device=dev)
        lo, width = steps[:-1], (front + back) / S
        if jitter:
            # drawn on the CPU generator (saved in checkpoints) whatever the device
            frac = torch.rand(n, S, generator=generator).to(dev)
        else:
            frac = torch.full((n, S), 0.5, device=dev)
        z = (z_surf[:, None] + lo[None] + frac * width).clamp(min=1e-3)     # (n, S) camera depth
        x_cam = d_cam[:, None, :] * z[..., None]
        x = ((x_cam - t) @ R).reshape(-1, 3)                                   # world points
        # inverse skinning: per-ray first guess, then the learned weights where it lands
        w0 = w_ray.repeat_interleave(S, 0)
        if self._bones is not None:
            behind = ((z - z_surf[:, None]) > cfg.nearest_bone_behind).reshape(-1)
            w0 = torch.where(behind[:, None], nearest_bone_weights(x.detach(), transforms.detach(), *self._bones), w0)
        x0 = apply_inverse(blend(w0, transforms), x)
        x_c = apply_inverse(blend(self.skin(x0), transforms), x)
        if self.nonrigid is not None:
            x_c = self.nonrigid(x_c, pose)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            density, colour = self.field(x_c)
        density, colour = density.reshape(n, S), colour.reshape(n, S, 3)
        delta = width * d_cam.norm(dim=-1, keepdim=True)                      # metres per sample
        a = 1.0 - torch.exp(-density * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1.0 - a[:, :-1] + 1e-10], 1), 1)
        weight = a * trans
        acc = weight.sum(1)
        rgb = (weight[..., None] * colour).sum(1) + (1.0 - acc)[:, None] * bg
        # expected depth of what is seen (never a loss: kept out of the autograd graph)
        depth = (weight.detach() * z).sum(1) / acc.detach().clamp(min=1e-6)
        return rgb, acc, depth
