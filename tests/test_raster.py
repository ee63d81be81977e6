"""The rasteriser: exact coverage, soft edges and gradients, depth order, parts, and Cycles."""
import numpy as np
import pytest
import torch

from backend.render.raster import (camera_tensors, hard_silhouette, part_boxes, part_masks, project,
                                   rasterize, soft_silhouette)
from shared.camera import PinholeCamera


def flat_camera(width=16, height=12):
    # orthographic-like: a far camera, so pixel coordinates are easy to reason about
    return PinholeCamera(np.diag([100.0, 100.0, 1.0]) + [[0, 0, width / 2], [0, 0, height / 2], [0, 0, 0]],
                         np.eye(3), np.zeros(3), width, height)


def quad(x0, y0, x1, y1, z, cam):
    """Two triangles covering pixel-space rectangle [x0,x1]x[y0,y1] at depth z."""
    K = cam.K
    def world(u, v):
        return [(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z]
    verts = torch.tensor([world(x0, y0), world(x1, y0), world(x1, y1), world(x0, y1)], dtype=torch.float32)
    return verts, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_hard_coverage_is_exact_on_pixel_centres():
    cam = flat_camera()
    verts, faces = quad(2.2, 3.0, 9.6, 7.4, 5.0, cam)
    sil = hard_silhouette(verts[None], faces, *camera_tensors(cam), cam.height, cam.width)[0]
    cols = (np.arange(cam.width) + 0.5)
    rows = (np.arange(cam.height) + 0.5)
    expected = ((rows[:, None] >= 3.0) & (rows[:, None] <= 7.4)) & ((cols[None] >= 2.2) & (cols[None] <= 9.6))
    assert np.array_equal(sil.numpy(), expected)


def test_soft_silhouette_edges_and_interior():
    cam = flat_camera()
    verts, faces = quad(2.0, 3.0, 10.5, 8.5, 5.0, cam)
    alpha = soft_silhouette(verts[None], faces, *camera_tensors(cam), cam.height, cam.width, sigma=0.5)[0]
    hard = hard_silhouette(verts[None], faces, *camera_tensors(cam), cam.height, cam.width)[0]
    assert torch.equal(alpha > 0.5, hard)
    assert alpha[5, 5] > 0.99                      # interior, next to the quad's internal diagonal
    assert alpha[5, 10] == pytest.approx(0.5, abs=0.02)  # centre 10.5 lies on the right edge
    assert alpha[5, 12] < 0.02                     # 1.5 px outside
    sharp = soft_silhouette(verts[None], faces, *camera_tensors(cam), cam.height, cam.width, sigma=0.05)[0]
    assert torch.equal(sharp.round().bool(), hard)


def test_gradients_are_finite_and_match_finite_differences():
    cam = flat_camera()
    verts, faces = quad(2.3, 3.2, 9.7, 7.6, 5.0, cam)
    K, R, t = camera_tensors(cam)
    def total(v):
        return soft_silhouette(v[None], faces, K, R, t, cam.height, cam.width, sigma=1.0).sum()
    v = verts.clone().requires_grad_(True)
    total(v).backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    # moving the right edge outward (+x) grows the silhouette; compare with a finite difference
    step = 0.01
    moved = verts.clone(); moved[[1, 2], 0] += step
    fd = (total(moved) - total(verts)).item() / step
    analytic = (v.grad[[1, 2], 0]).sum().item()
    assert fd > 0 and analytic == pytest.approx(fd, rel=0.1)


def test_nearest_surface_wins_regardless_of_order():
    cam = flat_camera()
    near_v, near_f = quad(2.0, 2.0, 8.0, 8.0, 4.0, cam)
    far_v, far_f = quad(5.0, 5.0, 14.0, 11.0, 6.0, cam)
    for first_near in (True, False):
        parts = [(near_v, near_f), (far_v, far_f)] if first_near else [(far_v, far_f), (near_v, near_f)]
        verts = torch.cat([parts[0][0], parts[1][0]])
        faces = torch.cat([parts[0][1], parts[1][1] + 4])
        fi, depth, bary = rasterize(verts[None], faces, *camera_tensors(cam), cam.height, cam.width)
        near_ids = {0, 1} if first_near else {2, 3}
        assert int(fi[0, 6, 6]) in near_ids and depth[0, 6, 6] == pytest.approx(4.0, rel=1e-5)
        assert int(fi[0, 9, 11]) not in near_ids and depth[0, 9, 11] == pytest.approx(6.0, rel=1e-5)
        assert int(fi[0, 0, 0]) == -1 and torch.isinf(depth[0, 0, 0])
        assert torch.allclose(bary[0, 6, 6].sum(), torch.tensor(1.0))


def test_part_masks_and_boxes():
    cam = flat_camera()
    a_v, a_f = quad(1.0, 1.0, 6.0, 6.0, 5.0, cam)
    b_v, b_f = quad(8.0, 2.0, 15.0, 11.0, 5.0, cam)
    verts = torch.cat([a_v, b_v])[None]
    faces = torch.cat([a_f, b_f + 4])
    fi, _, _ = rasterize(verts, faces, *camera_tensors(cam), cam.height, cam.width)
    masks = part_masks(fi, torch.tensor([0, 0, 1, 1]), 3)
    assert masks.shape == (1, 3, cam.height, cam.width)
    assert masks[0, 0, 3, 3] and not masks[0, 1, 3, 3] and masks[0, 1, 6, 10]
    assert masks[0, 2].sum() == 0 and not (masks[0, 0] & masks[0, 1]).any()
    uv, _ = project(verts, *camera_tensors(cam))
    boxes, valid = part_boxes(uv, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 3, cam.height, cam.width, min_size=4)
    assert torch.allclose(boxes[0, 0], torch.tensor([1.0, 1.0, 6.0, 6.0]), atol=1e-4)
    assert torch.allclose(boxes[0, 1], torch.tensor([8.0, 2.0, 15.0, 11.0]), atol=1e-4)
    assert valid[0].tolist() == [True, True, False]


def test_body_silhouette_matches_blender_cycles(open_body):
    """Independent reference: Cycles' mask of the same posed body and camera (off-centre
    principal point, non-square image), IoU >= 0.98 for the hard and the soft silhouette."""
    pytest.importorskip("bpy", reason="bpy (Blender as a module) is needed for the Cycles reference")
    from blender_reference import render_cycles_mask
    from backend.sample_subject import frame_body, subject_pose

    pose = subject_pose()
    betas = np.array([0.5, 0.0, 0.3, 0.2, -0.4, 0.1])
    transl = frame_body(open_body, pose, betas, 2.6)
    verts = open_body(pose, betas, transl).vertices
    W, H = 112, 128
    K = np.array([[150.0, 0, 50.0], [0, 150.0, 68.0], [0, 0, 1]])
    angle = 0.2  # a camera turned about Y, so R is not the identity
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    cam = PinholeCamera(K, R, np.array([-0.2, 0.0, 0.3]), W, H)
    cycles = render_cycles_mask(verts[0].detach().numpy(), open_body.faces.numpy(), cam) > 0.5
    Kt, Rt, tt = camera_tensors(cam)
    hard = hard_silhouette(verts.detach(), open_body.faces, Kt, Rt, tt, H, W)[0].numpy()
    soft = soft_silhouette(verts.detach(), open_body.faces, Kt, Rt, tt, H, W)[0].numpy() > 0.5
    assert cycles.sum() > 800  # a sizeable body...
    assert not (cycles[0].any() or cycles[-1].any() or cycles[:, 0].any() or cycles[:, -1].any())  # ...inside
    for ours in (hard, soft):
        iou = np.logical_and(ours, cycles).sum() / np.logical_or(ours, cycles).sum()
        print("IoU with Cycles", iou)
        assert iou >= 0.98, iou


def test_blender_camera_conversion_matches_world_to_camera_view(open_body):
    pytest.importorskip("bpy", reason="bpy (Blender as a module) is needed")
    import bpy
    import mathutils
    from bpy_extras.object_utils import world_to_camera_view
    from blender_reference import setup_scene

    K = np.array([[150.0, 0, 50.0], [0, 150.0, 68.0], [0, 0, 1]])
    cam = PinholeCamera(K, np.eye(3), np.array([0.0, 0.0, 4.0]), 112, 128)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    scene, _, cam_obj = setup_scene(points[:3], np.array([[0, 1, 2]]), cam)
    ours = cam.project(points)
    for p, (u, v) in zip(points, ours):
        ndc = world_to_camera_view(scene, cam_obj, mathutils.Vector(p.tolist()))
        # Blender: x right in [0, 1], y UP in [0, 1]
        assert ndc.x * cam.width == pytest.approx(u, abs=1e-3)
        assert (1.0 - ndc.y) * cam.height == pytest.approx(v, abs=1e-3)
