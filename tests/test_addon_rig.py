"""The add-on's rigs in real bpy: our SMPL rig (creation, pose write/read round trips, agreement
with the body model's posed joints), the rigs artists have (the SMPL-X add-on's bone set, SMPL FBX
imports, Mixamo rigs through a rest-pose retarget), rotation modes kept, keyed poses detected."""
import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")

from mathutils import Quaternion  # noqa: E402

from shared.smpl import FBX_JOINT_NAMES, JOINT_NAMES, MIXAMO_BONE_NAMES, PARENTS  # noqa: E402
from tests.installed_addon import load_built_addon  # noqa: E402
from tests.rig_builders import A_POSE, build_armature, mixamo_rig, smplx_joint_positions, smplx_rig  # noqa: E402

rig = load_built_addon().rig
TO_BLENDER = load_built_addon().blender_camera.TO_BLENDER
J = {name: j for j, name in enumerate(JOINT_NAMES)}
BODY = range(22)  # SMPL's joints that SMPL-X and Mixamo rigs have bones for
# SMPL bones as (joint, the joint it points at): the limbs whose directions a retarget must keep
LIMBS = {"left upper arm": (16, 18), "left forearm": (18, 20), "right upper arm": (17, 19),
         "right forearm": (19, 21), "left thigh": (1, 4), "left shin": (4, 7), "right thigh": (2, 5),
         "right shin": (5, 8)}
AIMED = [(j, k) for j, k in enumerate(rig.AIM_JOINT) if k is not None and k < 22]


@pytest.fixture
def rest_joints(open_body):
    return open_body.rest()[1][0].numpy().astype(np.float64)


def random_pose(seed, scale=0.8):
    rng = np.random.default_rng(seed)
    return rng.uniform(-scale, scale, 72), rng.uniform(-0.5, 0.5, 3)


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def world_heads_smpl(obj, names) -> np.ndarray:
    """World positions of the named pose bones' heads, in the SMPL frame (row per name)."""
    bpy.context.view_layer.update()
    M = np.array(obj.matrix_world)
    heads = np.array([M[:3, :3] @ np.array(obj.pose.bones[n].head) + M[:3, 3] for n in names])
    return heads @ TO_BLENDER  # Blender world -> SMPL frame (row vectors)


def posed_heads_smpl(obj):
    """World positions of the heads of the bones standing for SMPL joints, in the SMPL frame."""
    return world_heads_smpl(obj, [n for n in rig.bone_names(obj) if n])


def rotation_errors(got_pose, pose, joints=range(24)) -> float:
    """Largest difference between the rotation matrices of two poses' joints."""
    return max(np.abs(rig.rodrigues(got_pose[3 * j:3 * j + 3]) - rig.rodrigues(pose[3 * j:3 * j + 3])).max()
               for j in joints)


def angle(a, b) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.arctan2(np.linalg.norm(np.cross(a, b)), a @ b))


# -- our rig ----------------------------------------------------------------------------------

def test_rig_has_the_smpl_bones_and_hierarchy(rest_joints):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    assert rig.rig_kind(obj) == "smpl"
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
    bent[3 * J["left_elbow"] + 1] = -math.pi / 2
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
    assert rotation_errors(got_pose, pose) < 1e-5
    assert np.allclose(got_transl, transl, atol=1e-5)


# -- rotation modes ---------------------------------------------------------------------------

MODES = ("XYZ", "ZXY", "AXIS_ANGLE", "QUATERNION", "YZX")


def test_writing_keeps_each_bones_rotation_mode(rest_joints):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    for j, pb in enumerate(obj.pose.bones):
        pb.rotation_mode = MODES[j % len(MODES)]
    pose, transl = random_pose(7)
    rig.write_pose(obj, pose, transl)
    for j, pb in enumerate(obj.pose.bones):
        mode = MODES[j % len(MODES)]
        assert pb.rotation_mode == mode
        turned = {"QUATERNION": 1.0 - abs(pb.rotation_quaternion[0]), "AXIS_ANGLE": abs(pb.rotation_axis_angle[0])
                  }.get(mode, max(map(abs, pb.rotation_euler)))
        assert turned > 1e-3, pb.name         # the rotation went into the bone's own channel ...
        if mode != "QUATERNION":              # ... and nowhere else
            assert tuple(pb.rotation_quaternion) == (1.0, 0.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    got_pose, got_transl = rig.read_pose(obj)
    assert rotation_errors(got_pose, pose) < 1e-5
    assert np.allclose(got_transl, transl, atol=1e-5)


def test_writing_continues_the_bones_previous_rotation_values(rest_joints):
    """Euler angles stay on the same 2*pi turn and quaternions on the same sign as the bone's last
    value, so keys written pose after pose interpolate without spins."""
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    euler_bone, quat_bone = obj.pose.bones["left_knee"], obj.pose.bones["left_elbow"]
    euler_bone.rotation_mode = "ZXY"
    pose, transl = random_pose(3)
    rig.write_pose(obj, pose, transl)
    shifted = np.array(euler_bone.rotation_euler) + np.array([2 * math.pi, 0.0, -2 * math.pi])
    euler_bone.rotation_euler = shifted.tolist()
    flipped = -np.array(quat_bone.rotation_quaternion)
    quat_bone.rotation_quaternion = flipped.tolist()
    rig.write_pose(obj, pose, transl)
    assert np.abs(np.array(euler_bone.rotation_euler) - shifted).max() < 1e-4
    assert np.abs(np.array(quat_bone.rotation_quaternion) - flipped).max() < 1e-5


# -- the SMPL-X add-on's rigs -----------------------------------------------------------------

@pytest.mark.parametrize("style", ["addon", "rolled"])
def test_smplx_addon_rig_round_trip_and_agrees_with_the_body(open_body, rest_joints, style):
    fresh()
    obj = smplx_rig(rest_joints, style)
    assert rig.rig_kind(obj) == "smplx"
    assert rig.bone_names(obj) == list(JOINT_NAMES[:22]) + [None, None]
    pose, transl = random_pose(5)
    rig.write_pose(obj, pose, transl)
    bpy.context.view_layer.update()
    got_pose, got_transl = rig.read_pose(obj)
    assert rotation_errors(got_pose, pose, BODY) < 1e-5
    assert np.all(got_pose[66:] == 0.0)          # no hand joints: read as no rotation
    assert np.allclose(got_transl, transl, atol=1e-5)
    body = open_body(pose, None, transl).joints[0].numpy()
    assert np.abs(posed_heads_smpl(obj) - body[:22]).max() < 1e-4
    # fingers ride on the wrist: the hand moves rigidly with it
    wrist, finger = world_heads_smpl(obj, ["left_wrist", "left_middle3"])
    rest = smplx_joint_positions(rest_joints)
    wrist_rotation = np.eye(3)
    for j in (0, 3, 6, 9, 13, 16, 18, 20):   # pelvis ... left_wrist: SMPL's chain to the wrist
        wrist_rotation = wrist_rotation @ rig.rodrigues(pose[3 * j:3 * j + 3])
    assert np.abs((finger - wrist) - wrist_rotation @ (rest["left_middle3"] - rest["left_wrist"])).max() < 1e-5
    if style == "addon":   # our local rotations are exactly what the SMPL-X add-on writes
        for j in range(1, 22):
            q = Quaternion(pose[3 * j:3 * j + 3].tolist(), float(np.linalg.norm(pose[3 * j:3 * j + 3])))
            got = obj.pose.bones[JOINT_NAMES[j]].rotation_quaternion
            assert abs(abs(q.dot(got)) - 1.0) < 1e-6, JOINT_NAMES[j]


def test_smplx_rig_with_a_posed_root_bone(open_body, rest_joints):
    """The add-on turns `root` for AMASS animations; the pelvis is written under it, in world."""
    fresh()
    obj = smplx_rig(rest_joints, "rolled")
    root = obj.pose.bones["root"]
    root.rotation_quaternion = Quaternion((1.0, 0.0, 0.0), -math.pi / 2)
    root.location = (0.1, 0.2, -0.1)
    pose, transl = random_pose(6)
    rig.write_pose(obj, pose, transl)
    assert np.abs(posed_heads_smpl(obj) - open_body(pose, None, transl).joints[0].numpy()[:22]).max() < 1e-4
    got_pose, got_transl = rig.read_pose(obj)
    assert rotation_errors(got_pose, pose, BODY) < 1e-5
    assert np.allclose(got_transl, transl, atol=1e-5)


def test_smpl_fbx_import_y_up_in_centimetres(open_body, rest_joints):
    """An SMPL FBX rig as Blender's FBX importer leaves it: `m_avg_*` bones in a Y-up armature in
    centimetres, the object turned 90 degrees about X and scaled 0.01."""
    fresh()
    rows = []
    for j, name in enumerate(FBX_JOINT_NAMES):
        head = 100.0 * rest_joints[j]            # SMPL's frame is Y up, like the FBX armature
        rows.append((name, head, head + [3.0, 4.0, 1.0], 0.2 * j,
                     FBX_JOINT_NAMES[PARENTS[j]] if PARENTS[j] >= 0 else None))
    obj = build_armature("SMPL-fbx", rows, rotation=(math.pi / 2, 0.0, 0.0), scale=0.01, location=(0.2, 0.5, 0.0))
    assert rig.rig_kind(obj) == "fbx"
    rest_pose, rest_transl = rig.read_pose(obj)          # standing there in its rest pose: no rotation
    assert np.abs(rest_pose).max() < 1e-5
    assert np.allclose(rest_transl, TO_BLENDER.T @ np.array(obj.location), atol=1e-5)
    pose, transl = random_pose(8)
    rig.write_pose(obj, pose, transl)
    assert np.abs(posed_heads_smpl(obj) - open_body(pose, None, transl).joints[0].numpy()).max() < 1e-4
    got_pose, got_transl = rig.read_pose(obj)
    assert rotation_errors(got_pose, pose) < 1e-5
    assert np.allclose(got_transl, transl, atol=1e-5)


# -- Mixamo rigs ------------------------------------------------------------------------------

def mixamo_heads_smpl(obj, prefix="mixamorig:") -> np.ndarray:
    """World heads of the bones mapped to SMPL's 22 body joints, in the SMPL frame."""
    return world_heads_smpl(obj, [prefix + n for n in MIXAMO_BONE_NAMES[:22]])


@pytest.mark.parametrize("prefix", ["mixamorig:", "mixamorig1:", ""])
def test_mixamo_rig_is_recognised_with_any_prefix(rest_joints, prefix):
    fresh()
    obj = mixamo_rig(rest_joints, prefix)
    assert rig.rig_kind(obj) == "mixamo"
    assert rig.bone_names(obj) == [prefix + n if n else None for n in MIXAMO_BONE_NAMES]


@pytest.mark.parametrize("given", [True, False], ids=["avatar-rest-joints", "default-rest-joints"])
def test_mixamo_rest_pose_reads_as_its_a_pose(open_body, rest_joints, given):
    """A Mixamo rig standing in its rest pose reads as the SMPL pose that points the body's limbs
    where the rig's point: its A-pose arms come out 45 degrees down."""
    fresh()
    obj = mixamo_rig(rest_joints)
    pose, transl = rig.read_pose(obj, rest_joints=rest_joints if given else None)
    body = open_body(pose, None, transl).joints[0].numpy()
    heads = mixamo_heads_smpl(obj)
    worst = max(angle(body[k] - body[j], heads[k] - heads[j]) for j, k in AIMED)
    assert worst < (1e-4 if given else 2e-3), worst
    for side in ("left", "right"):
        arm = body[J[f"{side}_elbow"]] - body[J[f"{side}_shoulder"]]
        below_horizontal = math.asin(-arm[1] / np.linalg.norm(arm))
        assert abs(below_horizontal - A_POSE) < 1e-3
    # the body's pelvis stands where the rig's hips are
    assert np.abs(body[0] - heads[0]).max() < (1e-5 if given else 1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixamo_round_trip(rest_joints, seed):
    fresh()
    obj = mixamo_rig(rest_joints, seed=seed)
    pose, transl = random_pose(20 + seed)
    rig.write_pose(obj, pose, transl)
    bpy.context.view_layer.update()
    got_pose, got_transl = rig.read_pose(obj)
    assert rotation_errors(got_pose, pose, BODY) < 1e-4
    assert np.all(got_pose[66:] == 0.0)          # SMPL's hand joints have no Mixamo bone
    assert np.allclose(got_transl, transl, atol=1e-4)
    for i, pb in enumerate(obj.pose.bones):      # written in the bones' own rotation modes
        assert pb.rotation_mode == ("QUATERNION", "XYZ")[i % 2]


@pytest.mark.parametrize("seed", [3, 4])
def test_mixamo_and_smpl_rigs_point_limbs_alike(rest_joints, seed):
    """The same pose written to a Mixamo rig and to our SMPL rig puts upper arms, forearms, thighs
    and shins along the same world directions, and the hips where our pelvis is."""
    fresh()
    ours = rig.create_armature(bpy.context, rest_joints)
    mixamo = mixamo_rig(rest_joints, seed=seed)
    pose, transl = random_pose(seed)
    rig.write_pose(ours, pose, transl)
    rig.write_pose(mixamo, pose, transl, rest_joints=rest_joints)
    a, b = posed_heads_smpl(ours), mixamo_heads_smpl(mixamo)
    for limb, (j, k) in LIMBS.items():
        assert angle(a[k] - a[j], b[k] - b[j]) < 1e-3, limb
    assert np.abs(a[0] - b[0]).max() < 1e-4


# -- recognising rigs, keyed poses ------------------------------------------------------------

def test_rig_kinds_and_the_message_for_other_armatures(rest_joints):
    fresh()
    assert rig.rig_kind(rig.create_armature(bpy.context, rest_joints)) == "smpl"
    other = build_armature("Rigify", [("spine", (0, 0, 1), (0, 0, 1.2), 0.0, None),
                                      ("thigh.L", (0.1, 0, 1), (0.1, 0, 0.5), 0.0, "spine")])
    with pytest.raises(KeyError) as caught:
        rig.rig_kind(other)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)   # what the operators report as is
    assert "\n" not in message and not message.startswith("'")
    for expected in ("Rigify", "pelvis", "m_avg_Pelvis", "mixamorig:Hips"):
        assert expected in message
    with pytest.raises(KeyError, match="not an SMPL, SMPL-X or Mixamo rig"):
        rig.read_pose(other)
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    with pytest.raises(KeyError, match="not an armature"):
        rig.write_pose(mesh, np.zeros(72), np.zeros(3))


def test_has_keyed_pose(rest_joints):
    fresh()
    obj = rig.create_armature(bpy.context, rest_joints)
    assert not rig.has_keyed_pose(obj)
    obj.keyframe_insert("location", frame=1)          # the object moves: its pose is free
    assert not rig.has_keyed_pose(obj)
    obj.pose.bones["left_elbow"].keyframe_insert("rotation_quaternion", frame=1)
    assert rig.has_keyed_pose(obj)
    action = obj.animation_data.action
    obj.animation_data.action = None
    assert not rig.has_keyed_pose(obj)
    track = obj.animation_data.nla_tracks.new()       # the action pushed down to the NLA
    track.strips.new("walk", 1, action)
    assert rig.has_keyed_pose(obj)
    fresh()
    mixamo = mixamo_rig(rest_joints)
    mixamo.pose.bones["mixamorig:Hips"].keyframe_insert("location", frame=3)
    assert rig.has_keyed_pose(mixamo)
