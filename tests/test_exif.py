"""backend.estimate.exif: focal length and orientation from real JPEG/PNG files written by Pillow.

Expected values are computed here from the definitions, not from the module: a 35 mm-equivalent
focal length f35 spans the full-frame diagonal hypot(36, 24) mm, so in pixels it is
f35 * hypot(w, h) / hypot(36, 24); a real focal length f mm on a sensor s mm wide imaged over
n pixels is f * n / s pixels.
"""
import math

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from backend.estimate.exif import PhotoLens, photo_lens, upright

FULL_FRAME_DIAGONAL = math.hypot(36.0, 24.0)  # 43.26661... mm
ORIENTATION, MAKE, MODEL, EXIF_IFD = 0x0112, 0x010F, 0x0110, 0x8769
FOCAL_35MM, FOCAL_LENGTH = 0xA405, 0x920A
FP_XRES, FP_YRES, FP_UNIT, PIXEL_X, PIXEL_Y = 0xA20E, 0xA20F, 0xA210, 0xA002, 0xA003
RED, WHITE = (255, 0, 0), (255, 255, 255)


def _save(path, size, base=None, exif_ifd=None, fmt="JPEG", corner=False):
    """A white image (red 32 x 32 block at the stored top-left if `corner`) with the given tags."""
    img = Image.new("RGB", size, WHITE)
    if corner:
        img.paste(RED, (0, 0, 32, 32))
    kwargs = {}
    if base or exif_ifd:
        exif = Image.Exif()
        for tag, value in (base or {}).items():
            exif[tag] = value
        ifd = exif.get_ifd(EXIF_IFD)
        for tag, value in (exif_ifd or {}).items():
            ifd[tag] = value
        kwargs["exif"] = exif
    img.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kwargs)
    return path


def _lens(path):
    """(opened image, its upright version, photo_lens on the upright size) as a caller does it."""
    img = Image.open(path)
    up = upright(img)
    return img, up, photo_lens(img, *up.size)


def _camera_tags(unit, unit_mm, orientation=None):
    """An 85 mm shot on a 36 x 24 mm sensor of 6000 x 4000 pixels, FocalPlane resolution in `unit`."""
    per_unit = IFDRational(6000 * round(unit_mm * 10), 36 * 10)  # pixels per unit, exact rational
    base = {MAKE: "Canon", MODEL: "EOS R5"}
    if orientation:
        base[ORIENTATION] = orientation
    return base, {FOCAL_LENGTH: IFDRational(85, 1), FP_XRES: per_unit, FP_YRES: per_unit,
                  FP_UNIT: unit, PIXEL_X: 6000, PIXEL_Y: 4000}


def test_pillow_writes_and_reads_back_the_tags(tmp_path):
    """What the other tests rely on: Pillow round-trips the Exif sub-IFD through a JPEG."""
    base, ifd = _camera_tags(2, 25.4, orientation=6)
    img = Image.open(_save(tmp_path / "c.jpg", (150, 100), base, ifd))
    exif = img.getexif()
    assert exif[ORIENTATION] == 6 and exif[MAKE] == "Canon"
    read = exif.get_ifd(EXIF_IFD)
    assert float(read[FOCAL_LENGTH]) == 85.0
    assert float(read[FP_XRES]) == pytest.approx(6000 / (36 / 25.4), rel=1e-12)
    assert (read[FP_UNIT], read[PIXEL_X], read[PIXEL_Y]) == (2, 6000, 4000)


def test_phone_photo_uses_the_35mm_equivalent(tmp_path):
    path = _save(tmp_path / "phone.jpg", (1008, 756), {MAKE: "Apple", MODEL: "iPhone 13"},
                 {FOCAL_35MM: 26, FOCAL_LENGTH: IFDRational(425, 100)})
    _, up, lens = _lens(path)
    assert up.size == (1008, 756)
    assert lens.source == "exif 35mm-equivalent"
    assert lens.focal_35mm == 26.0
    assert lens.focal_px == pytest.approx(26 * math.hypot(1008, 756) / FULL_FRAME_DIAGONAL, rel=1e-5)


@pytest.mark.parametrize("unit, unit_mm", [(2, 25.4), (3, 10.0), (4, 1.0)])
def test_camera_photo_resized_uses_focal_length_and_sensor(tmp_path, unit, unit_mm):
    """85 mm on a 36 mm wide sensor, captured 6000 px wide, saved 1500 px wide."""
    base, ifd = _camera_tags(unit, unit_mm)
    _, up, lens = _lens(_save(tmp_path / "camera.jpg", (1500, 1000), base, ifd))
    assert up.size == (1500, 1000)
    assert lens.source == "exif focal length + sensor"
    assert lens.focal_px == pytest.approx(85 * 1500 / 36, rel=1e-9)  # 3541.67 px
    assert lens.focal_px == pytest.approx(3541.7, abs=0.05)
    # A full-frame sensor: the 35 mm equivalent is the real focal length (up to 43.2666 rounding).
    assert lens.focal_35mm == pytest.approx(85.0, rel=1e-6)


def test_camera_photo_without_pixel_dimensions_is_taken_as_not_resized(tmp_path):
    base, ifd = _camera_tags(4, 1.0)
    del ifd[PIXEL_X], ifd[PIXEL_Y]
    _, _, lens = _lens(_save(tmp_path / "camera.jpg", (1500, 1000), base, ifd))
    assert lens.source == "exif focal length + sensor"
    assert lens.focal_px == pytest.approx(85 * 6000 / 36, rel=1e-9)  # capture pixels per mm kept
    assert lens.focal_35mm == pytest.approx(85 * 6000 / 36 * FULL_FRAME_DIAGONAL / math.hypot(1500, 1000), rel=1e-6)


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_photo_is_turned_upright(tmp_path, orientation):
    """Stored 200 x 120 sideways; EXIF 6 = turn 90 degrees clockwise to view, 8 = anticlockwise."""
    path = _save(tmp_path / "rot.jpg", (200, 120), {ORIENTATION: orientation},
                 {FOCAL_35MM: 26}, corner=True)
    img = Image.open(path)
    up = upright(img)
    assert img.size == (200, 120) and up.size == (120, 200)
    assert img.getexif()[ORIENTATION] == orientation  # the original keeps its EXIF for photo_lens
    assert ORIENTATION not in up.getexif()
    # The stored top-left block: clockwise it lands top-right, anticlockwise bottom-left.
    red_at = (120 - 16, 16) if orientation == 6 else (16, 200 - 16)
    corners = {(16, 16), (120 - 16, 16), (16, 200 - 16), (120 - 16, 200 - 16)}
    for xy in corners:
        expected = RED if xy == red_at else WHITE
        assert all(abs(a - b) <= 12 for a, b in zip(up.getpixel(xy), expected)), (xy, up.getpixel(xy))
    # The 35 mm equivalent is defined on the diagonal: turning the photo changes nothing.
    assert photo_lens(img, *up.size) == photo_lens(img, *img.size)
    assert photo_lens(img, *up.size).focal_px == pytest.approx(26 * math.hypot(200, 120) / FULL_FRAME_DIAGONAL, rel=1e-5)


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_camera_photo_keeps_its_focal_length(tmp_path, orientation):
    """Scaling by the long sides: a portrait shot stored sideways gives the same pixels."""
    base, ifd = _camera_tags(2, 25.4, orientation=orientation)
    img, up, lens = _lens(_save(tmp_path / "camera.jpg", (1500, 1000), base, ifd))
    assert up.size == (1000, 1500)
    assert lens.source == "exif focal length + sensor"
    assert lens.focal_px == pytest.approx(85 * 1500 / 36, rel=1e-9)
    assert lens.focal_35mm == pytest.approx(85.0, rel=1e-6)
    # EXIF (all but Orientation) survives upright(), so passing the turned image works too.
    assert photo_lens(up, *up.size) == lens


def test_png_without_exif_gets_the_default_lens(tmp_path):
    img, up, lens = _lens(_save(tmp_path / "plain.png", (640, 480), fmt="PNG"))
    assert dict(img.getexif()) == {} and up.size == (640, 480)
    assert lens.source == "default (no EXIF focal length)" and lens.focal_35mm == 50.0
    assert isinstance(lens, PhotoLens)
    assert lens.focal_px == pytest.approx(50 * 800 / FULL_FRAME_DIAGONAL, rel=1e-5)  # 924.5 px


def test_nonsense_35mm_equivalent_falls_through_to_the_sensor(tmp_path):
    base, ifd = _camera_tags(3, 10.0)
    ifd[FOCAL_35MM] = 5000
    _, _, lens = _lens(_save(tmp_path / "camera.jpg", (1500, 1000), base, ifd))
    assert lens.source == "exif focal length + sensor"
    assert lens.focal_px == pytest.approx(85 * 1500 / 36, rel=1e-9)


@pytest.mark.parametrize("ifd", [
    {FOCAL_35MM: 5000, FOCAL_LENGTH: IFDRational(0, 1)},                 # both nonsense
    {FOCAL_35MM: 0, FOCAL_LENGTH: IFDRational(425, 100)},                # phone: no sensor size
    {FOCAL_LENGTH: IFDRational(0, 1), FP_XRES: IFDRational(4233, 1), FP_UNIT: 2},   # zero focal
    {FOCAL_LENGTH: IFDRational(-85, 1), FP_XRES: IFDRational(4233, 1), FP_UNIT: 2},  # negative
    {FOCAL_LENGTH: IFDRational(0, 0), FP_XRES: IFDRational(4233, 1), FP_UNIT: 2},   # 0/0 = NaN
    {FOCAL_LENGTH: IFDRational(85, 1), FP_XRES: IFDRational(0, 0), FP_UNIT: 2},     # NaN resolution
    {FOCAL_LENGTH: IFDRational(85, 1), FP_XRES: IFDRational(4233, 1), FP_UNIT: 1},  # no unit
    # 85 mm at 4233 px/mm over 6000 -> 1500 px: 35 mm equivalent ~ 3.7e6 mm, outside 8..1200
    {FOCAL_LENGTH: IFDRational(85, 1), FP_XRES: IFDRational(4233, 1), FP_UNIT: 4,
     PIXEL_X: 6000, PIXEL_Y: 4000},
])
def test_nonsense_tags_fall_through_to_the_default(tmp_path, ifd):
    _, _, lens = _lens(_save(tmp_path / "bad.jpg", (300, 200), {MAKE: "X"}, ifd))
    assert lens.source == "default (no EXIF focal length)"
    assert lens.focal_35mm == 50.0
    assert lens.focal_px == pytest.approx(50 * math.hypot(300, 200) / FULL_FRAME_DIAGONAL, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("blob", [
    b"Exif\x00\x00garbage, not TIFF",
    # little-endian TIFF whose Exif-IFD pointer (0x8769) points far past the end of the block
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x69\x87\x04\x00\x01\x00\x00\x00\xff\xff\x00\x00",
])
def test_corrupt_exif_counts_as_none(tmp_path, blob):
    path = tmp_path / "corrupt.jpg"
    Image.new("RGB", (300, 200), WHITE).save(path, "JPEG", exif=blob)
    img, up, lens = _lens(path)
    assert up.size == (300, 200)
    assert lens.source == "default (no EXIF focal length)" and lens.focal_35mm == 50.0


def test_35mm_equivalent_range_edges(tmp_path):
    """8 and 1200 mm are accepted, just outside is not (the documented range)."""
    for f35, ok in [(8, True), (1200, True), (7, False), (1201, False)]:
        _, _, lens = _lens(_save(tmp_path / f"f{f35}.jpg", (300, 200), None, {FOCAL_35MM: f35}))
        assert (lens.source == "exif 35mm-equivalent") == ok, f35
        assert lens.focal_35mm == (f35 if ok else 50.0)


def test_bad_size_is_refused():
    with pytest.raises(ValueError):
        photo_lens(Image.new("RGB", (4, 4)), 0, 4)
