"""Scene set-up for an artist starting from nothing: our SMPL rig at the 3D cursor, and a camera
plus render size that match the photo, so preview frames line up with it without manual work."""
from __future__ import annotations

import bpy
import numpy as np

from . import rig
from .blender_camera import TO_BLENDER, camera_dict, set_camera
from .shared.body_defaults import OPEN_BODY_REST_JOINTS, OPEN_BODY_SOLE_Y
from .shared.camera import frame_subject
from .shared.smpl import PARENTS

PHOTO_CAMERA_TAG = "one_shot_avatar_photo_camera"   # custom property: this camera is ours to move


def add_rig(context, name: str = "SMPL"):
    """Our 24-bone rig in the built-in body's rest pose (T-pose), standing on the 3D cursor."""
    obj = rig.create_armature(context, np.array(OPEN_BODY_REST_JOINTS), name=name)
    obj.location = tuple(np.asarray(context.scene.cursor.location) + np.array([0.0, 0.0, -OPEN_BODY_SOLE_Y]))
    context.view_layer.update()
    return obj


def rig_joints_smpl(obj, depsgraph=None) -> np.ndarray:
    """(24, 3) world positions of the rig's SMPL joints (bone heads) in the backend's frame; a
    joint the rig lacks (SMPL-X rigs have no hand joints) takes its parent's place."""
    ev = obj.evaluated_get(depsgraph) if depsgraph is not None else obj
    M = np.array(ev.matrix_world)
    joints = np.zeros((len(PARENTS), 3))
    for j, name in enumerate(rig.bone_names(obj)):
        if name is None or name not in ev.pose.bones:
            joints[j] = joints[PARENTS[j]]
            continue
        head = M[:3, :3] @ np.array(ev.pose.bones[name].head) + M[:3, 3]
        joints[j] = TO_BLENDER.T @ head
    return joints


def photo_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read by Blender; ValueError if it is not an image."""
    img = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
    try:
        w, h = img.size
    finally:
        bpy.data.images.remove(img)
    if w == 0 or h == 0:
        raise ValueError(f"{bpy.path.basename(path)} is not an image Blender can read")
    return int(w), int(h)


def photo_camera_object(scene):
    """The scene's camera if the add-on made it for a photo, else a new one (the artist's own
    cameras are never moved), made the active camera."""
    cam = scene.camera
    if cam is None or cam.type != "CAMERA" or not cam.get(PHOTO_CAMERA_TAG):
        data = bpy.data.cameras.new("Photo Camera")
        cam = bpy.data.objects.new("Photo Camera", data)
        cam[PHOTO_CAMERA_TAG] = True
        scene.collection.objects.link(cam)
        scene.camera = cam
    return cam


def frame_photo_file(context, path: str, armature=None) -> tuple[int, int]:
    """frame_photo for the photo at `path`; returns its (width, height)."""
    width, height = photo_size(path)
    frame_photo(context, width, height, armature)
    return width, height


def frame_photo(context, width: int, height: int, armature=None) -> dict:
    """Render size = the photo's; the photo camera frames the armature (or a person standing on
    the 3D cursor) with the default lens. Returns the camera as the backend sees it."""
    scene = context.scene
    if armature is not None:
        context.view_layer.update()
        joints = rig_joints_smpl(armature, context.evaluated_depsgraph_get())
    else:
        cursor = TO_BLENDER.T @ np.asarray(scene.cursor.location)
        joints = np.array(OPEN_BODY_REST_JOINTS) + cursor + np.array([0.0, -OPEN_BODY_SOLE_Y, 0.0])
    cam = frame_subject(joints, width, height).to_dict()
    cam_obj = photo_camera_object(scene)
    set_camera(scene, cam_obj, cam)
    context.view_layer.update()
    return camera_dict(scene, cam_obj)


def use_fit_camera(context, cam: dict) -> bool:
    """After a fit: the photo camera becomes the fit's camera (True), unless the scene's camera is
    the artist's own (False: it is left alone)."""
    scene = context.scene
    if scene.camera is not None and not scene.camera.get(PHOTO_CAMERA_TAG):
        return False
    set_camera(scene, photo_camera_object(scene), cam)
    return True


FOOT_JOINTS = (10, 11)   # SMPL's feet (toe bases)
# how far the soles lie below the foot joints (the built-in body's rest pose)
SOLE_BELOW_FEET = min(OPEN_BODY_REST_JOINTS[j][1] for j in FOOT_JOINTS) - OPEN_BODY_SOLE_Y


def posed_joints(pose, transl, rest_joints) -> np.ndarray:
    """(24, 3) joints of an SMPL-style body in `pose` (72,) moved by `transl`: the kinematic chain
    (rotations about the rest joints, parents first)."""
    J = np.asarray(rest_joints, dtype=np.float64)
    R = [rig.rodrigues(p) for p in np.asarray(pose, dtype=np.float64).reshape(len(PARENTS), 3)]
    G, out = [None] * len(PARENTS), np.empty_like(J)
    for j, p in enumerate(PARENTS):
        if p < 0:
            G[j], out[j] = R[j], J[j] + np.asarray(transl, dtype=np.float64)
        else:
            G[j], out[j] = G[p] @ R[j], out[p] + G[p] @ (J[j] - J[p])
    return out


def upright(body: dict) -> dict:
    """A fit made outside Blender (the CLI, from a photo alone) lives in the photo camera's world,
    y down like images: in Blender's Z-up world that person stands on their head, and a floor or
    a sun added by the artist would be upside down. The same body and camera re-expressed in an
    upright world: the camera's up is up (+Z in Blender), the person's soles on the ground plane
    and the pelvis above the origin. One rigid motion moves body and camera together, so every
    frame renders exactly as before. A fit whose camera is already upright (made from a scene's
    rig and camera) is returned unchanged. `body` has pose, transl, camera (K, R, t, ...) and
    rest_joints; other keys are kept."""
    cam = body["camera"]
    R, t = np.asarray(cam["R"], dtype=np.float64), np.asarray(cam["t"], dtype=np.float64)
    if (R.T @ np.array([0.0, -1.0, 0.0]))[1] >= 0.0:   # the camera's up already points up
        return body
    W = np.diag([1.0, -1.0, -1.0]) @ R                   # camera axes, y and z flipped: its up is +Y
    pose = np.array(body["pose"], dtype=np.float64)
    transl = np.asarray(body["transl"], dtype=np.float64)
    J0 = np.asarray(body["rest_joints"], dtype=np.float64)[0]
    pose[:3] = rig.log_rotation(W @ rig.rodrigues(pose[:3]))
    turned = W @ (J0 + transl) - J0                       # transl after the turn about the world origin
    joints = posed_joints(pose, turned, body["rest_joints"])
    ground = min(joints[j][1] for j in FOOT_JOINTS) - SOLE_BELOW_FEET
    T = np.array([-joints[0][0], -ground, -joints[0][2]])
    Rw = R @ W.T
    return {**body, "pose": pose, "transl": turned + T,
            "camera": {**cam, "R": Rw.tolist(), "t": (t - Rw @ T).tolist()}}
