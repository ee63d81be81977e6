"""The avatar: a canonical field skinned by a body model (ELICIT's animatable NeRF).

A point seen in a posed frame is moved back to the rest pose by inverse skinning (the body's
weights at the surface its ray hits as a first guess, then the learned skinning volume where
that lands), corrected by the optional non-rigid offsets, and looked up in the canonical field.
Rendering (which rays, which samples, compositing) is the volume renderer's:
backend/render/ray_marching.py.
"""
from __future__ import annotations

import numpy as np
import torch

from backend.avatar.field import FieldConfig, make_field
from backend.avatar.skinning import (
    MotionConfig,
    NonRigidOffsets,
    PoseCorrector,
    SkinningVolume,
    apply_affine,
    apply_inverse,
    blend,
    bone_segments,
    nearest_bone_weights,
)
from backend.body.body_model import BodyModel
from backend.render.ray_marching import RenderConfig, Rendered, render_volume
from shared.camera import PinholeCamera
from shared.smpl import JOINT_INDEX

# the joints that move what hangs below the waist (skinning round trip, _query)
LOWER_BODY_JOINTS = [JOINT_INDEX[n] for n in ("pelvis", "left_hip", "right_hip", "left_knee", "right_knee",
                                              "left_ankle", "right_ankle", "left_foot", "right_foot")]


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
        if hasattr(self.field, "set_mid_surface"):
            self.field.set_mid_surface(torch.from_numpy(rest_v))
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

    def pose_correction_offset(self, pose) -> torch.Tensor:
        """The pose corrector's change (1, 72) to `pose`, in axis-angle radians (zeros without one)."""
        pose = torch.as_tensor(pose, dtype=torch.float32, device=self.device).reshape(1, -1)
        return (self.pose_corrector(pose) - pose) if self.pose_corrector is not None else torch.zeros_like(pose)

    def render(self, camera: PinholeCamera, pose, transl, *, jitter: bool = False,
               background=None, correct_pose: bool = True, generator: torch.Generator | None = None) -> Rendered:
        pose_c, transforms, vertices = self.posed(pose, transl, correct_pose)
        query = lambda x, w_ray, behind: self._query(x, w_ray, behind, transforms, pose_c)  # noqa: E731
        return render_volume(camera, vertices.detach(), self.body.faces, self.body.weights, query,
                             self.render_cfg, background=background, jitter=jitter, generator=generator)

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

    def _query(self, x: torch.Tensor, w_ray: torch.Tensor, behind: torch.Tensor, transforms, pose):
        """Density and colour at world points x (n*S, 3) of n rays: inverse skinning from each
        ray's surface weights w_ray (n, 24) as a first guess, then the learned weights where
        that lands; `behind` (n, S): each sample's depth behind its ray's surface."""
        dev = self.device
        w0 = w_ray.repeat_interleave(behind.shape[1], 0)
        if self._bones is not None:
            deep = (behind > self.render_cfg.nearest_bone_behind).reshape(-1)
            w0 = torch.where(deep[:, None], nearest_bone_weights(x.detach(), transforms.detach(), *self._bones), w0)
        x0 = apply_inverse(blend(w0, transforms), x)
        x_c = apply_inverse(blend(self.skin(x0), transforms), x)
        tolerance = self.render_cfg.skin_consistency
        if tolerance > 0:
            with torch.no_grad():   # which samples exist and how they map: no gradient through the test
                there = apply_affine(blend(self.skin(x_c), transforms), x_c)
                lost = (there - x).norm(dim=-1) > tolerance
                hung = lost & (w0[:, LOWER_BODY_JOINTS].sum(-1) > 0.5) if self.render_cfg.hang_from_pelvis \
                    else None
            # a sample the round trip cannot place is empty: between spread legs it would show the
            # other leg. With loose clothing, one the legs carried moves with the pelvis instead, as
            # skirts hang from the hips: between the rest legs it finds empty space or the hem
            if hung is not None:
                x_c = torch.where(hung[:, None], apply_inverse(transforms[:1, :3, :].expand(len(x), 3, 4), x), x_c)
                lost = lost & ~hung
        if self.nonrigid is not None:
            x_c = self.nonrigid(x_c, pose)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            density, rgb = self.field(x_c)
        if tolerance > 0:
            density = density * ~lost
        return density, rgb
