"""Armatures that drive the avatar: create an SMPL one, write a 72-value SMPL pose onto a rig an
artist has (ours, the SMPL-X add-on's, an SMPL FBX or a Mixamo rig), read one back.

Frames. The backend works in SMPL's frame (Y up); Blender's world is Z up; C = TO_BLENDER maps
the first to the second. K below is Blender's world axes in which SMPL's T-pose stands (C applied
to SMPL's rest joints: up +Z, facing -Y, its left at +X). An SMPL pose (R_0 global, R_j local to
the parent) gives each joint a world rotation in K,

    G_0 = C R_0 C^T,        G_j = G_parent(j) C R_j C^T,

which turns the body's rest bone direction s_j (joint j to the joint it aims at, in K) to G_j s_j.

What is retargeted: world rotations of bones relative to their rest. A rig bone b mapped to SMPL
joint j, with armature-space rest rotation Rest_b (bone.matrix_local) and posed rotation P_b
(pose_bone.matrix, evaluated: constraints and IK count) in an object of world rotation O (scale
removed), is tied to SMPL by a rest alignment E_j, a rotation from K to armature space that
carries SMPL's rest bone j onto the rig's rest bone b. Then

    G_j = O P_b Rest_b^T E_j            (read)
    P_b = O^T G_j E_j^T Rest_b          (write, the exact inverse)

The rig's bone points in world along O P_b Rest_b^T r_b = G_j E_j^T r_b = G_j s_j (r_b: its rest
direction): the SMPL body's limbs point, and twist, where the rig's do, whatever the rig's bone
rolls and axes; a rig at rest reads G_j = O E_j, SMPL's pose that puts the body's limbs in the
rig's rest directions. The object's transform is part of the pose.

How E_j is found, per kind of rig (`rig_kind`):
- "smpl" (ours, `create_armature`), "smplx" (the SMPL-X add-on's: SMPL's 22 body names, a `root`
  bone above `pelvis`, no `left_hand`/`right_hand`) and "fbx" (older SMPL FBX rigs, `m_avg_*`):
  their rest pose is SMPL's T-pose, so every E_j is one axis change E: identity for Z-up
  armatures (ours, the SMPL-X add-on's), Y-up axes for FBX imports. E is read off the rest skeleton
  (up: pelvis -> neck, left: right hip -> left hip) and snapped to the nearest axis permutation, so
  a rig shaped unlike the avatar still transfers local rotations 1:1 (SMPL poses are shape-free).
- "mixamo" (`mixamorig:Hips`, ..., any prefix): the rest pose is a T- or A-pose of another
  skeleton. E_pelvis is the rotation between the pelvis frames (x: right -> left hip, z: pelvis ->
  neck, orthogonalised) of SMPL's rest joints and of the rig's rest bone heads. Down SMPL's tree,
  E_j = S_j E_parent, S_j being the smallest rotation (about s x r, so no twist about the bone)
  that turns E_parent s_j onto r_b, the rig's rest direction from bone b's head to the head of the
  bone of j's aim joint (spine3 aims at the neck, a wrist at the hand tip `LeftHandMiddle1` when
  there is one). Joints aiming at nothing (head, feet) keep their parent's E. SMPL's rest joints
  are the avatar's (`rest_joints`) or, without them, the built-in open body's
  (`shared.body_defaults.OPEN_BODY_REST_JOINTS`, a T-pose like any SMPL body's). An A-pose
  rig at rest thus reads as SMPL's arms turned ~45 degrees down.
SMPL joints the rig has no bone for (hand joints 22/23 on SMPL-X and Mixamo rigs) read as no
rotation and are not written. Bones that are not mapped (root, fingers, jaw, twist bones) keep
their own channels.

Translation: SMPL puts the posed pelvis joint at J_0 + transl (SMPL frame), and the rig's pelvis
(Hips) head in world is that point: transl = C^T h_world - J_0. J_0 is the avatar's rest pelvis
(`rest_joints[0]`) when given; otherwise an SMPL-family rig's own rest pelvis in metres (through
its axis change and object scale) or, for Mixamo rigs, the open body's.

Writing composes Blender's pose chain, pose_b = pose_parent Rest_parent^-1 Rest_b basis_b (full
inheritance, Blender's default), from the rest matrices and the bones' channels, and keeps each
bone's rotation mode (quaternion, axis-angle or an Euler order, continuous with its last value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .blender_camera import TO_BLENDER
from .shared.rotations import rodrigues
from .shared.body_defaults import OPEN_BODY_REST_JOINTS
from .shared.smpl import (FBX_JOINT_NAMES, JOINT_NAMES, MIXAMO_BONE_NAMES, MIXAMO_HAND_TIP_NAMES, PARENTS,
                          SMPLX_BODY_JOINTS)

C = TO_BLENDER
LEAF_LENGTH = 0.08  # metres: bones without a child (hands, feet, head) need some length
NUM_JOINTS = len(JOINT_NAMES)
PELVIS, LEFT_HIP, RIGHT_HIP, SPINE3, NECK = 0, 1, 2, 9, 12
RIG_KINDS = ("smpl", "smplx", "fbx", "mixamo")
POSE_CHANNELS = ("location", "rotation_quaternion", "rotation_euler", "rotation_axis_angle")


def _aim_joint(j: int) -> int | None:
    """The joint SMPL bone j points at: its only child; spine3 (three children) at the neck; the
    pelvis (three children) and the leaves at none."""
    children = [k for k, p in enumerate(PARENTS) if p == j]
    if len(children) == 1:
        return children[0]
    return NECK if j == SPINE3 else None


AIM_JOINT = tuple(_aim_joint(j) for j in range(NUM_JOINTS))


class RigError(KeyError, ValueError):
    """An armature that is none of the supported rigs. A KeyError (a missing bone) and a
    ValueError (what the operators report); prints as its one-line message, without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RigMap:
    """How a rig stands for SMPL: its kind, its bone per SMPL joint (None where it has none),
    the rest alignments E_j (24, 3, 3; K -> armature space) and SMPL's rest pelvis J_0."""

    kind: str
    names: tuple
    align: np.ndarray
    rest_pelvis: np.ndarray


# -- recognising rigs -------------------------------------------------------------------------

def _mixamo_prefix(bones) -> str | None:
    """The prefix before Mixamo's bone names ('mixamorig:', 'mixamorig1:', '' ...) when the rig
    has all 22 bones with it."""
    wanted = [n for n in MIXAMO_BONE_NAMES if n]
    for bone in bones:
        if bone.name.endswith("Hips"):
            prefix = bone.name[: -len("Hips")]
            if all(prefix + n in bones for n in wanted):
                return prefix
    return None


def _kind_and_names(obj) -> tuple[str, list]:
    bones = getattr(obj.data, "bones", None)
    if bones is None:
        raise RigError(f"'{obj.name}' is not an armature: choose the avatar's rig (an armature)")
    if all(n in bones for n in JOINT_NAMES):
        return "smpl", list(JOINT_NAMES)
    if all(n in bones for n in FBX_JOINT_NAMES):
        return "fbx", list(FBX_JOINT_NAMES)
    if all(n in bones for n in JOINT_NAMES[:SMPLX_BODY_JOINTS]):
        return "smplx", list(JOINT_NAMES[:SMPLX_BODY_JOINTS]) + [None] * (NUM_JOINTS - SMPLX_BODY_JOINTS)
    prefix = _mixamo_prefix(bones)
    if prefix is not None:
        return "mixamo", [prefix + n if n else None for n in MIXAMO_BONE_NAMES]
    missing = [n for n in JOINT_NAMES if n not in bones][:3]
    raise RigError(f"armature '{obj.name}' is not an SMPL, SMPL-X or Mixamo rig (no bones {missing}): "
                   f"expected bones named 'pelvis', 'left_hip', ... 'right_wrist' (SMPL, SMPL-X), "
                   f"'m_avg_Pelvis', ... (SMPL FBX) or 'mixamorig:Hips', 'mixamorig:LeftUpLeg', ... (Mixamo)")


def rig_kind(obj) -> str:
    """'smpl', 'smplx', 'fbx' or 'mixamo'; RigError (a KeyError) naming the expected bones otherwise."""
    return _kind_and_names(obj)[0]


def bone_names(armature) -> list:
    """The armature's bone for each of the 24 SMPL joints, in SMPL order, None where it has none
    (SMPL's hand joints on SMPL-X and Mixamo rigs); RigError if it is no supported rig."""
    return _kind_and_names(armature)[1]


# -- rest alignment ---------------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _pelvis_frame(left: np.ndarray, up: np.ndarray) -> np.ndarray:
    """A right-handed orthonormal frame (columns) with x along the body's `left` and z along the
    part of `up` orthogonal to it: how a skeleton's pelvis is oriented, from two of its lines."""
    x = _unit(left)
    z = _unit(up - (up @ x) * x)
    return np.column_stack([x, np.cross(z, x), z])


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation turning direction a onto direction b: about a x b, so it adds no twist
    about the bone. Opposite directions turn half-way round an axis orthogonal to a."""
    a, b = _unit(a), _unit(b)
    axis = np.cross(a, b)
    s, c = float(np.linalg.norm(axis)), float(a @ b)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        axis = np.cross(a, np.eye(3)[int(np.argmin(np.abs(a)))])
        return rodrigues(_unit(axis) * math.pi)
    return rodrigues(axis / s * math.atan2(s, c))


def _snap_to_axis(v: np.ndarray) -> np.ndarray:
    axis = np.zeros(3)
    i = int(np.argmax(np.abs(v)))
    axis[i] = math.copysign(1.0, v[i])
    return axis


def _rest_heads(obj, names: list) -> dict:
    """Armature-space rest heads of the named bones, by SMPL joint index (missing joints left out)."""
    return {j: np.array(obj.data.bones[n].head_local, dtype=np.float64) for j, n in enumerate(names) if n}


def _axis_change(heads: dict) -> np.ndarray:
    """E for SMPL-family rigs: K -> armature axes, from the rest skeleton's pelvis frame snapped to
    the nearest axes (SMPL's T-pose is axis-aligned in K: left +X, up +Z). Unsnapped if the
    skeleton is too skewed for its left and up to snap to different axes."""
    frame = _pelvis_frame(heads[LEFT_HIP] - heads[RIGHT_HIP], heads[NECK] - heads[PELVIS])
    x, z = _snap_to_axis(frame[:, 0]), _snap_to_axis(frame[:, 2])
    if abs(x @ z) > 0.5:
        return frame
    return np.column_stack([x, np.cross(z, x), z])


def _mixamo_alignment(obj, names: list, smpl_rest_k: np.ndarray) -> np.ndarray:
    """E_j for a Mixamo rig (see the module docstring): the pelvis frames aligned, then per bone
    the twist-free swing from SMPL's rest direction (already carried by the parent's E) onto the
    rig's rest direction."""
    points = _rest_heads(obj, names)
    prefix = names[PELVIS][: -len("Hips")]
    for j, tip in MIXAMO_HAND_TIP_NAMES.items():
        if prefix + tip in obj.data.bones:
            points[j] = np.array(obj.data.bones[prefix + tip].head_local, dtype=np.float64)
    s = smpl_rest_k
    align = np.empty((NUM_JOINTS, 3, 3))
    rig_frame = _pelvis_frame(points[LEFT_HIP] - points[RIGHT_HIP], points[NECK] - points[PELVIS])
    smpl_frame = _pelvis_frame(s[LEFT_HIP] - s[RIGHT_HIP], s[NECK] - s[PELVIS])
    align[PELVIS] = rig_frame @ smpl_frame.T
    for j in range(1, NUM_JOINTS):
        E = align[PARENTS[j]]
        aim = AIM_JOINT[j]
        if names[j] and aim is not None and aim in points:
            E = _swing(E @ (s[aim] - s[j]), points[aim] - points[j]) @ E
        align[j] = E
    return align


def rig_map(obj, rest_joints=None) -> RigMap:
    """The rig's bones, rest alignments and J_0 (see the module docstring). `rest_joints`: the
    avatar body's 24 rest joints (SMPL frame, metres), if known."""
    kind, names = _kind_and_names(obj)
    given = None if rest_joints is None else np.asarray(rest_joints, dtype=np.float64).reshape(NUM_JOINTS, 3)
    if kind == "mixamo":
        smpl_rest = given if given is not None else np.array(OPEN_BODY_REST_JOINTS, dtype=np.float64)
        return RigMap(kind, tuple(names), _mixamo_alignment(obj, names, smpl_rest @ C.T), smpl_rest[PELVIS])
    heads = _rest_heads(obj, names)
    E = _axis_change(heads)
    pelvis = given[PELVIS] if given is not None else C.T @ (E.T @ heads[PELVIS]) * _object_frame(obj)[2]
    return RigMap(kind, tuple(names), np.repeat(E[None], NUM_JOINTS, axis=0), pelvis)


# -- creating our rig -------------------------------------------------------------------------

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


# -- pose math --------------------------------------------------------------------------------

def log_rotation(R: np.ndarray) -> np.ndarray:
    """Axis-angle of a rotation matrix (robust near 0 and pi)."""
    from mathutils import Matrix

    q = Matrix(R.tolist()).to_quaternion()
    axis, angle = q.to_axis_angle()
    if angle > np.pi:
        angle -= 2 * np.pi
    return np.array(axis) * angle


def _object_frame(obj) -> tuple[np.ndarray, np.ndarray, float]:
    """(world rotation without scale, 4x4 world matrix, mean scale) of an object."""
    M = np.array(obj.matrix_world)
    norms = np.linalg.norm(M[:3, :3], axis=0)
    return M[:3, :3] / norms, M, float(norms.mean())


def _rotation_part(matrix) -> np.ndarray:
    """The 3x3 rotation of a Blender matrix, bone or pose scale divided out."""
    R = np.array(matrix.to_3x3(), dtype=np.float64)
    return R / np.linalg.norm(R, axis=0)


def _world_rotations(pose: np.ndarray) -> np.ndarray:
    """G_j in K for a (72,) SMPL pose: SMPL's kinematic chain."""
    local = [C @ rodrigues(p) @ C.T for p in pose.reshape(NUM_JOINTS, 3)]
    G = np.empty((NUM_JOINTS, 3, 3))
    for j, p in enumerate(PARENTS):
        G[j] = local[j] if p < 0 else G[p] @ local[j]
    return G


def _smpl_pose(G: np.ndarray) -> np.ndarray:
    """The (72,) SMPL pose whose world rotations in K are G (the inverse of _world_rotations)."""
    pose = np.zeros((NUM_JOINTS, 3))
    for j, p in enumerate(PARENTS):
        R = G[j] if p < 0 else G[p].T @ G[j]
        pose[j] = log_rotation(C.T @ R @ C)
    return pose.reshape(-1)


def _set_rotation(pb, R: np.ndarray) -> None:
    """Set a pose bone's rotation channel to R in the bone's own rotation mode, continuous with its
    current value (quaternion sign, Euler angle wraps) so keyed poses interpolate sensibly."""
    from mathutils import Matrix

    m = Matrix(R.tolist())
    mode = pb.rotation_mode
    if mode == "QUATERNION":
        q = m.to_quaternion()
        q.make_compatible(pb.rotation_quaternion)
        pb.rotation_quaternion = q
    elif mode == "AXIS_ANGLE":
        axis, angle = m.to_quaternion().to_axis_angle()
        pb.rotation_axis_angle = (angle, *axis)
    else:
        pb.rotation_euler = m.to_euler(mode, pb.rotation_euler)


def _pose_chain(obj, rotations: dict, heads: dict) -> None:
    """Set the channels of the bones in `rotations` (armature-space pose rotation per bone name)
    and `heads` (armature-space posed head per bone name). A bone's pose is its parent's pose
    times its own rest offset and channels,

        pose_b = pose_parent Rest_parent^-1 Rest_b basis_b,

    so the hierarchy is walked from the roots, each parent's new pose known before its children;
    bones not named keep their channels (a posed `root` bone is honoured)."""
    posed = {}

    def visit(bone):
        pb = obj.pose.bones[bone.name]
        frame = np.array(bone.matrix_local)  # basis space -> armature space
        if bone.parent is not None:
            frame = posed[bone.parent.name] @ np.linalg.inv(np.array(bone.parent.matrix_local)) @ frame
        if bone.name in rotations:
            lin = frame[:3, :3] / np.linalg.norm(frame[:3, :3], axis=0)
            _set_rotation(pb, lin.T @ rotations[bone.name])
        if bone.name in heads:
            pb.location = np.linalg.solve(frame[:3, :3], heads[bone.name] - frame[:3, 3]).tolist()
        posed[bone.name] = frame @ np.array(pb.matrix_basis)
        for child in bone.children:
            visit(child)

    for bone in obj.data.bones:
        if bone.parent is None:
            visit(bone)


def write_pose(obj, pose, transl, rest_joints=None) -> None:
    """Pose the armature with 72 SMPL values and a translation (backend/SMPL world frame).
    `rest_joints` (24x3, SMPL frame): the avatar body's rest joints, if known (see rig_map)."""
    rig = rig_map(obj, rest_joints)
    obj_rot, M, _ = _object_frame(obj)
    G = _world_rotations(np.asarray(pose, dtype=np.float64).reshape(-1))
    rotations = {name: obj_rot.T @ G[j] @ rig.align[j].T @ _rotation_part(obj.data.bones[name].matrix_local)
                 for j, name in enumerate(rig.names) if name}
    pelvis_world = C @ (rig.rest_pelvis + np.asarray(transl, dtype=np.float64).reshape(3))
    pelvis_armature = np.linalg.solve(M[:3, :3], pelvis_world - M[:3, 3])
    _pose_chain(obj, rotations, {rig.names[PELVIS]: pelvis_armature})


def read_pose(obj, depsgraph=None, rest_joints=None) -> tuple[np.ndarray, np.ndarray]:
    """(72,) SMPL pose and (3,) translation from the armature's evaluated pose (constraints,
    IK and drivers applied) in the backend/SMPL world frame. Joints the rig has no bone for read
    as no rotation."""
    ev = obj.evaluated_get(depsgraph) if depsgraph is not None else obj
    rig = rig_map(obj, rest_joints)
    obj_rot, M, _ = _object_frame(ev)
    G = np.empty((NUM_JOINTS, 3, 3))
    for j, name in enumerate(rig.names):
        if name is None:
            G[j] = G[PARENTS[j]]
            continue
        pb = ev.pose.bones[name]
        G[j] = obj_rot @ _rotation_part(pb.matrix) @ _rotation_part(pb.bone.matrix_local).T @ rig.align[j]
    head_world = M[:3, :3] @ np.array(ev.pose.bones[rig.names[PELVIS]].head) + M[:3, 3]
    return _smpl_pose(G), C.T @ head_world - rig.rest_pelvis


# -- animation --------------------------------------------------------------------------------

def _action_fcurves(anim) -> list:
    """The F-curves of the object's active action for its own slot (Blender 4.4+ layered
    actions), or the action's flat F-curve list (Blender 4.2/4.3)."""
    action = anim.action
    if action is None:
        return []
    slot = getattr(anim, "action_slot", None)
    if hasattr(action, "layers") and slot is not None:
        return [fc for layer in action.layers for strip in layer.strips
                for bag in [strip.channelbag(slot)] if bag is not None for fc in bag.fcurves]
    return list(getattr(action, "fcurves", []))


def has_keyed_pose(obj) -> bool:
    """True when the armature's pose is animated: its action has F-curves on pose bones' location
    or rotation, or it has NLA strips. Loading a pose would be overwritten on the next frame
    change, or would silently replace the keyed pose, so callers ask first."""
    anim = obj.animation_data
    if anim is None:
        return False
    if any(len(track.strips) for track in anim.nla_tracks):
        return True
    return any(fc.data_path.startswith("pose.bones[") and fc.data_path.rsplit(".", 1)[-1] in POSE_CHANNELS
               for fc in _action_fcurves(anim))
