"""Camera convention shared by the backend and the add-on.

Pinhole, OpenCV style: a world point X maps to camera coordinates x = R @ X + t, the
camera looks down +Z with +Y pointing down in the image, and pixel (u, v) = (fx*x/z + cx,
fy*y/z + cy), with u to the right and v downwards, pixel centres at integer + 0.5.
Blender cameras look down -Z with +Y up: converting flips the camera's Y and Z axes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

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
