"""Load SMPL motion: .npz pose sequences (ours and AMASS's) keyed onto rigs in real bpy (the add-on
from its built zip): the keyed animation plays back the file's poses on our rig and on a Mixamo
rig, AMASS files are resampled to the scene's frame rate and stood up from their Z-up world, bad
files are one-line errors that leave no keyframes, and the panel's operator does the same."""
import importlib
import math
import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")

from shared.body_defaults import OPEN_BODY_REST_JOINTS  # noqa: E402
from shared.rotations import rodrigues  # noqa: E402
from tests.installed_addon import PACKAGE, load_built_addon  # noqa: E402
from tests.rig_builders import mixamo_rig  # noqa: E402

REST = np.array(OPEN_BODY_REST_JOINTS, dtype=np.float64)
TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
BODY = range(22)
TOL = 1e-4            # our rig: pose and translation read back from the keyed animation
MIXAMO_TOL = 1e-4     # what tests/test_addon_rig.py allows a Mixamo round trip


def addon():
    module = load_built_addon()
    return module, module.rig, importlib.import_module(f"{PACKAGE}.motion")


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def plausible_motion(n, seed=0):
    """Small random joint rotations, a body turning about its up axis (SMPL's Y) and walking."""
    rng = np.random.default_rng(seed)
    poses = rng.normal(0.0, 0.2, (n, 72))
    poses[:, :3] = np.stack([0.1 * np.sin(np.arange(n)), 0.4 * np.arange(n), np.zeros(n)], axis=1)
    transl = np.cumsum(rng.normal(0.0, 0.05, (n, 3)), axis=0) + [0.0, 0.1, 0.0]
    return poses, transl


def rotation_error(got, want, joints=range(24)) -> float:
    """Largest difference between two poses' joint rotation matrices (no axis-angle ambiguity)."""
    return max(np.abs(rodrigues(got[3 * j:3 * j + 3]) - rodrigues(want[3 * j:3 * j + 3])).max() for j in joints)


def keyed_frames(obj) -> set:
    rig = addon()[1]
    anim = obj.animation_data
    if anim is None:
        return set()
    return {round(k.co[0]) for fc in rig._action_fcurves(anim) for k in fc.keyframe_points}


def read_back(obj, frame, rest_joints=None):
    rig = addon()[1]
    bpy.context.scene.frame_set(frame)
    return rig.read_pose(obj, bpy.context.evaluated_depsgraph_get(), rest_joints=rest_joints)


# -- our files ----------------------------------------------------------------------------------

def test_smpl_file_keys_our_rig_and_plays_back(tmp_path):
    _, rig, motion = addon()
    fresh()
    poses, transl = plausible_motion(10)
    path = tmp_path / "walk.npz"
    np.savez(path, poses=poses, transl=transl)
    m = motion.read_motion(path)
    assert m.poses.shape == (10, 72) and m.transl.shape == (10, 3) and m.fps is None and not m.z_up
    obj = rig.create_armature(bpy.context, REST, name="avatar_rig")
    modes = ("QUATERNION", "XYZ", "AXIS_ANGLE", "ZXY")
    for i, pb in enumerate(obj.pose.bones):      # each bone keyed in its own rotation mode
        pb.rotation_mode = modes[i % len(modes)]
    scene = bpy.context.scene
    scene.frame_end = 8
    first, last, note = motion.apply_motion(bpy.context, obj, m, 5)
    assert (first, last) == (5, 14) and scene.frame_end == 14 and "end frame set to 14" in note
    assert keyed_frames(obj) == set(range(5, 15))
    paths = {fc.data_path for fc in rig._action_fcurves(obj.animation_data)}
    for i, pb in enumerate(obj.pose.bones):
        prop = {"QUATERNION": "rotation_quaternion", "AXIS_ANGLE": "rotation_axis_angle"}.get(
            pb.rotation_mode, "rotation_euler")
        assert pb.rotation_mode == modes[i % len(modes)] and f'pose.bones["{pb.name}"].{prop}' in paths
    assert sum(p.endswith(".location") for p in paths) == 1      # only the pelvis moves
    worst_rot = worst_transl = 0.0
    for i in (0, 1, 4, 7, 9):
        got_pose, got_transl = read_back(obj, 5 + i)
        worst_rot = max(worst_rot, rotation_error(got_pose, poses[i]))
        worst_transl = max(worst_transl, np.abs(got_transl - transl[i]).max())
    print(f"our rig, 10 keyed frames: max rotation-matrix error {worst_rot:.2e}, translation {worst_transl:.2e} m")
    assert worst_rot < TOL and worst_transl < TOL
    # a second load over part of the range replaces those keys and keeps the rest
    motion.apply_motion(bpy.context, obj, motion.Motion(poses[::-1].copy(), transl[::-1].copy(), None), 10)
    assert keyed_frames(obj) == set(range(5, 20)) and scene.frame_end == 19
    assert rotation_error(read_back(obj, 10)[0], poses[9]) < TOL
    assert rotation_error(read_back(obj, 6)[0], poses[1]) < TOL


def test_every_nth_frame_and_a_motion_without_translation(tmp_path):
    _, rig, motion = addon()
    fresh()
    poses, _ = plausible_motion(7, seed=1)
    np.savez(tmp_path / "still.npz", pose=poses)
    m = motion.read_motion(tmp_path / "still.npz")
    assert m.transl is None
    obj = rig.create_armature(bpy.context, REST)
    assert motion.apply_motion(bpy.context, obj, m, 1, every=3)[:2] == (1, 7)
    assert keyed_frames(obj) == {1, 4, 7}                   # every third, and the last
    got_pose, got_transl = read_back(obj, 4)
    assert rotation_error(got_pose, poses[3]) < TOL and np.abs(got_transl).max() < TOL


def test_a_thousand_frames_key_in_seconds(tmp_path):
    _, rig, motion = addon()
    fresh()
    poses, transl = plausible_motion(1000, seed=2)
    obj = rig.create_armature(bpy.context, REST)
    start = time.perf_counter()
    first, last, _ = motion.apply_motion(bpy.context, obj, motion.Motion(poses, transl, None), 1)
    elapsed = time.perf_counter() - start
    print(f"keyed 1000 frames on our rig in {elapsed:.2f} s")
    assert (first, last) == (1, 1000) and bpy.context.scene.frame_end == 1000
    assert all(len(fc.keyframe_points) == 1000 for fc in rig._action_fcurves(obj.animation_data))
    for i in (0, 499, 999):
        got_pose, got_transl = read_back(obj, 1 + i)
        assert rotation_error(got_pose, poses[i]) < TOL and np.abs(got_transl - transl[i]).max() < TOL


# -- AMASS files --------------------------------------------------------------------------------

def test_amass_file_is_resampled_and_stands_up(tmp_path):
    _, rig, motion = addon()
    fresh()
    n = 10
    body, trans = plausible_motion(n, seed=3)
    poses = np.random.default_rng(4).normal(0.0, 0.3, (n, 156))    # hands: ignored
    poses[:, 3:66] = body[:, 3:66]
    # AMASS's world is Z up: a standing body is SMPL's turned +90 degrees about X, then about Z
    upright = [rodrigues([0.0, 0.0, 0.3 * i]) @ rodrigues([math.pi / 2, 0.0, 0.0]) for i in range(n)]
    poses[:, :3] = [rodrigues_log(R) for R in upright]
    trans[:, 2] += 0.9
    path = tmp_path / "amass_walk_poses.npz"
    np.savez(path, poses=poses, trans=trans, mocap_framerate=np.array(60.0), betas=np.zeros(16),
             gender=np.array("neutral"))
    m = motion.read_motion(path)
    assert m.z_up and m.fps == 60.0 and m.source == "AMASS" and np.all(m.poses[:, 66:] == 0)
    obj = rig.create_armature(bpy.context, REST)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0
    first, last, note = motion.apply_motion(bpy.context, obj, m, 1)
    assert (first, last) == (1, 5) and keyed_frames(obj) == set(range(1, 6))   # 60 fps -> 30: half the frames
    assert "60 to the scene's 30 fps" in note and "Z-up" in note
    rest_pelvis = rig.rig_map(obj).rest_pelvis
    worst = 0.0
    for k in range(5):
        i = 2 * k                                            # the file's frame shown at scene frame 1 + k
        got_pose, got_transl = read_back(obj, 1 + k)
        worst = max(worst, rotation_error(got_pose, m.poses[i], range(1, 24)))
        assert np.all(np.abs(got_pose[66:]) < 1e-6)         # SMPL's hand joints: no rotation
        # global orient: AMASS's Z-up world is Blender's, so the pelvis turns as in the capture
        G0 = TO_BLENDER @ rodrigues(got_pose[:3])
        assert np.abs(G0 - upright[i]).max() < TOL
        # the pelvis stands where AMASS puts it: J_0 + trans, in Blender's (= AMASS's) world
        bpy.context.view_layer.update()
        head = np.array(obj.matrix_world) @ np.append(np.array(obj.pose.bones["pelvis"].head), 1.0)
        assert np.abs(head[:3] - (rest_pelvis + trans[i])).max() < TOL
        assert np.allclose(got_transl, TO_BLENDER.T @ (rest_pelvis + trans[i]) - rest_pelvis, atol=TOL)
        # and it stands: the head above the pelvis, the feet below it
        heads = {b: (np.array(obj.matrix_world) @ np.append(np.array(obj.pose.bones[b].head), 1.0))[2]
                 for b in ("head", "pelvis", "left_ankle")}
        assert heads["head"] > heads["pelvis"] + 0.3 > heads["left_ankle"] + 0.6
    print(f"AMASS file on our rig: max body rotation-matrix error {worst:.2e}")
    assert worst < TOL


def rodrigues_log(R) -> np.ndarray:
    angle = math.acos(max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0)))
    if angle < 1e-9:
        return np.zeros(3)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * math.sin(angle))
    return w * angle


# -- other rigs ---------------------------------------------------------------------------------

def test_motion_on_a_mixamo_rig(tmp_path):
    _, rig, motion = addon()
    fresh()
    poses, transl = plausible_motion(6, seed=5)
    poses[:, 66:] = 0.0               # a Mixamo rig has no bones for SMPL's hand joints
    np.savez(tmp_path / "walk.npz", poses=poses, transl=transl)
    obj = mixamo_rig(REST)
    modes = [pb.rotation_mode for pb in obj.pose.bones]
    first, last, _ = motion.apply_motion(bpy.context, obj, motion.read_motion(tmp_path / "walk.npz"), 3)
    assert (first, last) == (3, 8) and keyed_frames(obj) == set(range(3, 9))
    assert [pb.rotation_mode for pb in obj.pose.bones] == modes
    worst_rot = worst_transl = 0.0
    for i in range(6):
        got_pose, got_transl = read_back(obj, 3 + i)
        worst_rot = max(worst_rot, rotation_error(got_pose, poses[i], BODY))
        worst_transl = max(worst_transl, np.abs(got_transl - transl[i]).max())
    print(f"Mixamo rig: max rotation-matrix error {worst_rot:.2e}, translation {worst_transl:.2e} m")
    assert worst_rot < MIXAMO_TOL and worst_transl < MIXAMO_TOL


# -- bad files ----------------------------------------------------------------------------------

def bad_files(tmp_path) -> list:
    good = np.zeros((4, 72))
    (tmp_path / "notes.npz").write_text("not a zip file\n")
    np.save(tmp_path / "single.npy", good)
    np.savez(tmp_path / "cut.npz", poses=good)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:200])
    np.savez(tmp_path / "nopose.npz", transl=np.zeros((4, 3)), betas=np.zeros(10))
    np.savez(tmp_path / "wide50.npz", poses=np.zeros((4, 50)))
    nan = good.copy()
    nan[2, 7] = np.nan
    np.savez(tmp_path / "nan.npz", poses=nan)
    np.savez(tmp_path / "infmove.npz", poses=good, transl=np.full((4, 3), np.inf))
    np.savez(tmp_path / "empty.npz", poses=np.zeros((0, 72)))
    np.savez(tmp_path / "shortmove.npz", poses=good, transl=np.zeros((3, 3)))
    np.savez(tmp_path / "pickled.npz", poses=np.array([[0.0] * 72] * 2, dtype=object))
    np.savez(tmp_path / "text.npz", poses=np.array(["walk"]))
    np.savez(tmp_path / "badfps.npz", poses=good, fps=np.array(0.0))
    np.savez_compressed(tmp_path / "huge.npz", poses=np.zeros((100_001, 72), dtype=np.float32))
    return [(tmp_path / "missing.npz", "no such file"),
            (tmp_path / "notes.npz", r"is not an .npz file \(not a zip archive"),
            (tmp_path / "single.npy", "not an .npz archive"),
            (tmp_path / "cut.npz", "is not an .npz file|could not read 'poses'"),
            (tmp_path / "nopose.npz", r"no 'poses' array \(found transl, betas\)"),
            (tmp_path / "wide50.npz", r"must be \(N, 72\).*got shape \(4, 50\)"),
            (tmp_path / "nan.npz", "NaN or Inf"),
            (tmp_path / "infmove.npz", "'transl' contains NaN or Inf"),
            (tmp_path / "empty.npz", "no frames"),
            (tmp_path / "shortmove.npz", r"'transl' must be \(N, 3\) for N=4"),
            (tmp_path / "pickled.npz", "pickle"),
            (tmp_path / "text.npz", "must hold numbers"),
            (tmp_path / "badfps.npz", "frame rate"),
            (tmp_path / "huge.npz", "100001 frames; at most 100000")]


def test_bad_files_are_one_line_errors_and_key_nothing(tmp_path):
    _, rig, motion = addon()
    fresh()
    obj = rig.create_armature(bpy.context, REST)
    for path, message in bad_files(tmp_path):
        with pytest.raises(ValueError, match=message) as caught:
            motion.read_motion(path)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)
        print(f"{path.name}: {caught.value}")
    assert obj.animation_data is None
    # what apply_motion refuses, it refuses before the first keyframe
    good = motion.Motion(np.zeros((4, 72)), None, None)
    refused = [(obj, motion.Motion(np.zeros((4, 69)), None, None), 1, "must be \\(N, 72\\)"),
               (obj, motion.Motion(np.zeros((4, 72)), np.zeros((4, 2)), None), 1, "transl must be"),
               (obj, motion.Motion(np.full((4, 72), np.nan), None, None), 1, "NaN"),
               (obj, good, 1_048_572, "outside Blender's frame range")]
    other = bpy.data.objects.new("Rigify", bpy.data.armatures.new("Rigify"))
    bpy.context.scene.collection.objects.link(other)
    refused.append((other, good, 1, "not an SMPL, SMPL-X or Mixamo rig"))
    for target, m, start, message in refused:
        with pytest.raises(ValueError, match=message):
            motion.apply_motion(bpy.context, target, m, start)
        assert target.animation_data is None
    frame_end = bpy.context.scene.frame_end
    driver = obj.pose.bones["left_knee"].driver_add("rotation_quaternion", 1)
    driver.driver.expression = "0.1"
    with pytest.raises(ValueError, match="'left_knee' has a driver"):
        motion.apply_motion(bpy.context, obj, good, 1)
    assert obj.animation_data.action is None and bpy.context.scene.frame_end == frame_end


# -- the operator -------------------------------------------------------------------------------

def test_the_operator_keys_the_panels_rig_and_reports_errors(tmp_path):
    module, rig, _ = addon()
    poses, transl = plausible_motion(10, seed=6)
    np.savez(tmp_path / "walk.npz", poses=poses, transl=transl)
    np.savez(tmp_path / "nopose.npz", transl=transl)
    fresh()
    module.register()
    try:
        s = bpy.context.scene.one_shot_avatar
        assert not bpy.ops.one_shot_avatar.load_motion.poll()       # no rig chosen
        s.armature = rig.create_armature(bpy.context, REST, name="avatar_rig")
        assert bpy.ops.one_shot_avatar.load_motion.poll()
        walk = str(tmp_path / "walk.npz")
        assert bpy.ops.one_shot_avatar.load_motion(filepath=walk, start_frame=1) == {"FINISHED"}
        assert s.status == "keyed 10 frames (1–10) of walk.npz on 'avatar_rig'", s.status
        assert keyed_frames(s.armature) == set(range(1, 11))
        got_pose, got_transl = read_back(s.armature, 4)
        assert rotation_error(got_pose, poses[3]) < TOL and np.abs(got_transl - transl[3]).max() < TOL
        # a bad file: one ERROR line (bpy.ops raises it), the status says why, no keyframes
        s.armature = other = rig.create_armature(bpy.context, REST, name="other_rig")
        with pytest.raises(RuntimeError, match=r"no 'poses' array \(found transl\)"):
            bpy.ops.one_shot_avatar.load_motion(filepath=str(tmp_path / "nopose.npz"), start_frame=1)
        assert s.status.startswith("could not load the motion: ") and "nopose.npz" in s.status
        assert other.animation_data is None
        with pytest.raises(RuntimeError, match="no such file"):
            bpy.ops.one_shot_avatar.load_motion(filepath=str(tmp_path / "missing.npz"), start_frame=1)
        assert other.animation_data is None
    finally:
        module.unregister()
        fresh()
