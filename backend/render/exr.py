"""OpenEXR frames for compositing: R, G, B, A (half) and Z (float) in one single-part scanline file.

EXR conventions, as compositors (Blender, Nuke, Natron) expect them:
* RGB is scene-linear and premultiplied by alpha. The avatar's colours are sRGB display values
  in 0..1 (what the model outputs and the PNG frames hold, with straight alpha), so they are
  decoded sRGB -> linear first and then multiplied by alpha.
* A is the alpha.
* Z is the camera depth in metres (z along the camera's axis); where a pixel is empty (its
  stored A is 0) Z is a large finite value, 1e10 by default, as Blender's Cycles writes for the
  background, so a Z-combine puts any scene in front of the empty pixels.

Needs the `OpenEXR` package (ASWF's bindings; pinned in requirements.lock); it is imported only
when a file is written or read, and its absence is an AvatarError that says how to install it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from backend.errors import AvatarError, InputError
from shared.compositing import EMPTY_DEPTH, srgb_to_linear

"""Z of pixels with nothing in them (A == 0): Blender Cycles' background depth."""


class ExrUnavailable(AvatarError):
    """The OpenEXR package is not installed (or does not import)."""


def openexr():
    """The OpenEXR module, or ExrUnavailable with what to do."""
    try:
        import OpenEXR
    except ImportError as exc:
        raise ExrUnavailable(f"EXR output needs the OpenEXR Python package, which does not import here ({exc}); "
                             "install the version pinned in requirements.lock (pip install OpenEXR) "
                             "or use --format png") from None
    return OpenEXR


def write_rgbaz(path, rgba_straight_srgb: np.ndarray, depth: np.ndarray, *, empty_depth: float = EMPTY_DEPTH) -> Path:
    """Write one frame as an EXR file (atomically: a temporary file in the same folder, then
    os.replace, so nobody ever sees a half-written frame).

    rgba_straight_srgb: (H, W, 4) floats in 0..1, sRGB colour with straight (not premultiplied)
    alpha, as Avatar.render_layers gives it; values outside 0..1 are clipped.
    depth: (H, W) camera depth in metres where alpha > 0 (anything where it is 0).
    The file holds linear premultiplied R, G, B and A as half floats and Z as 32-bit float:
    `depth` where the stored A is > 0, `empty_depth` where it is 0 (alphas below half precision,
    < 3e-8, are stored as 0 and count as empty, so A == 0 exactly where Z == empty_depth).
    """
    exr = openexr()
    path = Path(path)
    rgba = np.asarray(rgba_straight_srgb)
    depth = np.asarray(depth)
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ValueError(f"rgba must be (H, W, 4), got {rgba.shape}")
    if depth.shape != rgba.shape[:2]:
        raise ValueError(f"depth must be (H, W) = {rgba.shape[:2]}, got {depth.shape}")
    if not (np.isfinite(rgba).all() and np.isfinite(depth).all() and np.isfinite(empty_depth)):
        raise ValueError("rgba, depth and empty_depth must be finite")
    rgba = np.clip(rgba.astype(np.float64), 0.0, 1.0)
    alpha = rgba[..., 3].astype(np.float16)
    empty = alpha == 0
    # sRGB display values -> linear light, then premultiplied by alpha (EXR's convention)
    rgb = srgb_to_linear(rgba[..., :3]) * alpha.astype(np.float64)[..., None]
    rgb[empty] = 0.0
    z = np.where(empty, empty_depth, depth).astype(np.float32)
    # one contiguous array per channel: the bindings read the buffer as C-ordered (H, W) and
    # ignore the strides of a view such as rgba[..., 0]
    channels = {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2]}
    channels = {k: np.ascontiguousarray(v, dtype=np.float16) for k, v in channels.items()}
    channels["A"] = np.ascontiguousarray(alpha)
    channels["Z"] = np.ascontiguousarray(z)
    header = {"compression": exr.ZIP_COMPRESSION, "type": exr.scanlineimage}

    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e}") from None
    os.close(fd)
    try:
        with exr.File(header, channels) as f:
            f.write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a frame is not a secret
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise InputError(f"cannot write {path}: {e}") from e
        raise
    return path


def read_exr(path) -> dict[str, np.ndarray]:
    """The channels of an EXR file's first part: name -> (H, W) array (float16 for half,
    float32 for float, uint32 for uint), each channel on its own (R, G, B, A not grouped)."""
    exr = openexr()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such EXR file")
    try:
        with exr.File(str(path), separate_channels=True) as f:
            return {name: np.array(ch.pixels, copy=True) for name, ch in f.channels().items()}
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: not a readable EXR file ({e})") from None
