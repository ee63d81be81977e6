"""Import as mesh: the avatar baked by the backend (`python -m backend export`, a skinned .glb)
brought into the scene as a real mesh the rig poses.

The .glb (backend/export/gltf.py) holds one textured mesh skinned to SMPL's 24 joints, named as
shared/smpl.py names them, standing on the avatar body's rest joints, glTF +Y up (SMPL's frame).
Blender's own glTF importer makes it an armature (24 bones with SMPL's names) with the mesh as
its child (an Armature modifier, one vertex group per joint, UVs, an image-textured material);
its axis change is the add-on's (`blender_camera.TO_BLENDER`), so the imported skeleton's rest
bone heads are C @ the file's rest joints in its armature space.

- With our own rig whose rest pose is the file's skeleton (`proxy.rest_pose_mismatch` is None,
  the shadow proxy's test), the mesh is bound to that rig instead, exactly as the shadow proxy
  is: its rest vertices go into the rig's armature space (the imported skeleton's armature space
  is the rig's, both rest bone heads on the same joints, so the mesh sits on the rig's bones
  wherever the rig object stands), it is parented to the rig with an identity parent inverse,
  its Armature modifier points at the rig, its vertex groups carry the rig's bone names, and
  the imported armature is deleted. Posing the rig poses the mesh (linear blend skinning with
  the file's weights).
- Otherwise (no rig, another rig kind, our rig of another body) the imported armature is kept:
  it has SMPL's bone names and the avatar's rest pose, so `rig.write_pose` drives it like any
  SMPL rig; the note returned says why it was not bound.

The mesh is named `<rig>_mesh` when bound, else `<file stem>_mesh` on a skeleton named after
the file. Everything kept is tagged (`TAG`); nothing the user made is touched: a second import
makes a second mesh (Blender's `.001` names). On any failure everything the importer made is
removed; on success everything but the mesh (and its kept skeleton).
"""
from __future__ import annotations

import os

import numpy as np

from . import proxy, rig
from .blender_camera import TO_BLENDER
from .shared.smpl import JOINT_NAMES, NUM_JOINTS

C = TO_BLENDER
# Custom property on the objects this module makes (the mesh, a kept imported armature): the
# file's name.
TAG = "one_shot_avatar_mesh"
GLB_MAGIC = b"glTF"
# bpy.data collections whose new members an import made (and a failed import must not leave)
_DATA = ("objects", "meshes", "armatures", "materials", "images", "textures", "node_groups", "actions",
         "collections", "cameras", "lights")
# importer options, passed only where the running Blender's importer has them
_IMPORT_OPTIONS = {"disable_bone_shape": True,        # no Icosphere bone shapes (and their hidden collection)
                   "import_scene_extras": False,      # never overwrite the scene's custom properties
                   "merge_vertices": False}           # the file's vertices, in the file's order


def import_mesh(context, filepath: str, armature=None, rest_joints=None):
    """Import the avatar .glb at `filepath` (see the module docstring) -> (mesh object, note).

    armature: the rig to bind the mesh to (None: keep the imported one); rest_joints: (24, 3),
    SMPL frame, the rest skeleton the caller expects the file to have (e.g. the loaded avatar's;
    None: the file's own). note: '' when bound, else why the mesh kept its own skeleton.
    ValueError with a one-line message when the file is missing, is no .glb, or holds no mesh
    skinned to SMPL's 24 joints; then nothing the import made is left behind."""
    import bpy

    path = bpy.path.abspath(filepath) if filepath else ""
    stem = os.path.splitext(os.path.basename(path))[0] or "avatar"
    if not path or not os.path.isfile(path):
        raise ValueError(f"no such file: {filepath or '(none chosen)'}")
    with open(path, "rb") as f:
        if f.read(4) != GLB_MAGIC:
            raise ValueError(f"{os.path.basename(path)} is not a glTF binary (.glb): "
                             f"export the avatar with 'python -m backend export'")
    before = _data_snapshot(bpy)
    try:
        _run_importer(bpy, path)
        made = _new_data(bpy, before)
        imported_armature, mesh_obj = _skinned_smpl_mesh(made["objects"], os.path.basename(path))
        file_joints = _rest_joints(imported_armature)
        reason = None
        if armature is not None:
            reason = _bind_reason(armature, file_joints, rest_joints)
        if armature is not None and reason is None:
            _bind(context, mesh_obj, imported_armature, armature)
            mesh_obj.name = f"{armature.name}_mesh"
            keep = {mesh_obj}
            note = ""
        else:
            imported_armature.name = stem
            imported_armature[TAG] = os.path.basename(path)
            mesh_obj.name = f"{stem}_mesh"
            keep = {mesh_obj, imported_armature}
            why = "no rig chosen" if armature is None else f"not bound to '{armature.name}': {reason}"
            note = (f"{why}; '{mesh_obj.name}' keeps its own skeleton '{imported_armature.name}' "
                    f"(SMPL bones: choose it as the Armature to pose it)")
        mesh_obj[TAG] = os.path.basename(path)
        _remove_made(bpy, _new_data(bpy, before), keep)
    except Exception as exc:
        _remove_made(bpy, _new_data(bpy, before), set())
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"could not import {os.path.basename(path)}: {_one_line(exc)}") from exc
    try:
        context.view_layer.objects.active = mesh_obj
    except (RuntimeError, ValueError):
        pass   # the rig's collection is not in this view layer
    return mesh_obj, note


def bake_path(avatar_id: str) -> str:
    """Where a backend bake of `avatar_id` is kept: avatars/ beside the saved .blend file, else
    Blender's temp folder; a name that holds nothing yet (an earlier bake is never replaced)."""
    import bpy

    folder = os.path.join(bpy.path.abspath("//"), "avatars") if bpy.data.filepath else bpy.app.tempdir
    base = os.path.join(folder, f"avatar_{avatar_id}")
    path, n = f"{base}.glb", 1
    while os.path.exists(path):
        path, n = f"{base}_{n}.glb", n + 1
    return path


# -- the import ---------------------------------------------------------------------------------

def _run_importer(bpy, path: str) -> None:
    available = {p.identifier for p in bpy.ops.import_scene.gltf.get_rna_type().properties}
    options = {k: v for k, v in _IMPORT_OPTIONS.items() if k in available}
    result = bpy.ops.import_scene.gltf(filepath=path, **options)
    if "FINISHED" not in result:
        raise ValueError(f"Blender's glTF importer could not read {os.path.basename(path)}")


def _skinned_smpl_mesh(objects, filename: str):
    """(imported armature, mesh object) of the first imported mesh skinned to an armature with
    all of SMPL's 24 joints as bones and vertex groups; ValueError when there is none."""
    for obj in objects:
        if obj.type != "MESH":
            continue
        for modifier in obj.modifiers:
            arm = getattr(modifier, "object", None) if modifier.type == "ARMATURE" else None
            if (arm is not None and arm in objects and all(n in arm.data.bones for n in JOINT_NAMES)
                    and all(n in obj.vertex_groups for n in JOINT_NAMES)):
                return arm, obj
    raise ValueError(f"{filename} holds no mesh skinned to SMPL's 24 joints ('pelvis' ... 'right_hand'): "
                     f"export the avatar with 'python -m backend export'")


def _rest_joints(imported_armature) -> np.ndarray:
    """The file's rest joints (24, 3), SMPL frame: the imported bone heads, armature space, back
    through the importer's axis change (the add-on's C)."""
    heads = np.array([imported_armature.data.bones[n].head_local for n in JOINT_NAMES], dtype=np.float64)
    return heads @ C


def _bind_reason(armature, file_joints: np.ndarray, rest_joints) -> str | None:
    """Why the mesh cannot be bound to `armature` (None when it can)."""
    if rest_joints is not None:
        apart = float(np.abs(np.asarray(rest_joints, dtype=np.float64).reshape(NUM_JOINTS, 3) - file_joints).max())
        if apart > proxy.REST_TOLERANCE:
            return f"the file's skeleton is not the loaded avatar's: joints up to {apart * 100:.1f} cm apart"
    return proxy.rest_pose_mismatch(armature, file_joints, body="this file's avatar")


def _bind(context, mesh_obj, imported_armature, armature) -> None:
    """Move the mesh from the imported armature onto `armature` (see the module docstring)."""
    # the imported skeleton's armature space is the rig's: both rest heads are C @ the same joints
    to_rig = np.linalg.inv(np.array(imported_armature.matrix_world)) @ np.array(mesh_obj.matrix_world)
    mesh = mesh_obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64) @ to_rig[:3, :3].T + to_rig[:3, 3]
    mesh.vertices.foreach_set("co", co.astype(np.float32).ravel())
    mesh.update()
    mesh_obj.parent = armature
    mesh_obj.parent_type = "OBJECT"
    mesh_obj.matrix_parent_inverse.identity()   # the mesh is in the armature's space
    mesh_obj.matrix_basis.identity()
    names = rig.bone_names(armature)
    for joint_name, bone in zip(JOINT_NAMES, names):
        group = mesh_obj.vertex_groups.get(joint_name)
        if group is not None and bone is not None and bone != joint_name:
            group.name = bone
    modifiers = [m for m in mesh_obj.modifiers if m.type == "ARMATURE"]
    for extra in modifiers[1:]:
        mesh_obj.modifiers.remove(extra)
    modifier = modifiers[0]
    modifier.object = armature
    modifier.use_vertex_groups, modifier.use_bone_envelopes = True, False
    modifier.use_deform_preserve_volume = False   # linear blend skinning, as the backend poses it
    collections = list(armature.users_collection) or [context.scene.collection]
    for col in list(mesh_obj.users_collection):
        if col not in collections:
            col.objects.unlink(mesh_obj)
    if collections[0] not in mesh_obj.users_collection:
        collections[0].objects.link(mesh_obj)


# -- bookkeeping --------------------------------------------------------------------------------

def _data_snapshot(bpy) -> dict:
    return {name: set(getattr(bpy.data, name)) for name in _DATA}


def _new_data(bpy, before: dict) -> dict:
    return {name: [d for d in getattr(bpy.data, name) if d not in before[name]] for name in _DATA}


def _remove_made(bpy, made: dict, keep: set) -> None:
    """Remove what the import made except the objects in `keep` (and the data they use)."""
    for obj in made["objects"]:
        if obj not in keep:
            bpy.data.objects.remove(obj, do_unlink=True)
    for col in made["collections"]:
        if not any(o in keep for o in col.all_objects):
            bpy.data.collections.remove(col)
    # data blocks left without users (the armature data of a removed skeleton, bone shapes ...);
    # a material or image of the kept mesh has users and stays
    for name in ("meshes", "armatures", "materials", "textures", "images", "node_groups", "actions", "cameras",
                 "lights"):
        store = getattr(bpy.data, name)
        for block in made[name]:
            if block.users == 0:
                store.remove(block)


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
