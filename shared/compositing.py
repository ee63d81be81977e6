"""Conventions for compositing the avatar's frames with a scene, used by the backend's EXR
output and the add-on's F12 compositing alike."""
from __future__ import annotations

import numpy as np

EMPTY_DEPTH = 1e10   # depth where no surface is: what Cycles and EEVEE write, so a scene's Z wins there


def srgb_to_linear(c) -> np.ndarray:
    """Decode sRGB-encoded values in 0..1 to linear light (the IEC 61966-2-1 piecewise curve),
    float64: the avatar's frames are sRGB display values, compositors work in linear light."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
