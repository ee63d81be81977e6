"""The photo seen from novel views (backend/avatar/photo_views.py): colour targets where the
photo sees the body, weighted by how squarely it saw it; nothing where it did not."""
import dataclasses

import numpy as np
import torch

from backend.avatar.avatar import Avatar
from backend.avatar.config import LossWeights, tiny
from backend.avatar.optimiser import StageB, make_photo_target, new_state
from backend.avatar.photo_views import PhotoViews, photo_view_loss
from shared.orbit import body_up, orbit_from_camera


def _views(open_body, s):
    betas = np.zeros(open_body.num_betas)
    with torch.no_grad():
        verts = open_body(s["pose"], betas, s["transl"]).vertices[0]
    photo = torch.tensor(s["photo"] / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    mask = torch.tensor(s["mask"] / 255.0, dtype=torch.float32)[None, None]
    photo = photo * mask + (1 - mask)
    v = verts.numpy()
    centre, up = (v.min(0) + v.max(0)) / 2.0, body_up(s["pose"][:3])
    turned = lambda yaw: orbit_from_camera(s["camera"], centre, up, yaw)  # noqa: E731
    return PhotoViews(verts, open_body.faces, photo, mask, s["camera"]), photo, turned


def test_the_target_is_the_photo_from_the_front_and_nothing_from_behind(open_body, subject_128):
    views, photo, turned = _views(open_body, subject_128)
    front = views.target(subject_128["camera"])
    w = front.weight.numpy()
    person = subject_128["mask"] > 127
    assert (w[~person] == 0).all() and (w[person] > 0).mean() > 0.8
    sure = w > 0.5
    err = np.abs(front.rgb.numpy() - photo[0].permute(1, 2, 0).numpy())[sure]
    assert sure.sum() > 500 and np.median(err) < 0.02, np.median(err)   # 2x supersampled: a touch blurred
    side, back = views.target(turned(90)), views.target(turned(180))
    covered = lambda t: (t.weight > 0).sum().item()  # noqa: E731
    print(f"weight sum front {front.weight.sum():.0f}, side {side.weight.sum():.0f}, back {back.weight.sum():.1f}")
    assert 0 < side.weight.sum() < 0.5 * front.weight.sum()          # the sides: seen at a slant, less
    assert covered(back) < 0.02 * covered(front)                     # the back: not seen


def test_the_loss_pulls_only_where_the_photo_saw(open_body, subject_128):
    views, _, turned = _views(open_body, subject_128)
    t = views.target(turned(30))
    rgb = t.rgb.clone().requires_grad_(True)
    assert photo_view_loss(rgb, t).item() == 0.0
    wrong = torch.zeros_like(t.rgb, requires_grad=True)
    loss = photo_view_loss(wrong, t)
    loss.backward()
    grad = wrong.grad.abs().sum(-1)
    assert loss.item() > 0 and (grad[t.weight == 0] == 0).all() and (grad[t.weight > 0] > 0).any()


def test_a_novel_view_step_carries_the_term_only_when_weighted(open_body, subject_128):
    s = subject_128
    cfg = tiny()
    cfg = dataclasses.replace(cfg, losses=LossWeights(photo_views=1.0), use_clip=False,
                              stage_b=dataclasses.replace(cfg.stage_b, input_view_prob=0.0))
    torch.manual_seed(0)
    avatar = Avatar(open_body, np.zeros(open_body.num_betas), cfg.field, cfg.motion, cfg.render)
    target = make_photo_target(s["photo"] / 255.0, s["mask"] / 255.0, s["camera"], s["pose"], s["transl"],
                               cfg.render.background, avatar.device)
    stage = StageB(avatar, target, cfg)
    state = new_state(avatar, cfg)
    records = [stage.step(state) for _ in range(3)]
    assert all(r["view"] == "novel" and np.isfinite(r["photo_views"]) for r in records)
    off = StageB(avatar, target, dataclasses.replace(cfg, losses=LossWeights()))
    assert off.photo_views is None and "photo_views" not in off.step(new_state(avatar, cfg))
