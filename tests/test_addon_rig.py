"""The add-on's SMPL rig in real bpy: creation, pose write/read round trips (ours, the SMPL-X
add-on's naming with a root bone and other bone rolls, FBX names), and agreement with the
body model's own posed joints."""
import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")

from blender_addon import rig  # noqa: E402
from blender_addon.blender_camera import TO_BLENDER  # noqa: E402
from shared.smpl import FBX_JOINT_NAMES, JOINT_NAMES, PARENTS  # noqa: E402


@pytest.fixture
def rest_joints(open_body):
    return open_body.rest()[1][0].numpy().astype(np.float64)


def random_pose(seed, scale=0.8):
    rng = np.random.default_rng(seed)
    return rng.uniform(-scale, scale, 72), rng.uniform(-0.5, 0.5, 3)


def posed_heads_smpl(obj):
    """World positions of the 24 bone heads, in the SMPL frame."""
    bpy.context.view_layer.update()
    names = rig.bone_names(obj)
    M = np.array(obj.matrix_world)
    heads = np.array([M[:3, :3] @ np.array(obj.pose.bones[n].head) + M[:3, 3] for n in names])
    return heads @ TO_BLENDER  # Blender world -> SMPL frame (row vectors)


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_rig_has_the_smpl_bones_and_hierarchy(rest_joints):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    assert rig.bone_names(obj) == list(JOINT_NAMES)
    for j, name in enumerate(JOINT_NAMES):
        bone = obj.data.bones[name]
        assert (bone.parent.name if bone.parent else None) == (JOINT_NAMES[PARENTS[j]] if PARENTS[j] >= 0 else None)
    # Blender is Z-up: the head bone is above the pelvis, the body's left (SMPL +x) stays +x
    assert obj.data.bones["head"].head_local.z > obj.data.bones["pelvis"].head_local.z + 0.4
    assert obj.data.bones["left_shoulder"].head_local.x > 0 > obj.data.bones["right_shoulder"].head_local.x


def test_written_pose_matches_the_body_models_joints(open_body, rest_joints):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    pose, transl = random_pose(1)
    rig.write_pose(obj, pose, transl)
    expected = open_body(pose, None, transl).joints[0].numpy()
    assert np.abs(posed_heads_smpl(obj) - expected).max() < 1e-4
    # the classic check: a 90 degree flex of the left elbow bends the left forearm forward/inward
    bent = np.zeros(72)
    bent[3 * JOINT_NAMES.index("left_elbow") + 1] = -math.pi / 2
    rig.write_pose(obj, bent, np.zeros(3))
    assert np.abs(posed_heads_smpl(obj) - open_body(bent).joints[0].numpy()).max() < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_round_trip(rest_joints, seed):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    obj.location = (0.3, -1.0, 0.2)
    obj.rotation_euler = (0.1, 0.0, 0.7)   # the object's transform is part of the pose
    bpy.context.view_layer.update()
    pose, transl = random_pose(seed)
    rig.write_pose(obj, pose, transl)
    bpy.context.view_layer.update()
    got_pose, got_transl = rig.read_pose(obj)
    assert np.allclose(rig.rodrigues(got_pose[:3]), rig.rodrigues(pose[:3]), atol=1e-5)
    for j in range(24):
        assert np.allclose(rig.rodrigues(got_pose[3 * j:3 * j + 3]), rig.rodrigues(pose[3 * j:3 * j + 3]),
                           atol=1e-5), JOINT_NAMES[j]
    assert np.allclose(got_transl, transl, atol=1e-5)


def smplx_addon_style_rig(rest_joints, names=JOINT_NAMES):
    """Built like the SMPL-X Blender add-on: a `root` bone above `pelvis`, bones pointing along
    other axes with non-zero rolls."""
    obj = bpy.data.objects.new("smplx", bpy.data.armatures.new("smplx"))
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    eb = obj.data.edit_bones
    root = eb.new("root")
    root.head, root.tail = (0, 0, 0), (0, 0, 0.1)
    joints = rest_joints @ TO_BLENDER.T
    made = {}
    for j, name in enumerate(names):
        b = eb.new(name)
        b.head = joints[j].tolist()
        b.tail = (joints[j] + np.array([0.0, 0.05, 0.02])).tolist()
        b.roll = 0.3 * j
        b.parent = made[PARENTS[j]] if PARENTS[j] >= 0 else root
        made[j] = b
    bpy.ops.object.mode_set(mode="OBJECT")
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


@pytest.mark.parametrize("names", [JOINT_NAMES, FBX_JOINT_NAMES], ids=["smplx-addon", "fbx"])
def test_other_rigs_round_trip_and_agree_with_the_body(open_body, rest_joints, names):
    fresh()
    obj = smplx_addon_style_rig(rest_joints, names)
    pose, transl = random_pose(5)
    rig.write_pose(obj, pose, transl)
    bpy.context.view_layer.update()
    got_pose, got_transl = rig.read_pose(obj)
    for j in range(24):
        assert np.allclose(rig.rodrigues(got_pose[3 * j:3 * j + 3]), rig.rodrigues(pose[3 * j:3 * j + 3]), atol=1e-5)
    assert np.allclose(got_transl, transl, atol=1e-5)
    assert np.abs(posed_heads_smpl(obj) - open_body(pose, None, transl).joints[0].numpy()).max() < 1e-4


def test_not_an_smpl_rig():
    fresh()
    obj = bpy.data.objects.new("x", bpy.data.armatures.new("x"))
    with pytest.raises(KeyError, match="not an SMPL rig"):
        rig.bone_names(obj)
