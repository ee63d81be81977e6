"""Cameras orbiting a body: yaw about the body's up axis, view bins, turntables.

Angles are degrees. Yaw is measured about an "up" axis (default world +Y, SMPL's rest up),
0 along the body's facing direction: relative yaw 0 looks at the body's front, +90 at its
left side (SMPL +x), +-180 at its back. A photo's world is usually its camera's frame (OpenCV,
Y down), where the body's up is -Y: pass up=body_up(global_orient) there. Cameras are
shared/camera.py's (OpenCV convention).
"""
from __future__ import annotations

import math

import numpy as np

from .camera import PinholeCamera
from .rotations import rodrigues

BINS = ("front", "left", "back", "right")
BIN_CENTRES = {"front": 0.0, "left": 90.0, "back": -180.0, "right": -90.0}
BIN_WIDTH = 90.0


def wrap_yaw(deg: float) -> float:
    """An angle in [-180, 180)."""
    return float((deg + 180.0) % 360.0 - 180.0)


def view_bin(rel_yaw_deg: float) -> str:
    """front [-45, 45), left [45, 135), back [135, 180) and [-180, -135), right [-135, -45):
    90 degree bins centred on 0, +90, 180, -90, each including its lower bound."""
    y = wrap_yaw(rel_yaw_deg)
    if -45.0 <= y < 45.0:
        return "front"
    if 45.0 <= y < 135.0:
        return "left"
    if -135.0 <= y < -45.0:
        return "right"
    return "back"


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    if not n > 1e-12:
        raise ValueError(f"zero-length direction {v}")
    return v / n


def _yaw_frame(up) -> np.ndarray:
    """A rotation whose columns are (yaw 90 direction, up, yaw 0 direction): the identity for
    up = +Y; otherwise the smallest rotation taking +Y to up (exactly -Y: 180 degrees about X,
    so yaw 0 is -Z, where an OpenCV camera at the origin sees a body's front)."""
    u = _unit(up)
    y = np.array([0.0, 1.0, 0.0])
    c = float(u @ y)
    if c > 1 - 1e-12:
        return np.eye(3)
    if c < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    axis = np.cross(y, u)
    return rodrigues(axis / np.linalg.norm(axis) * math.acos(max(-1.0, min(1.0, c))))


def _yaw_of(direction, up) -> float:
    """Yaw (degrees) of a world direction about `up`, 0 along the frame's yaw-0 axis."""
    local = _yaw_frame(up).T @ np.asarray(direction, dtype=np.float64).reshape(3)
    if math.hypot(local[0], local[2]) < 1e-9:
        return 0.0  # along the up axis: no yaw, take the front
    return wrap_yaw(math.degrees(math.atan2(local[0], local[2])))


def body_up(global_orient) -> np.ndarray:
    """The body's up axis in world (SMPL rest +Y rotated by the global orientation), (3,)."""
    return rodrigues(global_orient) @ np.array([0.0, 1.0, 0.0])


def body_facing_yaw(global_orient, up=(0.0, 1.0, 0.0)) -> float:
    """Yaw (degrees, about `up`) of the body's facing direction: SMPL's +Z rotated by the
    global orientation (axis-angle, (3,)), projected on the plane across `up`. A body facing
    along `up` (lying face up) has no yaw: 0."""
    return _yaw_of(rodrigues(global_orient) @ np.array([0.0, 0.0, 1.0]), up)


def orbit_direction(facing_yaw_deg: float, rel_yaw_deg: float, pitch_deg: float, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Unit vector from the body centre towards a camera at this relative yaw and pitch."""
    yaw = math.radians(facing_yaw_deg + rel_yaw_deg)
    p = math.radians(pitch_deg)
    local = np.array([math.cos(p) * math.sin(yaw), math.sin(p), math.cos(p) * math.cos(yaw)])
    return _yaw_frame(up) @ local


def orbit_camera(center, facing_yaw_deg: float, rel_yaw_deg: float, pitch_deg: float, distance: float,
                 focal: float, width: int, height: int, up=(0.0, 1.0, 0.0)) -> PinholeCamera:
    """An OpenCV camera `distance` from `center`, looking at it, from `rel_yaw_deg` relative to
    the body's facing yaw (0: the body's front, +90: its left side) and `pitch_deg` (> 0:
    above, looking down); image x right, y down, `up` pointing up in the image."""
    if not abs(pitch_deg) < 89.0:
        raise ValueError(f"pitch {pitch_deg} degrees: must be within (-89, 89) (the camera would look along up)")
    if not distance > 0:
        raise ValueError(f"camera distance must be > 0, got {distance}")
    center = np.asarray(center, dtype=np.float64).reshape(3)
    u = _unit(up)
    eye = center + distance * orbit_direction(facing_yaw_deg, rel_yaw_deg, pitch_deg, u)
    z = _unit(center - eye)            # forward
    x = _unit(np.cross(z, u))          # image right
    y = np.cross(z, x)                 # image down (= -up, tilted by the pitch)
    R = np.stack([x, y, z])
    return PinholeCamera.from_focal(focal, width, height, R=R, t=-R @ eye)


def relative_yaw(camera: PinholeCamera, center, facing_yaw_deg: float, up=(0.0, 1.0, 0.0)) -> float:
    """The relative yaw (degrees, [-180, 180)) a camera sees the body from, e.g. the input
    camera's, so that its bin is known: yaw of (camera centre - center) minus the facing yaw."""
    eye = -camera.R.T @ camera.t
    return wrap_yaw(_yaw_of(eye - np.asarray(center, dtype=np.float64).reshape(3), up) - facing_yaw_deg)


def orbit_from_camera(camera: PinholeCamera, center, up, yaw_deg: float) -> PinholeCamera:
    """The camera moved around the vertical axis (`up` through `center`) so that it sees the
    body from `yaw_deg` further round (+90: from the body's left when the camera was in front).
    Intrinsics, height, pitch and framing stay those of `camera`; yaw 0 is `camera` itself,
    which makes it the natural start of turntables and held-out views of a photo."""
    c = np.asarray(center, dtype=np.float64).reshape(3)
    # seeing the body from further round = rotating the world the other way about the axis
    rot = rodrigues(_unit(up) * math.radians(-yaw_deg))
    R = camera.R @ rot
    t = camera.R @ (c - rot @ c) + camera.t
    return PinholeCamera(camera.K, R, t, camera.width, camera.height)
