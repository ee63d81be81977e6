"""Camera convention shared by the backend and the add-on.

Pinhole, OpenCV style: a world point X maps to camera coordinates x = R @ X + t, the
camera looks down +Z with +Y pointing down in the image, and pixel (u, v) = (fx*x/z + cx,
fy*y/z + cy), with u to the right and v downwards, pixel centres at integer + 0.5.
Blender cameras look down -Z with +Y up: converting flips the camera's Y and Z axes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# A photo with no known lens is assumed taken at this 35 mm-equivalent focal length (a "normal"
# lens: 47 degrees across the diagonal), the usual choice for full-body portraits.
DEFAULT_FOCAL_35MM = 50.0
_DIAGONAL_35MM = 43.2666  # mm, the full-frame diagonal that 35 mm-equivalent focal lengths refer to
# How far the body reaches past its joints when framing it (metres): head top above the head
# joint, soles below the lowest joint, flesh beside the outermost joints.
_HEAD_TOP, _SOLE, _SIDE = 0.2, 0.08, 0.15
MAX_IMAGE_SIDE = 8192  # pixels; larger photos are refused (memory) rather than resized silently
MIN_IMAGE_SIDE = 16


@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    K: np.ndarray  # (3, 3) intrinsics in pixels
    R: np.ndarray  # (3, 3) world -> camera rotation
    t: np.ndarray  # (3,) world -> camera translation
    width: int
    height: int

    def __post_init__(self):
        K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.t, dtype=np.float64).reshape(3)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def from_focal(cls, focal: float, width: int, height: int, R=None, t=None) -> "PinholeCamera":
        """ELICIT's convention: one focal length in pixels, principal point at the centre."""
        K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(K, np.eye(3) if R is None else R, np.zeros(3) if t is None else t, width, height)

    def scaled(self, factor: float) -> "PinholeCamera":
        """The same camera for an image resized by `factor` (pixel centres stay aligned)."""
        S = np.diag([factor, factor, 1.0])
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        return PinholeCamera(S @ self.K, self.R, self.t, w, h)

    def cropped(self, x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> "PinholeCamera":
        """The camera that sees the window [x0, x1] x [y0, y1] (pixels of this camera, may extend
        past the image) as an image of width x height: render a crop directly at its size."""
        sx, sy = width / (x1 - x0), height / (y1 - y0)
        S = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
        return PinholeCamera(S @ self.K, self.R, self.t, width, height)

    @property
    def center(self) -> np.ndarray:
        """The camera's position in world coordinates."""
        return -self.R.T @ self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixel coordinates."""
        x = points @ self.R.T + self.t
        uvw = x @ self.K.T
        return uvw[:, :2] / uvw[:, 2:3]

    @classmethod
    def from_dict(cls, d: dict) -> "PinholeCamera":
        """The inverse of to_dict."""
        return cls(d["K"], d["R"], d["t"], d["width"], d["height"])

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "K": self.K.tolist(),
                "R": self.R.tolist(), "t": self.t.tolist()}


def focal_pixels(focal_35mm: float, width: int, height: int) -> float:
    """A 35 mm-equivalent focal length (defined on the diagonal) in pixels of a width x height image."""
    return focal_35mm * float(np.hypot(width, height)) / _DIAGONAL_35MM


def frame_subject(joints, width: int, height: int, focal_35mm: float = DEFAULT_FOCAL_35MM,
                  margin: float = 1.1) -> PinholeCamera:
    """A camera that sees a standing person from the front, filling a width x height image.

    joints: (24, 3) SMPL joints in the world (SMPL axes: Y up). The camera stands on the side the
    body faces (the hips' left-right axis crossed with up), level, aimed at the middle of the
    body's extent, as far away as the extent (joints widened by the body's reach) times `margin`
    needs. The default lens is DEFAULT_FOCAL_35MM: what the add-on assumes for a photo with no
    known camera until the fit's camera is known.
    """
    j = np.asarray(joints, dtype=np.float64).reshape(-1, 3)
    up = np.array([0.0, 1.0, 0.0])
    left = j[1] - j[2]                     # left_hip - right_hip
    front = np.cross(left - up * left[1], up)
    if np.linalg.norm(front) < 1e-9:
        front = np.array([0.0, 0.0, 1.0])
    front /= np.linalg.norm(front)
    side = np.cross(up, front)             # the body's left, level
    lo = np.array([(j @ side).min() - _SIDE, j[:, 1].min() - _SOLE])
    hi = np.array([(j @ side).max() + _SIDE, j[:, 1].max() + _HEAD_TOP])
    mid_side, mid_up = (lo + hi) / 2
    depth = float((j @ front).mean())
    f = focal_pixels(focal_35mm, width, height)
    half = (hi - lo) / 2 * margin
    distance = max(half[0] * f / (width / 2), half[1] * f / (height / 2)) + max(0.0, float((j @ front).max()) - depth)
    target = side * mid_side + up * mid_up + front * depth
    centre = target + front * distance
    z = -front
    y = -up
    x = np.cross(y, z)
    R = np.stack([x, y, z])
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return PinholeCamera(K, R, -R @ centre, width, height)


def scaled_camera(cam: dict, scale: float) -> dict:
    """A camera as the protocol sends it ({K, R, t, width, height}): the same view at `scale`
    times the size (pixel centres aligned), at least MIN_IMAGE_SIDE pixels a side."""
    if scale == 1.0:
        return cam
    w, h = (max(MIN_IMAGE_SIDE, round(cam[k] * scale)) for k in ("width", "height"))
    K = np.asarray(cam["K"], dtype=np.float64) * np.array([[w / cam["width"]], [h / cam["height"]], [1.0]])
    return {**cam, "K": K.tolist(), "width": w, "height": h}
