"""Motion files for the rig: read an SMPL pose sequence (.npz) and key it onto any supported rig.

Files (`read_motion`). Ours, as the backend's CLI reads them (`load_pose_sequence`): `poses` (or
`pose`) (N, 72) SMPL axis-angles (global orient + 23 joints), optional `transl` (N, 3) in the
backend's world (SMPL frame, Y up), optional `fps`. AMASS's: `poses` (N, 156) SMPL-H or (N, 165)
SMPL-X, whose first 66 values are the 22 body joints' axis-angles (SMPL's hand joints 22/23 then
get no rotation), `trans` (N, 3), `mocap_framerate` (`mocap_frame_rate` in the SMPL-X release);
`betas` and `gender` are not used. AMASS's world is Z up (a standing body's global orient is
about +90 degrees about X), which is Blender's world: a file with AMASS's keys (`trans`, a mocap
frame rate) is taken as such and turned into the backend's Y-up frame when it is applied, so the
motion stands on Blender's ground plane as it did in the capture. Files are read with
allow_pickle=False: arrays stored as Python objects are refused, never unpickled.

Keying (`apply_motion`). Each kept frame is written with `rig.write_pose` (so every rig kind and
each bone's rotation mode are handled there) and its channels are harvested; only once every
frame has been computed are keyframes inserted: the rotation channel of each bone mapped to an
SMPL joint (its own rotation mode's property) and the location of the pelvis/hips bone, the only
location write_pose changes. Frames are start_frame + i at the scene's frame rate; a motion
with another frame rate is resampled to the scene's by nearest frame. The translation is in the
world, as the backend's poses are (the rig object's transform is taken into account, as it
stands now); bones not mapped (an SMPL-X rig's root, fingers) keep their channels and are not
keyed.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rig
from .rig import C, PELVIS
from .shared.rotations import rodrigues

POSE_DIM = 72
BODY_DIM = 66              # AMASS: global orient + 21 body joints, SMPL's joints 0..21
MAX_FRAMES = 100_000
MAX_BLENDER_FRAME = 1_048_574   # Blender's MAXFRAME
POSE_KEYS = ("poses", "pose")
TRANSL_KEYS = ("transl", "trans")
FPS_KEYS = ("fps", "mocap_framerate", "mocap_frame_rate")
AMASS_KEYS = ("trans", "mocap_framerate", "mocap_frame_rate")


@dataclass(frozen=True)
class Motion:
    """A pose sequence: poses (N, 72) float64, transl (N, 3) or None, the file's frame rate or
    None; z_up: the poses live in AMASS's Z-up world (turned into SMPL's frame when applied)."""

    poses: np.ndarray
    transl: np.ndarray | None
    fps: float | None
    z_up: bool = False
    source: str = "SMPL"


def _read_array(z, key: str, name: str) -> np.ndarray:
    try:
        a = z[key]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(f"{name}: '{key}' is stored as Python objects (pickle), which is not supported: "
                             f"save it as a plain numeric array") from None
        raise ValueError(f"{name}: could not read '{key}' ({_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{name}: could not read '{key}' ({_line(exc)})") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: '{key}' must hold numbers, not {a.dtype}")
    return np.asarray(a, dtype=np.float64)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120]


def read_motion(path) -> Motion:
    """The pose sequence in an .npz file (see the module docstring); ValueError with one line
    naming the file for anything it cannot use."""
    p = Path(path)
    name = p.name or str(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise ValueError(f"{name}: could not be read ({_line(exc)})") from None
    if not magic.startswith(b"PK") and magic != b"\x93NUMPY":
        raise ValueError(f"{name} is not an .npz file (not a zip archive of NumPy arrays)")
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{name} is not an .npz file ({_line(exc)})") from None
    if not hasattr(z, "files"):
        raise ValueError(f"{name} is not an .npz archive (it holds a single array, not named arrays)")
    with z:
        files = list(z.files)
        key = next((k for k in POSE_KEYS if k in files), None)
        if key is None:
            raise ValueError(f"{name}: no 'poses' array (found {', '.join(files) or 'nothing'})")
        raw = _read_array(z, key, name)
        tkey = next((k for k in TRANSL_KEYS if k in files), None)
        transl = _read_array(z, tkey, name) if tkey else None
        fkey = next((k for k in FPS_KEYS if k in files), None)
        fps = _read_array(z, fkey, name) if fkey else None
    poses = raw.reshape(1, -1) if raw.ndim == 1 else raw
    if poses.ndim == 3 and poses.shape[2] == 3:      # (N, joints, 3)
        poses = poses.reshape(len(poses), -1)
    width = poses.shape[1] if poses.ndim == 2 else 0
    if poses.ndim != 2 or not (width == POSE_DIM or (width >= BODY_DIM and width % 3 == 0 and width != 69)):
        raise ValueError(f"{name}: '{key}' must be (N, 72) SMPL axis-angles or AMASS's (N, 156) SMPL-H / "
                         f"(N, 165) SMPL-X ones, got shape {raw.shape}")
    n = len(poses)
    if n == 0:
        raise ValueError(f"{name}: '{key}' has no frames")
    if n > MAX_FRAMES:
        raise ValueError(f"{name}: {n} frames; at most {MAX_FRAMES} can be keyed at once (split the file)")
    if width != POSE_DIM:
        poses = np.concatenate([poses[:, :BODY_DIM], np.zeros((n, POSE_DIM - BODY_DIM))], axis=1)
    if not np.isfinite(poses).all():
        raise ValueError(f"{name}: '{key}' contains NaN or Inf")
    if transl is not None:
        if transl.shape != (n, 3):
            raise ValueError(f"{name}: '{tkey}' must be (N, 3) for N={n} poses, got shape {transl.shape}")
        if not np.isfinite(transl).all():
            raise ValueError(f"{name}: '{tkey}' contains NaN or Inf")
    if fps is not None:
        rate = float(fps.reshape(-1)[0]) if fps.size == 1 else math.nan
        if not 0 < rate <= 10_000:     # also NaN
            raise ValueError(f"{name}: '{fkey}' must be one frame rate in frames per second, "
                             f"got {fps.reshape(-1)[:3]}")
        fps = rate
    z_up = any(k in files for k in AMASS_KEYS) and "transl" not in files
    source = "AMASS" if z_up or width != POSE_DIM else "SMPL"
    return Motion(poses, transl, fps, z_up, source)


def _rotation_property(pb) -> str:
    return {"QUATERNION": "rotation_quaternion", "AXIS_ANGLE": "rotation_axis_angle"}.get(
        pb.rotation_mode, "rotation_euler")


def _resample(n: int, fps: float | None, scene_fps: float) -> tuple[np.ndarray, str]:
    """Indices into the motion's frames for the scene's frames (nearest frame), and a note."""
    if fps is None or math.isclose(fps, scene_fps, rel_tol=1e-6):
        return np.arange(n), ""
    count = int(math.floor((n - 1) * scene_fps / fps + 1e-9)) + 1
    idx = np.minimum(np.rint(np.arange(count) * fps / scene_fps).astype(np.int64), n - 1)
    return idx, f"resampled from {fps:g} to the scene's {scene_fps:g} fps (nearest frame)"


def _checked(motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    poses = np.asarray(motion.poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM or not 0 < len(poses) <= MAX_FRAMES:
        raise ValueError(f"the motion's poses must be (N, 72) with 1..{MAX_FRAMES} frames, got {poses.shape}")
    transl = np.zeros((len(poses), 3)) if motion.transl is None else np.asarray(motion.transl, dtype=np.float64)
    if transl.shape != (len(poses), 3):
        raise ValueError(f"the motion's transl must be ({len(poses)}, 3), got {transl.shape}")
    if not (np.isfinite(poses).all() and np.isfinite(transl).all()):
        raise ValueError("the motion contains NaN or Inf")
    if motion.fps is not None and not (math.isfinite(motion.fps) and motion.fps > 0):
        raise ValueError(f"the motion's frame rate must be positive, got {motion.fps}")
    return poses, transl


def _from_z_up(poses: np.ndarray, transl: np.ndarray, rest_pelvis: np.ndarray, has_transl: bool):
    """AMASS's Z-up world (Blender's) -> the backend's Y-up SMPL frame: a body point at
    R_a (b - J_0) + J_0 + t_a in AMASS's world is at C (R (b - J_0) + J_0 + t) in Blender's
    with R = C^T R_a and t = C^T (J_0 + t_a) - J_0."""
    poses = poses.copy()
    for i in range(len(poses)):
        poses[i, :3] = rig.log_rotation(C.T @ rodrigues(poses[i, :3]))
    if has_transl:
        transl = (rest_pelvis + transl) @ C - rest_pelvis      # rows: C^T (J_0 + t_a) - J_0
    return poses, transl


def _remove_new_animation(armature, had_anim: bool, action_before) -> None:
    anim = armature.animation_data
    if anim is None:
        return
    action = anim.action
    if action is not None and action is not action_before:
        import bpy

        anim.action = None
        if action.users == 0:
            bpy.data.actions.remove(action)
    if not had_anim:
        armature.animation_data_clear()


def apply_motion(context, armature, motion: Motion, start_frame: int, rest_joints=None,
                 every: int = 1) -> tuple[int, int, str]:
    """Key the motion onto the armature from `start_frame`, one scene frame per motion frame
    (resampled by nearest frame when the motion's frame rate differs from the scene's), every
    `every`-th frame (and the last). Returns (first frame, last frame, a note for the user, ''
    when there is nothing to say). Everything is checked and computed before the first keyframe
    is inserted, so a bad motion, frame range or rig (a one-line ValueError) leaves the rig's
    animation as it was; a failure while inserting removes an action made here. Extends the
    scene's end frame (never shortens it) and shows the current frame's keyed pose."""
    scene = context.scene
    poses, transl = _checked(motion)
    every = int(every)
    if every < 1:
        raise ValueError(f"every must be 1 or more, got {every}")
    rmap = rig.rig_map(armature, rest_joints)          # RigError (a ValueError) for other armatures
    scene_fps = scene.render.fps / scene.render.fps_base
    idx, note = _resample(len(poses), motion.fps, scene_fps)
    if len(idx) > MAX_FRAMES:
        raise ValueError(f"the motion is {len(idx)} frames at the scene's {scene_fps:g} fps; "
                         f"at most {MAX_FRAMES} can be keyed at once")
    first, last = int(start_frame), int(start_frame) + len(idx) - 1
    if first < -MAX_BLENDER_FRAME or last > MAX_BLENDER_FRAME:
        raise ValueError(f"frames {first}..{last} are outside Blender's frame range "
                         f"(±{MAX_BLENDER_FRAME})")
    kept = list(range(0, len(idx), every))
    if kept[-1] != len(idx) - 1:
        kept.append(len(idx) - 1)
    poses, transl = poses[idx[kept]], transl[idx[kept]]
    if motion.z_up:
        poses, transl = _from_z_up(poses, transl, rmap.rest_pelvis, motion.transl is not None)
        note = "; ".join(filter(None, [f"{motion.source} file: stood up from its Z-up world", note]))

    bones = [armature.pose.bones[n] for n in rmap.names if n]
    channels = [(pb, _rotation_property(pb)) for pb in bones]
    channels.append((armature.pose.bones[rmap.names[PELVIS]], "location"))
    anim = armature.animation_data
    driven = set()
    if anim is not None:
        driven = {fc.data_path for fc in anim.drivers}
    for pb, prop in channels:
        if pb.path_from_id(prop) in driven:
            raise ValueError(f"bone '{pb.name}' has a driver on its {prop}: remove it to key a motion")

    # 1. every frame's channels, computed through write_pose (the rig's channels restored after)
    saved = [tuple(getattr(pb, prop)) for pb, prop in channels]
    values = [np.empty((len(kept), len(v))) for v in saved]
    try:
        for i in range(len(kept)):
            rig.write_pose(armature, poses[i], transl[i], rest_joints)
            for c, (pb, prop) in enumerate(channels):
                values[c][i] = getattr(pb, prop)
    finally:
        for (pb, prop), v in zip(channels, saved):
            setattr(pb, prop, v)
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError("the rig gave non-finite channel values for this motion (a degenerate rig?)")

    # 2. keyframes: one keyframe_insert per channel makes its F-curve (and the action, slot, layer
    #    on Blender 4.4+), then the keys go straight into the F-curves
    frames = (first + np.asarray(kept, dtype=np.float64)).tolist()
    had_anim = anim is not None
    action_before = anim.action if anim is not None else None
    try:
        for pb, prop in channels:
            pb.keyframe_insert(prop, frame=frames[0], group=pb.name)
        curves = {(fc.data_path, fc.array_index): fc for fc in rig._action_fcurves(armature.animation_data)}
        for (pb, prop), v in zip(channels, values):
            path = pb.path_from_id(prop)
            for index in range(v.shape[1]):
                fc = curves.get((path, index))
                if fc is None:
                    raise ValueError(f"could not key bone '{pb.name}' ({prop}): is the rig linked from a library?")
                points = fc.keyframe_points
                for f, x in zip(frames, v[:, index].tolist()):
                    points.insert(f, x, options={"FAST"})
                fc.update()
    except Exception:
        _remove_new_animation(armature, had_anim, action_before)
        raise
    if last > scene.frame_end:
        scene.frame_end = last
        note = "; ".join(filter(None, [note, f"scene end frame set to {last}"]))
    scene.frame_set(scene.frame_current)
    return first, last, note
