"""Blender camera -> pinhole camera, checked against Blender's own projection
(bpy_extras.object_utils.world_to_camera_view) for every sensor-fit case."""
import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")
import mathutils  # noqa: E402
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402

from shared.camera import PinholeCamera  # noqa: E402
from tests.installed_addon import load_built_addon  # noqa: E402

TO_BLENDER = load_built_addon().blender_camera.TO_BLENDER
camera_dict = load_built_addon().blender_camera.camera_dict


def scene_with_camera(res, pct, aspect, fit, lens, shift, sensor=(36.0, 24.0)):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = res
    scene.render.resolution_percentage = pct
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = aspect
    data = bpy.data.cameras.new("cam")
    data.lens, data.sensor_fit = lens, fit
    data.sensor_width, data.sensor_height = sensor
    data.shift_x, data.shift_y = shift
    cam = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(cam)
    cam.location = (0.7, -6.0, 1.4)
    cam.rotation_euler = (math.radians(80), math.radians(3), math.radians(8))
    cam.scale = (1.3, 1.3, 1.3)  # object scale must not leak into the camera
    scene.camera = cam
    bpy.context.view_layer.update()
    return scene, cam


@pytest.mark.parametrize("res,pct,aspect,fit,lens,shift", [
    ((640, 480), 100, (1.0, 1.0), "AUTO", 50.0, (0.0, 0.0)),
    ((480, 640), 100, (1.0, 1.0), "AUTO", 35.0, (0.1, -0.05)),           # portrait: AUTO fits the height
    ((800, 600), 50, (1.0, 1.0), "HORIZONTAL", 85.0, (-0.2, 0.1)),
    ((600, 800), 100, (1.0, 1.0), "VERTICAL", 40.0, (0.05, 0.2)),
    ((720, 576), 100, (1.0, 1.2), "AUTO", 50.0, (0.0, 0.1)),              # non-square pixels
    ((720, 576), 100, (1.4, 1.0), "VERTICAL", 60.0, (0.1, 0.0)),
])
def test_camera_matches_blender_projection(res, pct, aspect, fit, lens, shift):
    scene, cam_obj = scene_with_camera(res, pct, aspect, fit, lens, shift)
    d = camera_dict(scene, cam_obj)
    cam = PinholeCamera(np.array(d["K"]), np.array(d["R"]), np.array(d["t"]), d["width"], d["height"])
    assert (cam.width, cam.height) == (res[0] * pct // 100, res[1] * pct // 100)
    rng = np.random.default_rng(0)
    points = rng.uniform([-1.5, -1.0, 0.0], [1.5, 1.0, 2.0], (50, 3))   # in front of the camera (Blender world)
    ours = cam.project(points @ TO_BLENDER)                              # Blender world -> backend world
    for p, uv in zip(points, ours):
        ndc = world_to_camera_view(scene, cam_obj, mathutils.Vector(p))
        assert ndc.z > 0
        expected = (ndc.x * cam.width, (1.0 - ndc.y) * cam.height)
        assert np.allclose(uv, expected, atol=1e-3), (uv, expected)


def test_orthographic_camera_is_refused():
    scene, cam_obj = scene_with_camera((64, 64), 100, (1, 1), "AUTO", 50.0, (0, 0))
    cam_obj.data.type = "ORTHO"
    with pytest.raises(ValueError, match="only perspective"):
        camera_dict(scene, cam_obj)


def test_set_camera_is_the_inverse_of_camera_dict():
    """A backend camera (e.g. the fit's) written onto a Blender camera reads back the same, with
    Blender's own projection agreeing."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(obj)
    scene.camera = obj
    set_camera = load_built_addon().blender_camera.set_camera
    rng = np.random.default_rng(3)
    for width, height in ((128, 96), (90, 160)):
        R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        R *= np.sign(np.linalg.det(R))
        K = np.array([[140.0, 0, width / 2 + 7.5], [0, 140.0, height / 2 - 4.0], [0, 0, 1]])
        cam = PinholeCamera(K, R, rng.normal(size=3), width, height)
        set_camera(scene, obj, cam.to_dict())
        bpy.context.view_layer.update()
        got = camera_dict(scene, obj)
        for k in ("K", "R", "t"):
            assert np.allclose(got[k], getattr(cam, k), atol=1e-4), k
        assert (got["width"], got["height"]) == (width, height)


def test_frame_subject_sees_the_whole_person_from_the_front(open_body):
    """The default photo camera: the person's joints (and reach) inside the image, facing it."""
    import torch

    from shared.camera import frame_subject

    pose = np.zeros(72)
    pose[0:3] = [0.0, 0.7, 0.0]                       # turned 40 degrees about the up axis
    with torch.no_grad():
        out = open_body(pose, None, np.array([1.0, 1.1, -2.0]))
    joints, verts = out.joints[0].numpy().astype(np.float64), out.vertices[0].numpy().astype(np.float64)
    cam = frame_subject(joints, 96, 160)
    uv = cam.project(verts)
    assert uv.min() > 0 and uv[:, 0].max() < 96 and uv[:, 1].max() < 160
    fill = max((uv[:, 0].max() - uv[:, 0].min()) / 96, (uv[:, 1].max() - uv[:, 1].min()) / 160)
    assert 0.75 < fill < 0.95                         # fills the frame (T-pose arms: its width), with a margin
    facing = np.array([np.sin(0.7), 0.0, np.cos(0.7)])  # where the turned body's front points
    to_camera = cam.center - joints[0]
    assert np.dot(facing, to_camera / np.linalg.norm(to_camera)) > 0.99


def test_a_fit_made_outside_blender_is_stood_upright_without_changing_a_pixel(open_body):
    """A CLI fit lives in the photo camera's world (y down); `upright` turns body and camera
    together: the camera's up becomes up, the soles land on the ground, every pixel stays put."""
    import torch

    scene_setup = load_built_addon().scene_setup
    rng = np.random.default_rng(3)
    pose = rng.uniform(-0.25, 0.25, 72)
    pose[:3] = [math.pi + 0.1, 0.2, 0.05]                 # standing on its head in a y-down world, turned
    transl = np.array([0.1, 0.3, 4.0])
    rest = open_body.rest()[1][0].numpy().astype(np.float64)
    cam = {"K": [[900.0, 0, 256], [0, 900, 320], [0, 0, 1]], "R": np.eye(3).tolist(), "t": [0.0, 0.0, 0.0],
           "width": 512, "height": 640}
    body = {"pose": pose, "transl": transl, "camera": cam, "rest_joints": rest}

    def posed(b):
        out = open_body(torch.tensor(b["pose"], dtype=torch.float32)[None], None,
                        torch.tensor(b["transl"], dtype=torch.float32)[None])
        return out.vertices[0].numpy().astype(np.float64), out.joints[0].numpy().astype(np.float64)

    verts, joints = posed(body)
    assert np.abs(scene_setup.posed_joints(pose, transl, rest) - joints).max() < 1e-4   # FK = the body model's
    up = scene_setup.upright(body)
    new_verts, _ = posed(up)
    before = PinholeCamera.from_dict(cam).project(verts)
    after = PinholeCamera.from_dict(up["camera"]).project(new_verts)
    print(f"upright: max pixel shift {np.abs(after - before).max():.4f} px, soles at {new_verts[:, 1].min() * 100:.1f} cm")
    assert np.abs(after - before).max() < 0.05
    camera_up = np.asarray(up["camera"]["R"]).T @ [0.0, -1.0, 0.0]
    assert camera_up[1] > 0.999                            # +Y in the backend's frame: +Z in Blender
    assert abs(new_verts[:, 1].min()) < 0.03               # soles on the ground
    assert np.linalg.norm(scene_setup.posed_joints(up["pose"], up["transl"], rest)[0][[0, 2]]) < 1e-9
    again = scene_setup.upright(up)                        # an upright fit is left as it is
    assert again is up
