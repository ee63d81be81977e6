"""SMPL-compatible armatures: create one, write a 72-value SMPL pose onto it, read one back.

A pose bone's rotation is relative to its own rest orientation, which depends on how the
bone was built (head -> tail direction, roll). With Rest_j the bone's rest rotation in
armature space and C the SMPL -> Blender frame change, SMPL's local rotation R_j of joint j is

    basis_j = Rest_j^T (C R_j C^T) Rest_j          (written to the pose bone)
    R_j     = C^T Rest_j basis_j Rest_j^T C         (read back, from evaluated matrices)

which holds for any bone roll, so armatures made by other tools (the SMPL-X Blender add-on's
lowercase names with a `root` bone above `pelvis`, SMPL FBX rigs' `m_avg_*` names) work as
long as their rest pose is SMPL's (T-pose). The object's transform is part of the pose: the
backend's world is Blender's world in SMPL axes (see blender_camera.TO_BLENDER).
"""
from __future__ import annotations

import numpy as np

from ._vendor import shared  # noqa: F401  (makes `shared` importable inside Blender)
from .blender_camera import TO_BLENDER

try:
    from .shared.rotations import rodrigues
    from .shared.smpl import FBX_JOINT_NAMES, JOINT_NAMES, PARENTS
except ImportError:
    from shared.rotations import rodrigues
    from shared.smpl import FBX_JOINT_NAMES, JOINT_NAMES, PARENTS

C = TO_BLENDER
LEAF_LENGTH = 0.08  # metres: bones without a child (hands, feet, head) need some length


def log_rotation(R: np.ndarray) -> np.ndarray:
    """Axis-angle of a rotation matrix (robust near 0 and pi)."""
    from mathutils import Matrix

    q = Matrix(R.tolist()).to_quaternion()
    axis, angle = q.to_axis_angle()
    if angle > np.pi:
        angle -= 2 * np.pi
    return np.array(axis) * angle


def bone_names(armature) -> list[str]:
    """The armature's names for the 24 SMPL joints, in SMPL order; KeyError if it has none of ours."""
    bones = armature.data.bones
    for names in (JOINT_NAMES, FBX_JOINT_NAMES):
        if all(n in bones for n in names):
            return list(names)
    missing = [n for n in JOINT_NAMES if n not in bones][:5]
    raise KeyError(f"armature '{armature.name}' is not an SMPL rig: no bones {missing} "
                   f"(expected SMPL joint names such as 'pelvis', 'left_hip' or 'm_avg_Pelvis')")


def create_armature(context, rest_joints_smpl, name: str = "SMPL"):
    """An armature with 24 SMPL bones whose heads are the body's rest joints (SMPL frame,
    metres, e.g. from the server's body), linked to the scene and made active."""
    import bpy

    joints = np.asarray(rest_joints_smpl, dtype=np.float64).reshape(len(JOINT_NAMES), 3) @ C.T
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    context.scene.collection.objects.link(obj)
    context.view_layer.objects.active = obj
    children = {j: [k for k, p in enumerate(PARENTS) if p == j] for j in range(len(JOINT_NAMES))}
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit = {}
        for j, joint_name in enumerate(JOINT_NAMES):
            bone = data.edit_bones.new(joint_name)
            head = joints[j]
            if children[j]:
                tail = joints[children[j]].mean(0) if len(children[j]) > 1 and j != 0 else joints[children[j][0]]
                if j == 0 or j == 9:  # pelvis and spine3 branch three ways: point up the spine
                    tail = joints[3] if j == 0 else joints[12]
            else:
                direction = head - joints[PARENTS[j]]
                tail = head + direction / max(np.linalg.norm(direction), 1e-9) * LEAF_LENGTH
            if np.linalg.norm(tail - head) < 1e-4:
                tail = head + np.array([0.0, 0.0, LEAF_LENGTH])
            d = tail - head
            if d[2] < -0.7 * np.linalg.norm(d):
                # Blender's float32 rest matrix of a bone pointing downwards is orthonormal only
                # to ~4e-5 when it slants (2e-5 straight down), which shows up in pose round
                # trips: straight down keeps them under 1e-5 (measured 5.6e-6). The joint (the
                # head) stays where it is; only the bone's display axis changes.
                tail = head + np.array([0.0, 0.0, -np.linalg.norm(d)])
            bone.head, bone.tail, bone.roll = head.tolist(), tail.tolist(), 0.0
            edit[j] = bone
        for j, p in enumerate(PARENTS):
            if p >= 0:
                edit[j].parent = edit[p]
                edit[j].use_connect = False
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


def _object_rotation(obj) -> tuple[np.ndarray, np.ndarray]:
    M = np.array(obj.matrix_world)
    return M[:3, :3] / np.linalg.norm(M[:3, :3], axis=0), M


def write_pose(obj, pose, transl) -> None:
    """Pose the armature with 72 SMPL values and a translation (backend/SMPL world frame)."""
    from mathutils import Matrix, Vector

    names = bone_names(obj)
    pose = np.asarray(pose, dtype=np.float64).reshape(len(JOINT_NAMES), 3)
    obj_rot, M = _object_rotation(obj)
    for j, name in enumerate(names):
        pb = obj.pose.bones[name]
        rest = np.array(pb.bone.matrix_local.to_3x3())
        R = C @ rodrigues(pose[j]) @ C.T
        if j == 0:
            # the root joint's rotation is global: in armature space, without the object's
            # (a `root` bone above the pelvis, as the SMPL-X add-on makes, is left unposed)
            R = obj_rot.T @ R
        basis = rest.T @ R @ rest
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = Matrix(basis.tolist()).to_quaternion()
    # translation: the pelvis head moves from its rest place by transl (SMPL world)
    pelvis = obj.pose.bones[names[0]]
    rest_head_world = M[:3, :3] @ np.array(pelvis.bone.head_local) + M[:3, 3]
    offset_world = C @ np.asarray(transl, dtype=np.float64) + (C @ _rest_pelvis_smpl(obj, names) - rest_head_world)
    offset_arm = np.linalg.inv(M[:3, :3]) @ offset_world
    rest = np.array(pelvis.bone.matrix_local.to_3x3())
    pelvis.location = Vector((rest.T @ offset_arm).tolist())


def _rest_pelvis_smpl(obj, names) -> np.ndarray:
    """SMPL's rest pelvis joint J_0 for this rig: its rest head in the armature's own space."""
    return C.T @ np.array(obj.data.bones[names[0]].head_local)


def read_pose(obj, depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """(72,) SMPL pose and (3,) translation from the armature's evaluated pose (constraints,
    IK and drivers applied) in the backend/SMPL world frame."""
    ev = obj.evaluated_get(depsgraph) if depsgraph is not None else obj
    names = bone_names(obj)
    obj_rot, M = _object_rotation(ev)
    delta = {}
    pose = np.zeros((len(JOINT_NAMES), 3))
    for j, name in enumerate(names):
        pb = ev.pose.bones[name]
        rest = np.array(pb.bone.matrix_local.to_3x3())
        posed = np.array(pb.matrix.to_3x3())
        posed = posed / np.linalg.norm(posed, axis=0)
        delta[j] = posed @ rest.T  # armature-space rotation from rest to now
        if j == 0:
            R = obj_rot @ delta[0]
        else:
            R = delta[PARENTS[j]].T @ delta[j]
        pose[j] = log_rotation(C.T @ R @ C)
    head_world = M[:3, :3] @ np.array(ev.pose.bones[names[0]].head) + M[:3, 3]
    transl = C.T @ head_world - _rest_pelvis_smpl(obj, names)
    return pose.reshape(-1), transl
