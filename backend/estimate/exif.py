"""The camera's focal length and the upright orientation of a photo, from its EXIF data.

What is read (Pillow's `Image.getexif()`; the Exif sub-IFD 0x8769 first, IFD0 as a fallback
for files such as TIFF/EP that keep these tags there):

- Orientation (0x0112, IFD0): phones store the sensor's pixels sideways and record how to turn
  them; `upright` applies it with `PIL.ImageOps.exif_transpose`.
- FocalLengthIn35mmFilm (0xA405): the 35 mm-equivalent focal length in mm.
- FocalLength (0x920A, rational, mm) with FocalPlaneXResolution / FocalPlaneYResolution
  (0xA20E / 0xA20F: pixels per unit of sensor at capture), FocalPlaneResolutionUnit (0xA210:
  2 = inch (the EXIF default when absent), 3 = cm, 4 = mm, 5 = micrometre) and
  PixelXDimension / PixelYDimension (0xA002 / 0xA003: the image's size at capture).

The focal length in pixels of the upright photo as loaded, `width` x `height`, comes from the
first source that gives a sensible value:

1. "exif 35mm-equivalent": focal_px = f35 * hypot(width, height) / 43.2666. A 35 mm-equivalent
   focal length is defined on the diagonal (the full-frame 36 x 24 mm diagonal is 43.2666 mm),
   so it gives the field of view along the image's diagonal: it is the same whichever way the
   photo is turned, and resizing scales the diagonal in pixels with the image. (An aspect-ratio
   crop would change it; EXIF cannot tell.) This is `shared.camera.focal_pixels`.
2. "exif focal length + sensor": px_per_mm = FocalPlaneXResolution (or Y when X is missing) /
   the unit in mm; when both PixelXDimension and PixelYDimension are present the photo may have
   been resized since capture, so scale = max(width, height) / max(PixelX, PixelY) (long sides,
   so a rotation does not matter); focal_px = focal_mm * px_per_mm * scale. Its 35 mm
   equivalent is then focal_px * 43.2666 / hypot(width, height).
3. "default (no EXIF focal length)": focal_35mm = shared.camera.DEFAULT_FOCAL_35MM (50 mm).

Sanity ranges (a source outside them is ignored quietly and the next one is tried): every tag
value used must be a finite number > 0 (FocalPlaneResolutionUnit must be one of 2..5), and the
resulting 35 mm-equivalent focal length must lie in [8, 1200] mm (from a fisheye phone lens to
a long telephoto; outside is a broken tag, e.g. 0 or an unset 65535). An EXIF block that Pillow
cannot parse counts as no EXIF.
"""
from __future__ import annotations

import dataclasses
import math

from PIL import Image, ImageOps

from shared.camera import DEFAULT_FOCAL_35MM, focal_pixels

_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405
_FOCAL_LENGTH = 0x920A
_FOCAL_PLANE_X_RES, _FOCAL_PLANE_Y_RES, _FOCAL_PLANE_UNIT = 0xA20E, 0xA20F, 0xA210
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
# FocalPlaneResolutionUnit -> millimetres per unit (1 = "no absolute unit" is unusable).
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_DEFAULT_UNIT = 2
# Accepted 35 mm-equivalent focal lengths (mm); anything outside is taken as a broken tag.
MIN_FOCAL_35MM, MAX_FOCAL_35MM = 8.0, 1200.0

SOURCE_35MM = "exif 35mm-equivalent"
SOURCE_SENSOR = "exif focal length + sensor"
SOURCE_DEFAULT = "default (no EXIF focal length)"


@dataclasses.dataclass(frozen=True)
class PhotoLens:
    focal_px: float      # focal length in pixels of the upright photo as loaded (after exif_transpose)
    focal_35mm: float    # the 35 mm-equivalent focal length (on the full-frame diagonal, 43.27 mm)
    source: str          # "exif 35mm-equivalent", "exif focal length + sensor", or "default (no EXIF focal length)"


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag says (phones store rotated pixels).

    A new image (a copy when there is nothing to turn); `img` itself, and its EXIF, are left
    as they were. The result's EXIF no longer carries the Orientation tag.
    """
    return ImageOps.exif_transpose(img)


def photo_lens(img: Image.Image, width: int, height: int) -> PhotoLens:
    """img: the image as opened (EXIF still readable: pass the original, before upright());
    width, height: the upright image's size in pixels.

    The focal length from FocalLengthIn35mmFilm, else from FocalLength and the sensor's
    FocalPlane resolution, else DEFAULT_FOCAL_35MM; a source whose values are not finite and
    > 0, or whose 35 mm equivalent falls outside [MIN_FOCAL_35MM, MAX_FOCAL_35MM] = [8, 1200] mm,
    is skipped. See the module docstring for the formulas.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    tags = _exif_tags(img)
    per_35mm = focal_pixels(1.0, width, height)  # pixels per mm of 35 mm-equivalent focal length

    f35 = _positive(tags.get(_FOCAL_35MM))
    if f35 is not None and MIN_FOCAL_35MM <= f35 <= MAX_FOCAL_35MM:
        return PhotoLens(f35 * per_35mm, f35, SOURCE_35MM)

    focal_px = _sensor_focal_px(tags, width, height)
    if focal_px is not None:
        f35 = focal_px / per_35mm
        if MIN_FOCAL_35MM <= f35 <= MAX_FOCAL_35MM:
            return PhotoLens(focal_px, f35, SOURCE_SENSOR)

    return PhotoLens(DEFAULT_FOCAL_35MM * per_35mm, DEFAULT_FOCAL_35MM, SOURCE_DEFAULT)


def _exif_tags(img: Image.Image) -> dict:
    """IFD0 tags overlaid by the Exif sub-IFD's ({} when there is no EXIF or it is unreadable)."""
    try:
        exif = img.getexif()
        tags = dict(exif)
        tags.update(exif.get_ifd(_EXIF_IFD))
    except Exception:  # a corrupt EXIF block (Pillow raises assorted errors) counts as none
        return {}
    return tags


def _positive(value) -> float | None:
    """A tag value as a finite float > 0, else None (missing, zero, negative, NaN, not a number)."""
    if isinstance(value, (tuple, list)):  # a count-1 array some writers produce
        if len(value) != 1:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _sensor_focal_px(tags: dict, width: int, height: int) -> float | None:
    """FocalLength (mm) times the sensor's pixels per mm at capture, rescaled to the current size."""
    focal_mm = _positive(tags.get(_FOCAL_LENGTH))
    resolution = _positive(tags.get(_FOCAL_PLANE_X_RES)) or _positive(tags.get(_FOCAL_PLANE_Y_RES))
    unit = _positive(tags.get(_FOCAL_PLANE_UNIT, _DEFAULT_UNIT))
    unit_mm = _UNIT_MM.get(int(unit)) if unit is not None and unit == int(unit) else None
    if focal_mm is None or resolution is None or unit_mm is None:
        return None
    scale = 1.0
    captured_x, captured_y = _positive(tags.get(_PIXEL_X)), _positive(tags.get(_PIXEL_Y))
    if captured_x is not None and captured_y is not None:
        scale = max(width, height) / max(captured_x, captured_y)
    return focal_mm * resolution / unit_mm * scale
