"""Armatures as other tools make them, for tests: the SMPL-X Blender add-on's bone set and a
Mixamo rig as the FBX importer leaves it (Y-up centimetres, A-pose arms, arbitrary bone axes).
Used in the pytest process (tests/test_addon_rig.py) and to write the rigs into a .blend that the
installed add-on's session opens (tests/test_addon_installed.py)."""
import math

import bpy
import numpy as np

from shared.rotations import rodrigues
from shared.smpl import JOINT_NAMES, MIXAMO_BONE_NAMES, PARENTS, SMPLX_JOINT_NAMES

# SMPL/backend frame -> Blender world (blender_addon/blender_camera.TO_BLENDER)
TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
J = {name: j for j, name in enumerate(JOINT_NAMES)}


def build_armature(name, bones, rotation=(0.0, 0.0, 0.0), scale=1.0, location=(0.0, 0.0, 0.0)):
    """An armature from (name, head, tail, roll, parent name) rows, with an object transform."""
    obj = bpy.data.objects.new(name, bpy.data.armatures.new(name))
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    made = {}
    for bone_name, head, tail, roll, parent in bones:
        b = obj.data.edit_bones.new(bone_name)
        b.head, b.tail, b.roll = list(map(float, head)), list(map(float, tail)), float(roll)
        if parent is not None:
            b.parent = made[parent]
        made[bone_name] = b
    bpy.ops.object.mode_set(mode="OBJECT")
    obj.rotation_euler, obj.scale, obj.location = rotation, (scale,) * 3, location
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    bpy.context.view_layer.update()
    return obj


def smplx_joint_positions(rest_joints) -> dict:
    """SMPL-X's 55 joints (SMPL frame, metres): SMPL's 22 body joints, the jaw and eyes in front of
    the head, five three-joint fingers beyond each wrist along the hand."""
    pos = {n: rest_joints[j] for j, n in enumerate(JOINT_NAMES[:22])}
    head = rest_joints[J["head"]]
    pos["jaw"] = head + [0.0, -0.03, 0.05]
    pos["left_eye_smplhf"], pos["right_eye_smplhf"] = head + [0.03, 0.05, 0.08], head + [-0.03, 0.05, 0.08]
    for side, wrist, hand in (("left", 20, 22), ("right", 21, 23)):
        along = (rest_joints[hand] - rest_joints[wrist]) / np.linalg.norm(rest_joints[hand] - rest_joints[wrist])
        for finger, front in (("index", 0.03), ("middle", 0.01), ("ring", -0.01), ("pinky", -0.03), ("thumb", 0.05)):
            start = rest_joints[wrist] + along * (0.04 if finger == "thumb" else 0.09) + [0.0, 0.0, front]
            for k in (1, 2, 3):
                pos[f"{side}_{finger}{k}"] = start + along * 0.03 * (k - 1)
    return pos


def smplx_parent(name: str) -> str:
    if name == "pelvis":
        return "root"
    if name in JOINT_NAMES[:22]:
        return JOINT_NAMES[PARENTS[J[name]]]
    if name in ("jaw", "left_eye_smplhf", "right_eye_smplhf"):
        return "head"
    side, finger, k = name.split("_")[0], name.split("_")[1][:-1], int(name[-1])
    return f"{side}_wrist" if k == 1 else f"{side}_{finger}{k - 1}"


def smplx_rig(rest_joints, style: str):
    """The SMPL-X add-on's bone set: `root`, SMPL's 22 body joints, jaw, eyes and 30 finger bones
    (fingers parented to the wrists), no left_hand/right_hand. "addon": every bone points up (+Z)
    with no roll, so each bone's axes are SMPL's and a pose bone's quaternion is SMPL-X's
    axis-angle, as the add-on writes them. "rolled": bones along other axes with non-zero rolls."""
    pos = smplx_joint_positions(rest_joints)
    rows = [("root", (0, 0, 0), (0, 0, 0.1), 0.0, None)]
    for i, name in enumerate(SMPLX_JOINT_NAMES):
        head = TO_BLENDER @ pos[name]
        if style == "addon":
            tail, roll = head + [0.0, 0.0, 0.05], 0.0
        else:
            tail, roll = head + 0.05 * np.array([math.cos(i), math.sin(i), 0.6]) / 1.17, 0.3 * i - 2.0
        rows.append((name, head, tail, roll, smplx_parent(name)))
    return build_armature("SMPLX-neutral", rows)


MIXAMO_PARENTS = {"Hips": None, "Spine": "Hips", "Spine1": "Spine", "Spine2": "Spine1", "Neck": "Spine2",
                  "Head": "Neck", "HeadTop_End": "Head", "LeftUpLeg": "Hips", "LeftLeg": "LeftUpLeg",
                  "LeftFoot": "LeftLeg", "LeftToeBase": "LeftFoot", "LeftToe_End": "LeftToeBase",
                  "LeftShoulder": "Spine2", "LeftArm": "LeftShoulder", "LeftForeArm": "LeftArm",
                  "LeftHand": "LeftForeArm", "LeftHandMiddle1": "LeftHand"}
MIXAMO_PARENTS.update({k.replace("Left", "Right"): v and v.replace("Left", "Right")
                       for k, v in MIXAMO_PARENTS.items() if "Left" in k})
A_POSE = math.radians(45)


def mixamo_joint_positions(rest_joints, seed=0) -> dict:
    """A Mixamo skeleton (SMPL frame, metres) unlike SMPL's: torso and legs moved by ~1 cm, arms in an
    A-pose (45 degrees down about the shoulder), end bones above the head and ahead of the toes."""
    rng = np.random.default_rng(seed)
    P = rest_joints + rng.normal(0.0, 0.01, rest_joints.shape)
    P[16:] = rest_joints[16:]    # arms as SMPL's, then lowered
    smpl_of = {name: j for j, name in enumerate(MIXAMO_BONE_NAMES) if name}
    pos = {name: P[j] for name, j in smpl_of.items()}
    pos["LeftHandMiddle1"], pos["RightHandMiddle1"] = P[22], P[23]
    pos["HeadTop_End"] = P[15] + [0.0, 0.15, 0.0]
    pos["LeftToe_End"], pos["RightToe_End"] = P[10] + [0.0, 0.0, 0.06], P[11] + [0.0, 0.0, 0.06]
    for side, sign in (("Left", -1.0), ("Right", 1.0)):
        down = rodrigues([0.0, 0.0, sign * A_POSE])   # about SMPL's +z (front): arm tips go down
        for bone in ("ForeArm", "Hand", "HandMiddle1"):
            pos[f"{side}{bone}"] = pos[f"{side}Arm"] + down @ (pos[f"{side}{bone}"] - pos[f"{side}Arm"])
    return pos


def mixamo_rig(rest_joints, prefix="mixamorig:", seed=0):
    """A Mixamo rig as the FBX importer leaves it: a Y-up armature in centimetres (its bones
    pointing along arbitrary axes with arbitrary rolls), the object turned 90 degrees about X and
    scaled 0.01, placed somewhere in the scene."""
    rng = np.random.default_rng(100 + seed)
    pos = mixamo_joint_positions(rest_joints, seed)
    rows = []
    for name, parent in MIXAMO_PARENTS.items():
        head = 100.0 * pos[name]
        rows.append((prefix + name, head, head + 5.0 * rng.normal(size=3), rng.uniform(-math.pi, math.pi),
                     parent and prefix + parent))
    obj = build_armature("Armature", rows, rotation=(math.pi / 2, 0.0, 0.0), scale=0.01, location=(0.4, -0.3, 0.0))
    for i, pb in enumerate(obj.pose.bones):
        pb.rotation_mode = ("QUATERNION", "XYZ")[i % 2]
    return obj
