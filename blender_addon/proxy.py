"""A shadow proxy for the avatar: its fitted body as a mesh the rig deforms, seen only by shadows.

The avatar is a neural render composited into Blender's image by depth: it is no geometry of
the scene, so on its own it casts no shadow. The proxy is the body model the avatar was fitted
with (its shape included), as the backend's `loaded` reply sends it (`proxy`: rest-pose vertices
in the backend's SMPL frame, faces, and each vertex's skinning joints and weights). It is built
in the rig's rest pose, parented to the rig, with an Armature modifier and one vertex group per
rig bone, so in any pose of the rig it is the body model's posed mesh: linear blend skinning with
the body's own weights, as the backend poses the body (SMPL's pose-corrective blend shapes are
not reproduced; the built-in open body has none).

It is hidden from the camera and reflections (`visible_camera`, `visible_glossy`,
`visible_transmission` off: the depth composite draws the avatar itself), hidden in the
viewport (the eye icon; the viewport draws the neural avatar) and not selectable, and it casts
shadows (`visible_shadow`; in Cycles also onto the floor's ambient light through
`visible_diffuse`; EEVEE follows the camera and shadow ray visibility, and its light probes are
told to ignore it).

Limitation: only our own rig (`rig.create_armature`, kind "smpl") whose rest bones stand on the
avatar's rest joints gets a proxy. Other rigs (the SMPL-X add-on's, SMPL FBX imports, Mixamo
rigs) have other rest poses (other proportions and axes, A-poses): the body's rest mesh would not
sit on their bones, so `make_proxy` returns None there and `unsupported_reason` says why.
"""
from __future__ import annotations

import numpy as np

from . import rig
from .blender_camera import TO_BLENDER
from .shared.smpl import NUM_JOINTS, PARENTS

C = TO_BLENDER
# Custom property on what this module makes (the proxy object: the armature's name; the material):
# only objects carrying it, parented to the armature, are ever replaced or removed.
TAG = "one_shot_avatar_proxy"
MATERIAL_NAME = "avatar_shadow_proxy"
GREY = (0.5, 0.5, 0.5, 1.0)
# metres: how far a rig's rest bone heads may lie from the avatar's rest joints (Blender stores
# them as float32: ours agree to ~1e-7)
REST_TOLERANCE = 1e-3
RIG_KIND_NAMES = {"smplx": "SMPL-X add-on", "fbx": "SMPL FBX", "mixamo": "Mixamo"}


def rest_pose_mismatch(armature, rest_joints, body: str = "this avatar's body") -> str | None:
    """Why `armature` cannot carry a mesh made for a body with these rest joints (24x3, SMPL
    frame), or None when it can: our own rig, its rest bone heads on the body's rest joints.
    Worded for any such mesh (the shadow proxy, an imported bake); `body` names the body."""
    try:
        kind = rig.rig_kind(armature)
    except rig.RigError as exc:
        return str(exc)
    if kind != "smpl":
        return f"this rig kind ({RIG_KIND_NAMES.get(kind, kind)} rig: another rest pose)"
    heads = np.array([armature.data.bones[n].head_local for n in rig.bone_names(armature)], dtype=np.float64)
    expected = np.asarray(rest_joints, dtype=np.float64).reshape(NUM_JOINTS, 3) @ C.T
    apart = float(np.abs(heads - expected).max())
    if apart > REST_TOLERANCE:
        return (f"the rest pose of '{armature.name}' is not {body} "
                f"(joints up to {apart * 100:.1f} cm apart); add a new rig for it")
    return None


def unsupported_reason(armature, rest_joints) -> str | None:
    """Why `armature` gets no shadow proxy for a body with these rest joints, or None when it
    does (rest_pose_mismatch, said of the proxy)."""
    reason = rest_pose_mismatch(armature, rest_joints)
    if reason is None:
        return None
    return f"no shadow proxy for {reason}" if reason.startswith("this rig kind") else f"no shadow proxy: {reason}"


def find_proxy(armature):
    """The proxy this module made for `armature` (None if it has none)."""
    return next((obj for obj in armature.children if obj.get(TAG) is not None), None)


def remove_proxy(armature) -> None:
    """Delete the proxies this module made for `armature` (tagged children; nothing else) and
    their meshes."""
    import bpy

    for obj in [o for o in armature.children if o.get(TAG) is not None]:
        mesh = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


def make_proxy(context, armature, proxy: dict | None, rest_joints):
    """The avatar body's shadow proxy for `armature` (see the module docstring), replacing the
    one made earlier for it; None when there is no proxy mesh (a server that sends none) or the
    rig is not one the body's rest mesh fits (`unsupported_reason`; the caller tells the user).

    proxy: the `loaded` reply's {vertices (V, 3), faces (F, 3), joint_index (V, K), joint_weight
    (V, K)}, in the backend's frame; rest_joints: the same reply's 24x3 rest joints."""
    if proxy is None or unsupported_reason(armature, rest_joints) is not None:
        return None
    import bpy

    remove_proxy(armature)
    name = f"{armature.name}_proxy"
    mesh = _mesh(bpy, name, np.asarray(proxy["vertices"], dtype=np.float64).reshape(-1, 3) @ C.T,
                 np.asarray(proxy["faces"], dtype=np.int64).reshape(-1, 3))
    mesh.materials.append(_material(bpy))
    obj = bpy.data.objects.new(name, mesh)
    obj[TAG] = armature.name
    collections = list(armature.users_collection) or [context.scene.collection]
    collections[0].objects.link(obj)
    obj.parent = armature          # identity parent inverse: the mesh is in the armature's space
    _skin(obj, armature, np.asarray(proxy["joint_index"]), np.asarray(proxy["joint_weight"], dtype=np.float64))
    modifier = obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature
    modifier.use_vertex_groups, modifier.use_bone_envelopes = True, False
    modifier.use_deform_preserve_volume = False   # linear blend skinning, as the body model
    _shadow_only(obj)
    obj.hide_select = True
    try:
        obj.hide_set(True, view_layer=context.view_layer)
    except RuntimeError:
        pass   # the armature's collection is not in this view layer: nothing to hide there
    return obj


def _mesh(bpy, name: str, vertices: np.ndarray, faces: np.ndarray):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update()
    mesh.validate()
    mesh.shade_smooth()
    return mesh


def _material(bpy):
    """The one plain grey material of the proxies (made once, found again by its tag)."""
    mat = next((m for m in bpy.data.materials if m.get(TAG) is not None), None)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat[TAG] = True
    mat.diffuse_color = GREY
    if mat.node_tree is None:
        mat.use_nodes = True   # Blender < 5.0: new materials have no node tree yet
    bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = GREY
    return mat


def _bone_per_joint(armature) -> list[str]:
    """The bone deforming each SMPL joint's vertices: the joint's own, else its nearest ancestor's."""
    names = rig.bone_names(armature)
    out = []
    for j in range(NUM_JOINTS):
        k = j
        while names[k] is None and PARENTS[k] >= 0:
            k = PARENTS[k]
        out.append(names[k])
    return out


def _skin(obj, armature, joint_index: np.ndarray, joint_weight: np.ndarray) -> None:
    """One vertex group per rig bone, holding the weights of the joints it deforms."""
    bones = _bone_per_joint(armature)
    groups = {}
    for b in bones:
        if b is not None and b not in groups:
            groups[b] = obj.vertex_groups.new(name=b)
    rows, cols = np.nonzero(joint_weight > 0)
    joints = joint_index[rows, cols].astype(np.int64)
    weights = joint_weight[rows, cols]
    # one call per (joint, weight): vertices of equal weight go together (most have one joint, 1.0)
    order = np.lexsort((weights, joints))
    rows, joints, weights = rows[order], joints[order], weights[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(joints) != 0) | (np.diff(weights) != 0)])
    for a, b in zip(starts, np.r_[starts[1:], len(rows)]):
        bone = bones[joints[a]]
        if bone is not None:
            groups[bone].add(rows[a:b].tolist(), float(weights[a]), "ADD")


def _shadow_only(obj) -> None:
    obj.visible_camera = False
    obj.visible_shadow = True
    obj.visible_diffuse = True        # Cycles: it darkens the ambient light around it as a body would
    obj.visible_glossy = False        # no grey body in mirrors and glossy floors
    obj.visible_transmission = False
    obj.visible_volume_scatter = False
    for probe in ("hide_probe_volume", "hide_probe_sphere", "hide_probe_plane"):   # EEVEE
        if hasattr(obj, probe):
            setattr(obj, probe, True)
