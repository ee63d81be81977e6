"""The add-on in real bpy (background mode) against a real backend process: connect, create an
avatar from a photo with progress arriving, load it (rig), preview a frame into a bpy image,
unregister stops the connection thread. Timers never fire in background mode, so the test
calls the add-on's timer callback itself."""
import signal
import time

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")
import mathutils  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon import operators, rig  # noqa: E402
from blender_addon.blender_camera import TO_BLENDER  # noqa: E402
from shared.camera import PinholeCamera  # noqa: E402
from shared.client import ServiceClient  # noqa: E402
from tests.backend_process import ServerProcess  # noqa: E402
from tests.blender_reference import blender_camera_params  # noqa: E402


def set_scene_camera(scene, cam: PinholeCamera):
    """A Blender camera equal to `cam` (backend world = Blender world in SMPL axes)."""
    p = blender_camera_params(cam)
    data = bpy.data.cameras.new("photo_camera")
    data.lens, data.sensor_width, data.sensor_fit = p["lens"], p["sensor_width"], p["sensor_fit"]
    data.shift_x, data.shift_y = p["shift_x"], p["shift_y"]
    obj = bpy.data.objects.new("photo_camera", data)
    M = mathutils.Matrix.Identity(4)
    rot, loc = TO_BLENDER @ p["rotation"], TO_BLENDER @ p["location"]
    for i in range(3):
        for j in range(3):
            M[i][j] = float(rot[i, j])
        M[i][3] = float(loc[i])
    obj.matrix_world = M
    scene.collection.objects.link(obj)
    scene.camera = obj
    scene.render.resolution_x, scene.render.resolution_y = cam.width, cam.height
    scene.render.resolution_percentage = 100


def wait_for(condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        operators.poll_results()
        seen.append(bpy.context.scene.one_shot_avatar.status)
        if condition():
            return seen
        time.sleep(0.05)
    raise AssertionError(f"timed out; statuses seen: {sorted(set(seen))[:20]}")


def test_connect_create_load_preview(tmp_path, open_body):
    from backend.sample_subject import DISTANCE, FOCAL, frame_body, render_flat, subject_pose

    pose = subject_pose()
    betas = np.zeros(open_body.num_betas)
    transl = frame_body(open_body, pose, betas, DISTANCE)
    cam = PinholeCamera.from_focal(FOCAL / 4, 128, 128)
    rgb, mask = render_flat(open_body, pose, betas, transl, cam, np.ones((128, 128, 3)))
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")

    server = ServerProcess(tmp_path / "store", "--preview-every", "5")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    try:
        scene = bpy.context.scene
        s = scene.one_shot_avatar
        s.backend_address = server.address
        s.photo, s.mask, s.preset = str(tmp_path / "photo.png"), str(tmp_path / "mask.png"), "tiny"
        arm = rig.create_armature(bpy.context, open_body.rest()[1][0].numpy())
        rig.write_pose(arm, pose, transl)
        s.armature = arm
        set_scene_camera(scene, cam)

        assert bpy.ops.one_shot_avatar.connect() == {"FINISHED"}
        wait_for(lambda: s.status.startswith("connected"), timeout=60)
        assert "no CLIP weights" in s.status

        assert bpy.ops.one_shot_avatar.create() == {"FINISHED"}
        statuses = wait_for(lambda: s.status == "avatar ready")
        assert any(t.startswith("fit stage B") for t in statuses) and s.progress == 1.0
        assert bpy.data.images.get(operators.FIT_PREVIEW_IMAGE) is not None
        avatar = s.avatar_id
        assert avatar

        # the add-on sent the rig's pose and the scene camera; the server refined the body to the
        # photo (the default), so the fitted pose stays close to the rig's
        with ServiceClient(server.address) as c:
            loaded = c.load(avatar)
            assert np.abs(rig.rodrigues(loaded["pose"][:3]) - rig.rodrigues(pose[:3])).max() < 0.1
            assert np.abs(np.asarray(loaded["pose"][3:]) - pose[3:]).max() < 0.3
            assert np.allclose(loaded["transl"], transl, atol=0.15)
            assert np.allclose(loaded["camera"]["K"], cam.K, atol=1e-3)
            assert np.allclose(loaded["camera"]["R"], cam.R, atol=1e-5)
            direct = c.render(avatar, pose, transl, cam)

        assert bpy.ops.one_shot_avatar.preview() == {"FINISHED"}
        wait_for(lambda: bpy.data.images.get(operators.PREVIEW_IMAGE) is not None, timeout=60)
        img = bpy.data.images[operators.PREVIEW_IMAGE]
        px = np.empty(128 * 128 * 4, np.float32)
        img.pixels.foreach_get(px)
        shown = (px.reshape(128, 128, 4)[::-1] * 255).round()
        assert tuple(img.size) == (128, 128)
        assert np.abs(shown - direct).max() <= 1.0   # the frame landed in the image, right way up

        # live preview: a new pose of the rig brings a new frame by itself
        before = shown.copy()
        raised = pose.copy()
        raised[3 * 16 + 2] = 0.9                    # left shoulder up
        rig.write_pose(arm, raised, transl)
        bpy.context.view_layer.update()
        operators.on_scene_change(scene)            # what the depsgraph handler does

        def changed():
            img.pixels.foreach_get(px)
            return np.abs((px.reshape(128, 128, 4)[::-1] * 255).round() - before).max() > 50
        wait_for(changed, timeout=60)

        # animation: three keyed poses -> three PNG files
        for frame, angle in ((1, 0.0), (2, 0.5), (3, 1.0)):
            p = pose.copy()
            p[3 * 16 + 2] = angle
            rig.write_pose(arm, p, transl)
            for pb in arm.pose.bones:
                pb.keyframe_insert("rotation_quaternion", frame=frame)
                pb.keyframe_insert("location", frame=frame)
        scene.frame_start, scene.frame_end = 1, 3
        s.output_dir = str(tmp_path / "anim") + "/"
        assert bpy.ops.one_shot_avatar.render_animation() == {"FINISHED"}
        wait_for(lambda: s.status == "animation rendered", timeout=120)
        files = sorted((tmp_path / "anim").glob("frame_*.png"))
        assert [f.name for f in files] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
        a, b = (np.asarray(Image.open(f)) for f in (files[0], files[2]))
        assert a.shape == (128, 128, 4) and not np.array_equal(a, b)
        assert bpy.ops.one_shot_avatar.render_animation(preview=True) == {"FINISHED"}
        wait_for(lambda: s.status == "animation rendered" and s.progress == 1.0, timeout=120)
        assert np.asarray(Image.open(tmp_path / "anim" / "frame_0001.png")).shape == (32, 32, 4)  # quarter size

        s.armature = None                           # loading makes the avatar's own rig
        assert bpy.ops.one_shot_avatar.load() == {"FINISHED"}
        wait_for(lambda: s.armature is not None, timeout=60)
        got_pose, got_transl = rig.read_pose(s.armature)   # the new rig wears the fitted pose
        assert np.allclose(got_transl, loaded["transl"], atol=1e-4)
        assert np.abs(rig.rodrigues(got_pose[3:6]) - rig.rodrigues(np.asarray(loaded["pose"][3:6]))).max() < 1e-4

        conn = operators.connection()
    finally:
        blender_addon.unregister()
        bpy.ops.wm.read_factory_settings(use_empty=True)
        server.kill(signal.SIGTERM)
    assert not conn.thread.is_alive() and operators.connection() is None


def test_unreachable_backend_is_a_status_line_not_a_traceback():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    try:
        s = bpy.context.scene.one_shot_avatar
        s.backend_address = "tcp://127.0.0.1:9"   # nothing listens there
        bpy.ops.one_shot_avatar.connect()
        wait_for(lambda: "not reachable" in s.status, timeout=60)
        assert "retrying" in s.status
        with pytest.raises(RuntimeError, match="choose a photo"):   # the operator's error report
            bpy.ops.one_shot_avatar.create()
    finally:
        blender_addon.unregister()
        bpy.ops.wm.read_factory_settings(use_empty=True)   # leave no settings behind for other tests


def test_settings_survive_saving_and_reopening(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    try:
        s = bpy.context.scene.one_shot_avatar
        s.backend_address, s.prompt, s.preset, s.avatar_id = "tcp://gpu-box:5557", "red hoodie", "full", "abc123abc123"
        s.status = "transient"
        path = tmp_path / "scene.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
        bpy.ops.wm.read_factory_settings(use_empty=True)
        assert bpy.context.scene.one_shot_avatar.prompt == ""
        bpy.ops.wm.open_mainfile(filepath=str(path))
        s = bpy.context.scene.one_shot_avatar
        assert (s.backend_address, s.prompt, s.preset, s.avatar_id) == ("tcp://gpu-box:5557", "red hoodie", "full",
                                                                         "abc123abc123")
        assert s.status == "not connected"   # runtime state is not saved
    finally:
        blender_addon.unregister()
        bpy.ops.wm.read_factory_settings(use_empty=True)
