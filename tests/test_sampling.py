"""ELICIT's hybrid sampling: part draws and crops, view directions, self targets, orbit cameras."""
from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.avatar.sampling import (
    FULL_BODY,
    PartSamplingConfig,
    RotationSamplingConfig,
    body_box,
    crop_box,
    crop_resize,
    draw_part,
    resolve_part,
    sample_novel_view,
)
from backend.render.raster import part_boxes
from shared.camera import PinholeCamera
from shared.orbit import body_facing_yaw, body_up, orbit_camera, relative_yaw, view_bin, wrap_yaw
from shared.smpl import NUM_PARTS, PART_INDEX, PART_NAMES

N_DRAWS = 20000


# --------------------------------------------------------------------------- parts

def test_part_draw_frequencies_match_the_config():
    cfg = PartSamplingConfig()
    assert sum(cfg.probs.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    counts = collections.Counter(draw_part(cfg, rng) for _ in range(N_DRAWS))
    for name, p in cfg.probs.items():
        key = None if name == FULL_BODY else name
        assert counts[key] / N_DRAWS == pytest.approx(p, abs=0.012), name
    assert counts["neck"] == 0
    assert set(counts) <= set(PART_NAMES) | {None}


def test_part_sampling_disabled_or_custom():
    rng = np.random.default_rng(1)
    assert {draw_part(PartSamplingConfig(enabled=False), rng) for _ in range(500)} == {None}
    only_head = PartSamplingConfig(probs={"head": 2.0, FULL_BODY: 2.0})  # normalised
    counts = collections.Counter(draw_part(only_head, rng) for _ in range(4000))
    assert set(counts) == {"head", None} and counts["head"] / 4000 == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="unknown parts"):
        PartSamplingConfig(probs={"tail": 1.0})
    assert PartSamplingConfig().padding_for("head") == 0.5
    assert PartSamplingConfig().padding_for("left_arm") == PartSamplingConfig().padding_for(None) == 0.05


def test_too_small_or_invalid_part_falls_back_to_full_body():
    cfg = PartSamplingConfig(min_part_size=24)
    boxes = np.zeros((NUM_PARTS, 4))
    valid = np.ones(NUM_PARTS, bool)
    boxes[PART_INDEX["head"]] = [100, 20, 140, 70]        # 40 x 50
    boxes[PART_INDEX["left_arm"]] = [10, 10, 30, 80]      # 20 wide: too small
    boxes[PART_INDEX["body"]] = [80, 60, 160, 200]
    good = (boxes, valid)
    assert resolve_part(cfg, "head", [good]) == "head"
    assert resolve_part(cfg, "left_arm", [good]) is None
    assert resolve_part(cfg, None, [good]) is None
    # the part must be usable in every view (input crop and novel crop show the same part)
    other = boxes.copy()
    other[PART_INDEX["head"]] = [100, 20, 120, 70]
    assert resolve_part(cfg, "head", [good, (other, valid)]) is None
    invalid = valid.copy()
    invalid[PART_INDEX["head"]] = False
    assert resolve_part(cfg, "head", [(torch.as_tensor(boxes), torch.as_tensor(invalid))]) is None
    assert resolve_part(PartSamplingConfig(enabled=False), "head", [good]) is None
    np.testing.assert_allclose(body_box(boxes), [10, 10, 160, 200])


def test_boxes_from_part_boxes_drive_the_fallback():
    # projected vertices of two parts: a 60 px head and a 10 px right hand
    uv = torch.tensor([[[50.0, 10.0], [110.0, 70.0], [5.0, 100.0], [15.0, 110.0]]])
    parts = torch.tensor([PART_INDEX["head"], PART_INDEX["head"],
                          PART_INDEX["right_hand_forearm"], PART_INDEX["right_hand_forearm"]])
    boxes, valid = part_boxes(uv, parts, NUM_PARTS, 128, 128)
    cfg = PartSamplingConfig()
    assert resolve_part(cfg, "head", [(boxes[0], valid[0])]) == "head"
    assert resolve_part(cfg, "right_hand_forearm", [(boxes[0], valid[0])]) is None
    assert resolve_part(cfg, "left_arm", [(boxes[0], valid[0])]) is None  # not in view at all


def test_crop_box_pads_and_squares_about_the_centre():
    assert crop_box((10, 20, 30, 60), 0.05, 100, 100) == pytest.approx((-2.0, 18.0, 42.0, 62.0))
    assert crop_box((10, 20, 30, 60), 0.5, 100, 100, square=False) == pytest.approx((0.0, 0.0, 40.0, 80.0))
    assert crop_box((0, 0, 0, 0), 0.0, 64, 32) == pytest.approx((0.0, -16.0, 64.0, 48.0))  # empty: whole image


# --------------------------------------------------------------------------- crop_resize

def _ramp(h=32, w=48, c=3) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    img = torch.stack([xx / w, yy / h, (xx * yy) % 7 / 7][:c])
    return img[None]


def test_crop_resize_integer_boxes_are_exact():
    img = _ramp()
    same = crop_resize(img, torch.tensor([[4.0, 6.0, 20.0, 22.0]]), size=16)
    assert torch.allclose(same, img[..., 6:22, 4:20], atol=1e-12)
    # a 2x shrink averages 2 x 2 pixels (antialiased) ...
    half = crop_resize(img, torch.tensor([[8.0, 0.0, 40.0, 32.0]]), size=16)
    assert torch.allclose(half, F.avg_pool2d(img[..., 0:32, 8:40], 2), atol=1e-12)
    # ... and without antialiasing it is plain bilinear resizing (pixel centres at +0.5)
    whole = crop_resize(img, torch.tensor([[0.0, 0.0, 48.0, 32.0]]), size=16, antialias=False)
    ref = F.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(whole, ref, atol=1e-12)


def test_crop_resize_fills_outside_the_image():
    img = _ramp()
    out = crop_resize(img, torch.tensor([[-8.0, -8.0, 8.0, 8.0]]), size=16, fill=(1.0, 0.5, 0.25))
    assert torch.allclose(out[..., 8:, 8:], img[..., :8, :8], atol=1e-12)
    assert torch.allclose(out[0, :, :8, :], torch.tensor([1.0, 0.5, 0.25], dtype=img.dtype)[:, None, None])
    assert torch.allclose(out[0, :, :, :8], torch.tensor([1.0, 0.5, 0.25], dtype=img.dtype)[:, None, None])
    # boxes per image, a batch, and a float fill
    two = torch.cat([img, 1 - img])
    out = crop_resize(two, torch.tensor([[0.0, 0.0, 16.0, 16.0], [40.0, 24.0, 56.0, 40.0]]), size=16, fill=0.0)
    assert torch.allclose(out[0], img[0, :, :16, :16])
    assert torch.allclose(out[1, :, :8, :8], 1 - img[0, :, 24:, 40:]) and out[1, :, 8:, :].abs().max() == 0


def test_crop_resize_gradients_reach_the_cropped_pixels_only():
    img = _ramp().float().requires_grad_(True)
    out = crop_resize(img, torch.tensor([[10.0, 4.0, 30.0, 24.0]]), size=8)
    out.sum().backward()
    g = img.grad[0, 0]
    assert g[4:24, 10:30].sum() > 0 and g[4:24, 10:30].min() > 0
    # bilinear samples near the box's edge may touch the next pixel, nothing farther
    assert g[:3].abs().sum() == 0 and g[25:].abs().sum() == 0
    assert g[:, :9].abs().sum() == 0 and g[:, 31:].abs().sum() == 0


# --------------------------------------------------------------------------- views and cameras

def test_view_bin_boundaries():
    expected = {0: "front", 44.9: "front", -45: "front", 45: "left", 90: "left", 134.9: "left",
                135: "back", 180: "back", -180: "back", -135.1: "back", -135: "right", -90: "right",
                -45.1: "right", 360: "front", 270: "right", -270: "left"}
    for yaw, b in expected.items():
        assert view_bin(yaw) == b, yaw


def test_head_direction_frequencies_match_weights():
    cfg = RotationSamplingConfig()
    rng = np.random.default_rng(2)
    views = [sample_novel_view("head", cfg, rng) for _ in range(N_DRAWS)]
    counts = collections.Counter(v.bin for v in views)
    for b, w in cfg.weights_for("head").items():
        assert counts[b] / N_DRAWS == pytest.approx(w, abs=0.012), b
    assert all(view_bin(v.rel_yaw) == v.bin and -180 <= v.rel_yaw < 180 for v in views)
    assert all(abs(v.pitch) <= cfg.max_pitch and v.distance_scale == 1.0 for v in views)
    # torso and full body: uniform over the four bins, yaw spread over each bin
    torso = [sample_novel_view("body", cfg, rng) for _ in range(4000)]
    assert all(c / 4000 == pytest.approx(0.25, abs=0.03) for c in collections.Counter(v.bin for v in torso).values())
    front = [v.rel_yaw for v in torso if v.bin == "front"]
    assert min(front) < -40 and max(front) > 40


def test_self_target_rules():
    cfg = RotationSamplingConfig()
    rng = np.random.default_rng(3)
    seen = collections.defaultdict(set)
    for part in ("head", "body", "left_leg_foot", "right_upper_leg", "left_arm", None):
        for _ in range(400):
            v = sample_novel_view(part, cfg, rng)
            seen[(part, v.bin)].add((v.self_target, None if v.target_rel_yaw is None else view_bin(v.target_rel_yaw)))
    assert seen[("head", "back")] == {(True, "front")}
    assert seen[("head", "left")] == {(True, "front")} and seen[("head", "right")] == {(True, "front")}
    assert seen[("head", "front")] == {(False, None)}
    assert seen[("body", "back")] == {(False, None)}
    assert seen[("left_arm", "back")] == {(False, None)} and seen[(None, "back")] == {(False, None)}
    # the back of a leg copies the nearer side view
    assert seen[("left_leg_foot", "back")] <= {(True, "left"), (True, "right")}
    assert len(seen[("left_leg_foot", "back")]) == 2
    assert seen[("right_upper_leg", "left")] == {(False, None)}
    # the head's self target is its front view, i.e. the input view of a frontal photo
    v = next(v for v in (sample_novel_view("head", cfg, rng) for _ in range(100)) if v.bin == "back")
    assert v.target_rel_yaw == 0.0
    # configurable: no self targets at all
    plain = RotationSamplingConfig(self_targets=frozenset())
    assert not any(sample_novel_view("head", plain, rng).self_target for _ in range(300))


def test_rotation_sampling_disabled():
    cfg = RotationSamplingConfig(enabled=False)
    rng = np.random.default_rng(4)
    views = [sample_novel_view("head", cfg, rng) for _ in range(4000)]
    assert not any(v.self_target or v.target_rel_yaw is not None for v in views)
    counts = collections.Counter(v.bin for v in views)
    assert all(c / 4000 == pytest.approx(0.25, abs=0.03) for c in counts.values()) and len(counts) == 4
    assert min(v.rel_yaw for v in views) < -170 and max(v.rel_yaw for v in views) > 170


def _depth(cam: PinholeCamera, p) -> float:
    return float((cam.R @ np.asarray(p, float) + cam.t)[2])


def test_orbit_camera_looks_at_the_centre_from_the_requested_side():
    center = np.array([0.1, 0.9, -0.2])
    for facing in (0.0, 90.0, -150.0):
        for rel in (0.0, 30.0, 90.0, -90.0, 180.0):
            cam = orbit_camera(center, facing, rel, 10.0, 2.5, 500.0, 256, 192)
            np.testing.assert_allclose(cam.project(center[None])[0], [128.0, 96.0], atol=1e-9)
            assert np.allclose(cam.R @ cam.R.T, np.eye(3)) and np.linalg.det(cam.R) == pytest.approx(1.0)
            assert _depth(cam, center) == pytest.approx(2.5)
            # upright: a point above the centre is higher in the image
            assert cam.project((center + [0, 0.3, 0])[None])[0, 1] < 96.0
            assert abs(wrap_yaw(relative_yaw(cam, center, facing) - rel)) < 1e-9
    # facing 0 (SMPL rest, +Z): rel 0 sees the front, +90 the body's left (+x), 180 the back
    front = orbit_camera(center, 0.0, 0.0, 0.0, 3.0, 500.0, 256, 256)
    assert _depth(front, center + [0, 0, 0.2]) < _depth(front, center - [0, 0, 0.2])
    left = orbit_camera(center, 0.0, 90.0, 0.0, 3.0, 500.0, 256, 256)
    assert _depth(left, center + [0.2, 0, 0]) < _depth(left, center - [0.2, 0, 0])
    back = orbit_camera(center, 0.0, 180.0, 0.0, 3.0, 500.0, 256, 256)
    assert _depth(back, center - [0, 0, 0.2]) < _depth(back, center + [0, 0, 0.2])
    # seen from the front, the body's left (+x) is on the image's right
    assert front.project((center + [0.2, 0, 0])[None])[0, 0] > 128
    # positive pitch: camera above, looking down
    above = orbit_camera(center, 0.0, 0.0, 20.0, 3.0, 500.0, 256, 256)
    assert (-above.R.T @ above.t)[1] > center[1]
    with pytest.raises(ValueError):
        orbit_camera(center, 0.0, 0.0, 90.0, 3.0, 500.0, 256, 256)


def test_body_facing_yaw_from_global_orient():
    assert body_facing_yaw([0.0, 0.0, 0.0]) == pytest.approx(0.0)
    assert body_facing_yaw([0.0, np.pi / 2, 0.0]) == pytest.approx(90.0)   # +Z turned to +X
    assert body_facing_yaw([0.0, -np.pi / 2, 0.0]) == pytest.approx(-90.0)
    # a general rotation, against OpenCV's Rodrigues: +Z rotated, projected on the ground
    aa = np.array([0.2, 0.3, -0.1])
    f = cv2.Rodrigues(aa)[0] @ np.array([0.0, 0.0, 1.0])
    assert body_facing_yaw(aa) == pytest.approx(np.degrees(np.arctan2(f[0], f[2])), abs=1e-9)
    assert wrap_yaw(190.0) == -170.0 and wrap_yaw(180.0) == -180.0


def test_photo_frame_with_y_down_world():
    """The project's photos: world = the input camera's frame (OpenCV, Y down) and the body
    turned by pi about X to stand upright facing the camera. With up = body_up(global_orient)
    the input camera is the front view, and orbit cameras are upright."""
    go = np.array([np.pi, 0.0, 0.0])
    up = body_up(go)
    np.testing.assert_allclose(up, [0.0, -1.0, 0.0], atol=1e-12)
    facing = body_facing_yaw(go, up=up)
    center = np.array([0.0, 0.1, 8.0])
    photo_cam = PinholeCamera.from_focal(5000.0, 1024, 1024)
    assert relative_yaw(photo_cam, center, facing, up=up) == pytest.approx(0.0, abs=1e-6)
    front = orbit_camera(center, facing, 0.0, 0.0, 8.0, 5000.0, 1024, 1024, up=up)
    np.testing.assert_allclose(-front.R.T @ front.t, [0.0, 0.1, 0.0], atol=1e-9)  # where the photo was taken
    head = center + 0.5 * up
    assert front.project(head[None])[0, 1] < 512  # the head is up in the image
    left_dir = np.array([1.0, 0.0, 0.0])  # the body's +x stays +x under a rotation about X
    side = orbit_camera(center, facing, 90.0, 0.0, 8.0, 5000.0, 1024, 1024, up=up)
    assert _depth(side, center + 0.2 * left_dir) < _depth(side, center - 0.2 * left_dir)
    # a body turned 40 degrees towards its left: the photo sees it from -40 (its right-front)
    R = cv2.Rodrigues(go)[0] @ cv2.Rodrigues(np.array([0.0, np.radians(40), 0.0]))[0]
    go2 = cv2.Rodrigues(R)[0].ravel()
    rel = relative_yaw(photo_cam, center, body_facing_yaw(go2, up=body_up(go2)), up=body_up(go2))
    assert rel == pytest.approx(-40.0, abs=1e-6) and view_bin(rel) == "front"


def test_tilted_body_up_axis():
    """A fitted global orientation is never exactly upright: yaw about the body's own up axis
    still puts rel 0 in front of the body, +90 at its left, and keeps the image upright."""
    rng = np.random.default_rng(5)
    center = np.array([0.1, -0.2, 6.0])
    for _ in range(20):
        go = np.array([np.pi, 0.0, 0.0]) + rng.normal(0.0, 0.2, 3)
        R = cv2.Rodrigues(go)[0]
        up, facing_dir, left_dir = R[:, 1], R[:, 2], R[:, 0]
        np.testing.assert_allclose(body_up(go), up, atol=1e-9)
        facing = body_facing_yaw(go, up=up)
        rel = float(rng.uniform(-180, 180))
        cam = orbit_camera(center, facing, rel, float(rng.uniform(-15, 15)), 4.0, 800.0, 320, 320, up=up)
        assert abs(wrap_yaw(relative_yaw(cam, center, facing, up=up) - rel)) < 1e-9
        assert cam.project((center + 0.5 * up)[None])[0, 1] < 160
        front = orbit_camera(center, facing, 0.0, 0.0, 4.0, 800.0, 320, 320, up=up)
        assert _depth(front, center + 0.2 * facing_dir) < _depth(front, center - 0.2 * facing_dir)
        side = orbit_camera(center, facing, 90.0, 0.0, 4.0, 800.0, 320, 320, up=up)
        assert _depth(side, center + 0.2 * left_dir) < _depth(side, center - 0.2 * left_dir)


def test_orbit_from_camera_starts_at_the_camera_and_turns_to_the_bodys_left():
    from shared.orbit import orbit_from_camera

    # the photo's world: OpenCV camera at the origin, an upright body (up = -Y) facing it at z = 4
    cam = PinholeCamera.from_focal(500.0, 64, 64)
    orient = np.array([np.pi, 0.0, 0.0])
    up = body_up(orient)
    centre = np.array([0.1, 0.0, 4.0])
    same = orbit_from_camera(cam, centre, up, 0.0)
    assert np.allclose(same.R, cam.R) and np.allclose(same.t, cam.t)
    side = orbit_from_camera(cam, centre, up, 90.0)
    # the body's left (SMPL +x rotated by the orientation) now points at the camera
    left = np.diag([1.0, -1.0, -1.0]) @ np.array([1.0, 0.0, 0.0])  # 180 degrees about x keeps +x
    to_cam = side.center - centre
    assert np.dot(to_cam / np.linalg.norm(to_cam), left) > 0.99
    assert np.isclose(np.linalg.norm(side.center - centre), np.linalg.norm(cam.center - centre))
    assert view_bin(relative_yaw(side, centre, body_facing_yaw(orient, up), up)) == "left"
