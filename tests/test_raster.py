"""The rasteriser: exact coverage, soft edges and gradients, depth order, parts, and Cycles."""
import numpy as np
import pytest
import torch

from backend.render.raster import (camera_tensors, hard_silhouette, part_boxes, project, rasterize,
                                   soft_silhouette, visible_vertices)
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


def test_part_boxes():
    cam = flat_camera()
    a_v, _ = quad(1.0, 1.0, 6.0, 6.0, 5.0, cam)
    b_v, _ = quad(8.0, 2.0, 15.0, 11.0, 5.0, cam)
    verts = torch.cat([a_v, b_v])[None]
    uv, _ = project(verts, *camera_tensors(cam))
    boxes, valid = part_boxes(uv, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 3, cam.height, cam.width, min_size=4)
    assert torch.allclose(boxes[0, 0], torch.tensor([1.0, 1.0, 6.0, 6.0]), atol=1e-4)
    assert torch.allclose(boxes[0, 1], torch.tensor([8.0, 2.0, 15.0, 11.0]), atol=1e-4)
    assert valid[0].tolist() == [True, True, False]
    assert torch.equal(boxes[0, 2], torch.zeros(4))  # no vertex: an empty box
    # only visible vertices count: hide part 1's right half
    visible = torch.tensor([[True] * 6 + [False, True]])
    boxes, valid = part_boxes(uv, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 3, cam.height, cam.width,
                              visible_mask=visible, min_size=4)
    assert torch.allclose(boxes[0, 1], torch.tensor([8.0, 2.0, 15.0, 11.0]), atol=1e-4)
    visible = torch.tensor([[True] * 4 + [True, False, False, True]])  # left edge only: too thin
    boxes, valid = part_boxes(uv, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 3, cam.height, cam.width,
                              visible_mask=visible, min_size=4)
    assert torch.allclose(boxes[0, 1], torch.tensor([8.0, 2.0, 8.0, 11.0]), atol=1e-4)
    assert valid[0].tolist() == [True, False, False]
    # a part entirely outside the image is not valid even if its clipped box is not empty
    shifted = uv.clone()
    shifted[0, 4:, 0] += 100.0
    boxes, valid = part_boxes(shifted, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 3, cam.height, cam.width, min_size=0)
    assert valid[0].tolist() == [True, False, False]


def rectangle_sdf(x0, y0, x1, y1, width, height):
    """Signed distance (positive inside) from every pixel centre to a rectangle's outline."""
    u = np.arange(width)[None] + 0.5
    v = np.arange(height)[:, None] + 0.5
    dx = np.maximum(np.maximum(x0 - u, u - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - v, v - y1), 0.0)
    outside = np.hypot(dx, dy)
    inside = np.minimum(np.minimum(u - x0, x1 - u), np.minimum(v - y0, y1 - v))
    return np.where(outside > 0, -outside, inside)


def grid_mesh(x0, y0, x1, y1, z, cam, n):
    """A rectangle tessellated into n x n quads (2n² sub-pixel triangles, like a body mesh)."""
    K = cam.K
    us, vs = np.meshgrid(np.linspace(x0, x1, n + 1), np.linspace(y0, y1, n + 1))
    verts = np.stack([(us - K[0, 2]) * z / K[0, 0], (vs - K[1, 2]) * z / K[1, 1], np.full_like(us, z)], -1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return torch.tensor(verts.reshape(-1, 3), dtype=torch.float64), torch.tensor(faces)


def test_single_triangle_coverage_is_exact():
    cam = flat_camera(20, 16)
    corners = np.array([[1.3, 2.7], [17.9, 5.1], [6.2, 14.6]])
    z = 3.0
    verts = torch.tensor([[(u - cam.K[0, 2]) * z / 100.0, (v - cam.K[1, 2]) * z / 100.0, z] for u, v in corners],
                         dtype=torch.float64)
    for faces in (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])):  # either winding
        sil = hard_silhouette(verts[None], faces, *camera_tensors(cam, dtype=torch.float64), cam.height, cam.width)[0]
        u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        edge = [(corners[(k + 1) % 3, 0] - corners[k, 0]) * (v - corners[k, 1])
                - (corners[(k + 1) % 3, 1] - corners[k, 1]) * (u - corners[k, 0]) for k in range(3)]
        expected = (edge[0] >= 0) & (edge[1] >= 0) & (edge[2] >= 0)
        assert expected.sum() > 50 and np.array_equal(sil.numpy(), expected)


def test_soft_silhouette_is_sigmoid_of_outline_distance_on_dense_mesh():
    """Sub-pixel triangles (interior edges everywhere) must neither dilate the outline nor
    lower the interior: alpha = sigmoid(signed distance to the outline / sigma)."""
    cam = flat_camera(24, 20)
    verts, faces = grid_mesh(4.3, 3.6, 19.2, 15.9, 5.0, cam, 30)
    K, R, t = camera_tensors(cam, dtype=torch.float64)
    sigma = 1.0
    alpha = soft_silhouette(verts[None], faces, K, R, t, cam.height, cam.width, sigma=sigma)[0].numpy()
    sdf = rectangle_sdf(4.3, 3.6, 19.2, 15.9, cam.width, cam.height)
    exact = 1.0 / (1.0 + np.exp(-sdf / sigma))
    band = np.abs(sdf) < 3.0 * sigma
    assert np.abs(alpha - exact)[band].max() < 1e-6
    # farther than the margin: exact, or rounded to 0 / 1
    far = ~band
    assert (np.isclose(alpha, exact, atol=1e-6) | (alpha == (sdf > 0)))[far].all()
    # pixels farther than the margin (plus a pixel) from any uncovered pixel are exactly 1
    assert (alpha[8:12, 8:15] == 1.0).all()


def test_occluding_contour_inside_the_silhouette_stays_covered():
    cam = flat_camera(24, 20)
    back_v, back_f = quad(2.0, 2.0, 22.0, 18.0, 8.0, cam)
    front_v, front_f = quad(8.2, 7.3, 14.6, 12.8, 4.0, cam)   # in front, well inside the back quad
    verts = torch.cat([back_v, front_v])[None]
    faces = torch.cat([back_f, front_f + 4])
    alpha = soft_silhouette(verts, faces, *camera_tensors(cam), cam.height, cam.width)[0].numpy()
    sdf = rectangle_sdf(2.0, 2.0, 22.0, 18.0, cam.width, cam.height)
    assert np.abs(alpha - 1.0 / (1.0 + np.exp(-sdf)))[np.abs(sdf) < 3].max() < 1e-5
    assert (alpha[6:14, 6:18] == 1.0).all()  # around the front quad's outline


def test_chunked_pairs_give_the_same_images(monkeypatch):
    from backend.render import raster

    cam = flat_camera(24, 20)
    verts, faces = grid_mesh(4.3, 3.6, 19.2, 15.9, 5.0, cam, 7)
    verts = verts.float()
    K, R, t = camera_tensors(cam)
    args = (faces, K, R, t, cam.height, cam.width)
    v = verts[None].clone().requires_grad_(True)
    alpha = soft_silhouette(v, *args)
    (grad,) = torch.autograd.grad((alpha * torch.rand_like(alpha)).sum(), v)
    fi, depth, bary = rasterize(verts[None], *args)
    monkeypatch.setattr(raster, "PAIR_BUDGET", 37)
    v2 = verts[None].clone().requires_grad_(True)
    torch.manual_seed(0)
    alpha2 = soft_silhouette(v2, *args)
    assert torch.equal(alpha, alpha2)
    fi2, depth2, bary2 = rasterize(verts[None], *args)
    assert torch.equal(fi, fi2) and torch.equal(depth, depth2) and torch.equal(bary, bary2)


def test_camera_inside_a_huge_triangle_and_behind_the_camera():
    cam = flat_camera(16, 12)
    K, R, t = camera_tensors(cam)
    # a triangle whose projection is far larger than the image (camera very close to it)
    big = torch.tensor([[-1.0, -1.0, 0.01], [1.0, -1.0, 0.01], [0.0, 2.0, 0.01]])
    sil = hard_silhouette(big[None], torch.tensor([[0, 1, 2]]), K, R, t, cam.height, cam.width)
    alpha = soft_silhouette(big[None], torch.tensor([[0, 1, 2]]), K, R, t, cam.height, cam.width)
    assert sil.all() and (alpha == 1.0).all()
    # one vertex behind the camera: skipped, not drawn with garbage coordinates
    behind = torch.tensor([[-0.1, -0.1, 5.0], [0.1, -0.1, 5.0], [0.0, 0.1, -1.0]], requires_grad=True)
    alpha = soft_silhouette(behind[None], torch.tensor([[0, 1, 2]]), K, R, t, cam.height, cam.width)
    alpha.sum().backward()  # still part of the graph, so a fit whose body left the view fails softly
    assert (alpha == 0).all() and torch.isfinite(behind.grad).all() and (behind.grad == 0).all()
    assert not hard_silhouette(behind[None].detach(), torch.tensor([[0, 1, 2]]), K, R, t, cam.height, cam.width).any()


def test_batch_matches_single_renders():
    cam = flat_camera()
    a_v, faces = quad(2.2, 3.0, 9.6, 7.4, 5.0, cam)
    b_v, _ = quad(5.1, 1.3, 14.7, 10.2, 3.0, cam)
    K, R, t = camera_tensors(cam)
    both = soft_silhouette(torch.stack([a_v, b_v]), faces, K, R, t, cam.height, cam.width)
    fi = rasterize(torch.stack([a_v, b_v]), faces, K, R, t, cam.height, cam.width)[0]
    for i, v in enumerate((a_v, b_v)):
        assert torch.allclose(both[i], soft_silhouette(v[None], faces, K, R, t, cam.height, cam.width)[0])
        assert torch.equal(fi[i], rasterize(v[None], faces, K, R, t, cam.height, cam.width)[0][0])


def test_body_silhouette_matches_blender_cycles(open_body):
    """Independent reference: Cycles' mask of the same posed body and camera (off-centre
    principal point, non-square image), IoU >= 0.98 for the hard and the soft silhouette."""
    pytest.importorskip("bpy", reason="bpy (Blender as a module) is needed for the Cycles reference")
    from blender_reference import render_cycles_mask

    from backend.jobs.sample_subject import frame_body, subject_pose

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
    import mathutils
    from blender_reference import setup_scene
    from bpy_extras.object_utils import world_to_camera_view

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


def test_march_pixels_match_scipys_distance_transform():
    """The renderer's on-device ray selection picks exactly the pixels within the radius that
    scipy's Euclidean distance transform does, each paired with a covered pixel at that
    distance (ties may pick a different pixel of equal distance)."""
    from scipy import ndimage

    from backend.render.silhouette import near_silhouette

    rng = np.random.default_rng(0)
    for trial in range(40):
        H, W = (int(v) for v in rng.integers(5, 90, 2))
        cov = ndimage.binary_dilation(rng.random((H, W)) < rng.uniform(0.001, 0.05),
                                      iterations=int(rng.integers(0, 4)))
        radius = int(rng.integers(0, 12))
        ray, src = (v.numpy() for v in near_silhouette(torch.from_numpy(cov), radius))
        if not cov.any():
            assert ray.size == 0 and src.size == 0
            continue
        dist = ndimage.distance_transform_edt(~cov)
        assert np.array_equal(np.sort(ray), np.flatnonzero(dist <= radius)), trial
        (sy, sx), (ry, rx) = np.divmod(src, W), np.divmod(ray, W)
        assert cov[sy, sx].all()
        np.testing.assert_allclose(np.hypot(sy - ry, sx - rx), dist.ravel()[ray], atol=1e-6)


def _quad(x0, x1, y0, y1, z, towards_camera=True):
    """Two triangles of a square at depth z (camera frame, identity pose), wound to face the
    camera (counter-clockwise seen from it, as body meshes are seen from outside) or away."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]]) if towards_camera else torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, f


def test_second_layer_is_the_next_surface_facing_the_camera():
    """rasterize_layers' second layer: the nearest front face at least `behind` metres behind
    the first (a wall behind a small card), skipping back faces (the card's own far side) and
    surfaces closer than `behind`."""
    from backend.render.raster import rasterize_layers

    parts = [_quad(-0.1, 0.1, -0.1, 0.1, 2.0),                          # a card facing the camera
             _quad(-0.1, 0.1, -0.1, 0.1, 2.02, towards_camera=False),  # its far side, 2 cm behind
             _quad(-0.05, 0.05, -0.05, 0.05, 2.05),                    # a front face 5 cm behind
             _quad(-1.0, 1.0, -1.0, 1.0, 2.5)]                          # the wall, 50 cm behind
    verts, faces, offset = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    verts, faces = torch.cat(verts)[None], torch.cat(faces)
    cam = PinholeCamera.from_focal(100.0, 64, 64)
    K, R, t = camera_tensors(cam)
    (f1, d1, _), (f2, d2, b2) = rasterize_layers(verts, faces, K, R, t, 64, 64, behind=0.1)
    assert torch.equal(rasterize(verts, faces, K, R, t, 64, 64)[1], d1)   # (face ids may differ on shared edges)
    centre, edge, corner = (32, 32), (32, 36), (2, 2)   # card + small face, card only, wall only
    assert torch.isclose(d1[0][centre], torch.tensor(2.0)) and torch.isclose(d2[0][centre], torch.tensor(2.5))
    assert f2[0][centre] in (6, 7) and f2[0][edge] in (6, 7)                     # the wall's triangles
    assert torch.isclose(b2[0][centre].sum(), torch.tensor(1.0))
    assert torch.isclose(d1[0][corner], torch.tensor(2.5)) and f2[0][corner] == -1 and torch.isinf(d2[0][corner])
    _, (_, d2_near, _) = rasterize_layers(verts, faces, K, R, t, 64, 64, behind=0.03)
    assert torch.isclose(d2_near[0][centre], torch.tensor(2.05))             # the small face, 5 cm behind


def test_visible_vertices_are_those_no_nearer_surface_hides():
    """A quad half behind a nearer one: its covered corners are hidden, the others seen; a
    vertex outside the image or at the silhouette's edge counts as seen, one behind the camera
    does not."""
    cam = flat_camera()
    near_v, near_f = quad(1.0, 1.0, 8.0, 11.0, 4.0, cam)
    far_v, far_f = quad(2.0, 2.0, 14.0, 9.0, 6.0, cam)
    behind = torch.tensor([[0.0, 0.0, -1.0]])
    outside = torch.tensor([[100.0, 0.0, 5.0]])
    verts = torch.cat([near_v, far_v, behind, outside])[None]
    faces = torch.cat([near_f, far_f + 4])
    seen = visible_vertices(verts, faces, *camera_tensors(cam), cam.height, cam.width)[0].tolist()
    # far quad corners: (2,2) and (2,9) lie under the near quad, (14,2) and (14,9) do not
    assert seen[:4] == [True] * 4
    assert seen[4:8] == [False, True, True, False]
    assert seen[8:] == [False, True]
