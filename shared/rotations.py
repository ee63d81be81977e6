"""Axis-angle rotations (SMPL's pose format) as plain numpy, for both sides."""
from __future__ import annotations

import math

import numpy as np


def rodrigues(rotvec) -> np.ndarray:
    """Axis-angle (3,) radians -> 3x3 rotation matrix."""
    v = np.asarray(rotvec, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * Kx + (1.0 - math.cos(angle)) * (Kx @ Kx)
