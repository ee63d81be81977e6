"""backend/inputs.py: photos, masks and body parameters load exactly, and bad input is refused
with an InputError naming the file and the problem. All files are made in tmp_path."""
import json
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.inputs import (SMPL_BETAS_NOTE, BodyParams, betas_for_body, load_elicit_folder,
                            load_fit_inputs, load_image, load_mask, load_params_json,
                            load_params_npz, write_params_json)
from shared.camera import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, PinholeCamera

H, W = 24, 32  # non-square on purpose: catches width/height swaps


def _rng(seed=0):
    return np.random.default_rng(seed)


def _rgb(h=H, w=W, seed=0):
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, arr, mode=None, **kw):
    Image.fromarray(arr, mode).save(path, **kw)
    return path


def _raises(fn, *args, contains=(), **kw):
    """Call fn, expect InputError; every string in `contains` must be in the message."""
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    for part in contains:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def _rotation(axis, angle):
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def _npz(path, pose=None, shape=None, global_t=None, focal_l=1200.0, **extra):
    arrays = {"pose": _rng(1).uniform(-1, 1, (1, 72)) if pose is None else pose,
              "shape": _rng(2).normal(size=(1, 10)) if shape is None else shape,
              "global_t": np.array([[0.05, 0.2, 5.0]]) if global_t is None else global_t}
    if focal_l is not None:
        arrays["focal_l"] = np.array(focal_l)
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def _json_doc(**overrides):
    doc = {"format": "avatar-body-params", "version": 1, "body_model": "smpl",
           "pose": _rng(3).uniform(-1, 1, 72).tolist(), "shape": [0.5] * 10,
           "global_t": [0.0, 0.1, 4.0],
           "camera": {"width": W, "height": H, "focal_l": 500.0}}
    doc.update(overrides)
    return doc


def _write_json(path, doc):
    path.write_text(json.dumps(doc, indent=2))
    return path


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds no pixels: tests size limits cheaply."""
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- photos

def test_rgb_png_exact(tmp_path):
    arr = _rgb()
    rgb, alpha = load_image(_save(tmp_path / "p.png", arr))
    assert rgb.dtype == np.float32 and rgb.shape == (H, W, 3) and alpha is None
    np.testing.assert_array_equal(rgb, arr.astype(np.float32) / 255)


def test_rgba_png_alpha_becomes_mask_rgb_untouched(tmp_path):
    arr = np.dstack([_rgb(), np.zeros((H, W), np.uint8)])
    arr[4:20, 8:24, 3] = 255
    arr[4, 8, 3] = 128  # a soft edge value survives
    path = _save(tmp_path / "cutout.png", arr)
    rgb, alpha = load_image(path)
    np.testing.assert_array_equal(rgb, arr[..., :3] / np.float32(255))  # not composited
    np.testing.assert_array_equal(alpha, arr[..., 3] / np.float32(255))
    fit = load_fit_inputs(path, params=_write_json(tmp_path / "p.json", _json_doc()))
    assert fit.mask_source == "alpha" and fit.mask.dtype == np.float32
    np.testing.assert_array_equal(fit.mask, alpha)
    np.testing.assert_array_equal(fit.image, rgb)


def test_opaque_alpha_counts_as_none(tmp_path):
    arr = np.dstack([_rgb(), np.full((H, W), 255, np.uint8)])
    path = _save(tmp_path / "opaque.png", arr)
    assert load_image(path)[1] is None
    fit = load_fit_inputs(path, params=_write_json(tmp_path / "p.json", _json_doc()))
    assert fit.mask is None and fit.mask_source == "none" and fit.warnings == []


def test_jpg(tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    arr = np.dstack([xx * 7, yy * 9, np.full_like(xx, 128)]).astype(np.uint8)  # smooth: JPEG-friendly
    rgb, alpha = load_image(_save(tmp_path / "photo.jpg", arr, quality=95))
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.float32 and alpha is None
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert np.abs(rgb - arr / 255).mean() < 0.02


def test_16bit_png_keeps_precision(tmp_path):
    arr = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 83 + 1)  # not multiples of 257
    rgb, alpha = load_image(_save(tmp_path / "deep.png", arr))
    assert alpha is None and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 0], arr / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert len(np.unique(np.round(rgb[..., 0] * 255))) < len(np.unique(rgb[..., 0]))  # > 8 bits


def test_16bit_colour_png_keeps_precision(tmp_path):
    import cv2

    rgba = _rng(4).integers(0, 65536, (H, W, 4)).astype(np.uint16)
    rgba[0, 0, 3] = 12345
    cv2.imwrite(str(tmp_path / "deep_rgba.png"), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    rgb, alpha = load_image(tmp_path / "deep_rgba.png")
    assert rgb.dtype == np.float32 and alpha.dtype == np.float32
    np.testing.assert_allclose(rgb, rgba[..., :3] / 65535.0, atol=1e-7)
    np.testing.assert_allclose(alpha, rgba[..., 3] / 65535.0, atol=1e-7)
    cv2.imwrite(str(tmp_path / "deep_rgb.png"), rgba[..., 2::-1])
    rgb, alpha = load_image(tmp_path / "deep_rgb.png")
    assert alpha is None
    np.testing.assert_allclose(rgb, rgba[..., :3] / 65535.0, atol=1e-7)


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_rgb())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": phones store portrait shots like this
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    rgb, _ = load_image(tmp_path / "phone.jpg")
    assert rgb.shape == (W, H, 3)


def test_palette_png_with_transparency(tmp_path):
    idx = np.zeros((H, W), np.uint8)
    idx[5:15, 6:20] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.save(tmp_path / "pal.png", transparency=0)
    rgb, alpha = load_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(alpha, idx.astype(np.float32))
    np.testing.assert_array_equal(rgb[10, 10], [0, 1, 0])
    np.testing.assert_array_equal(rgb[0, 0], [1, 0, 0])


def test_grey_with_alpha_png(tmp_path):
    arr = np.dstack([np.full((H, W), 100, np.uint8), np.full((H, W), 128, np.uint8)])
    rgb, alpha = load_image(_save(tmp_path / "la.png", arr, "LA"))
    np.testing.assert_allclose(rgb, 100 / 255, atol=1e-7)
    np.testing.assert_allclose(alpha, 128 / 255, atol=1e-7)


def test_missing_photo(tmp_path):
    _raises(load_image, tmp_path / "nope.png", contains=("nope.png", "not found"))


def test_text_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _raises(load_image, path, contains=("notes.png", "not an image"))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])  # Pillow / OpenCV decoders
def test_truncated_png(tmp_path, dtype):
    pixels = _rng().integers(0, np.iinfo(dtype).max, (64, 64, 3)).astype(dtype)  # incompressible
    path = tmp_path / "cut.png"
    if dtype == np.uint8:
        _save(path, pixels)
    else:
        import cv2
        cv2.imwrite(str(path), pixels)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _raises(load_image, path, contains=("cut.png", "truncated"))


@pytest.mark.parametrize("w,h", [(9000, 9000), (20000, 20000), (MAX_IMAGE_SIDE + 1, 100)])
def test_too_large_refused_from_header(tmp_path, w, h):
    path = _png_header_only(tmp_path / "huge.png", w, h)  # no pixels: never decoded
    msg = _raises(load_image, path, contains=("huge.png", str(MAX_IMAGE_SIDE)))
    if w * h < 150_000_000:  # Pillow itself refuses the largest before we see the size
        assert f"{w}x{h}" in msg


def test_too_large_real_image(tmp_path):
    path = _save(tmp_path / "wide.png", np.zeros((10, 9000), np.uint8))
    _raises(load_image, path, contains=("wide.png", "9000x10", str(MAX_IMAGE_SIDE)))


def test_too_small(tmp_path):
    path = _save(tmp_path / "tiny.png", _rgb(8, 8))
    _raises(load_image, path, contains=("tiny.png", "8x8", str(MIN_IMAGE_SIDE)))


def test_size_limits_are_inclusive(tmp_path):
    rgb, _ = load_image(_save(tmp_path / "min.png", _rgb(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)))
    assert rgb.shape == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE, 3)


def test_animation_refused(tmp_path):
    frames = [Image.fromarray(_rgb(seed=s)) for s in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    _raises(load_image, tmp_path / "anim.gif", contains=("anim.gif", "2 frames"))


# --------------------------------------------------------------------------- masks

def test_mask_binary_stays_binary_and_soft_stays_soft(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[3:20, 5:25] = 255
    mask = load_mask(_save(tmp_path / "m.png", m), (H, W))
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    m[3, 5] = 64
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "s.png", m), (H, W)), m / np.float32(255))


def test_mask_rgb_and_rgba(tmp_path):
    m = np.zeros((H, W, 3), np.uint8)
    m[3:20, 5:25] = (255, 0, 0)  # a single-colour mask counts as foreground
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "red.png", m), (H, W)),
                                  (m[..., 0] > 0).astype(np.float32))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[3:20, 5:25, 3] = 255  # white everywhere, the shape is in alpha
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "a.png", rgba), (H, W)),
                                  rgba[..., 3] / np.float32(255))


def test_mask_size_mismatch(tmp_path):
    path = _save(tmp_path / "mask.png", np.full((H, W + 1), 255, np.uint8))
    _raises(load_mask, path, (H, W), contains=("mask.png", f"{W + 1}x{H}", f"{W}x{H}"))


def test_empty_mask(tmp_path):
    path = _save(tmp_path / "blank.png", np.zeros((H, W), np.uint8))
    _raises(load_mask, path, (H, W), contains=("blank.png", "empty"))


# --------------------------------------------------------------------------- ELICIT folder

def _elicit_folder(folder, with_mask=True, **npz):
    folder.mkdir()
    _save(folder / "gt_image.png", _rgb())
    if with_mask:
        m = np.zeros((H, W), np.uint8)
        m[2:22, 8:24] = 255
        _save(folder / "gt_mask.png", m)
    _npz(folder / "gt_params.npz", **npz)
    return folder


def test_elicit_folder_round_trip(tmp_path):
    folder = _elicit_folder(tmp_path / "subject")
    fit = load_elicit_folder(folder)
    data = np.load(folder / "gt_params.npz")
    assert fit.params.pose.dtype == np.float64 and fit.params.pose.shape == (72,)
    np.testing.assert_array_equal(fit.params.pose, data["pose"][0])
    np.testing.assert_array_equal(fit.params.betas, data["shape"][0])
    np.testing.assert_array_equal(fit.params.transl, data["global_t"][0])
    assert fit.params.source_model == "smpl" and SMPL_BETAS_NOTE in fit.params.notes
    np.testing.assert_array_equal(fit.camera.K, [[1200, 0, W / 2], [0, 1200, H / 2], [0, 0, 1]])
    np.testing.assert_array_equal(fit.camera.R, np.eye(3))
    np.testing.assert_array_equal(fit.camera.t, np.zeros(3))
    assert (fit.camera.width, fit.camera.height) == (W, H)
    assert fit.mask_source == "file" and set(np.unique(fit.mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(fit.image, _rgb() / np.float32(255))
    assert fit.photo_path == folder / "gt_image.png" and fit.warnings == []
    assert betas_for_body(fit.params, "open_body") is None
    np.testing.assert_array_equal(betas_for_body(fit.params, "smpl"), data["shape"][0])


def test_elicit_flat_arrays_accepted(tmp_path):
    path = _npz(tmp_path / "flat.npz", pose=np.zeros(72), shape=np.zeros(10),
                global_t=np.array([0, 0, 3.0]), focal_l=np.array([800.0]))
    params, camera = load_params_npz(path, (H, W))
    assert params.pose.shape == (72,) and params.betas.shape == (10,) and camera.K[0, 0] == 800


def test_elicit_folder_without_mask(tmp_path):
    fit = load_elicit_folder(_elicit_folder(tmp_path / "s", with_mask=False))
    assert fit.mask is None and fit.mask_source == "none"


def test_elicit_folder_missing_file_lists_contents(tmp_path):
    folder = _elicit_folder(tmp_path / "s")
    (folder / "gt_params.npz").unlink()
    _raises(load_elicit_folder, folder, contains=("gt_params.npz", "gt_image.png, gt_mask.png"))
    _raises(load_elicit_folder, tmp_path / "absent", contains=("absent", "not found"))


def test_elicit_global_r_folds_into_camera(tmp_path):
    rotvec = np.array([0.3, -0.2, 0.1])
    th = np.array([0.1, 0.2, 4.0])
    params, cam = load_params_npz(_npz(tmp_path / "g.npz", global_t=th[None], global_r=rotvec[None]),
                                  (H, W))
    # ELICIT: the posed body v lands at Rh v + Th in camera space; ours: R (v + transl) + t.
    v = _rng(5).normal(size=(7, 3))
    Rh = _rotation(rotvec, np.linalg.norm(rotvec))
    expected = PinholeCamera.from_focal(1200.0, W, H).project(v @ Rh.T + th)
    np.testing.assert_allclose(cam.project(v + params.transl), expected, atol=1e-9)


def test_elicit_intrinsics_extrinsics_variant(tmp_path):
    K = np.array([[900.0, 0, 15], [0, 910.0, 13], [0, 0, 1]])
    E = np.eye(4)
    E[:3, :3] = _rotation([0, 1, 0], 0.2)
    E[:3, 3] = [0.1, 0, 0.5]
    _, cam = load_params_npz(_npz(tmp_path / "ke.npz", focal_l=None, intrinsics=K, extrinsics=E),
                             (H, W))
    np.testing.assert_array_equal(cam.K, K)
    np.testing.assert_array_equal(cam.R, E[:3, :3])
    np.testing.assert_array_equal(cam.t, E[:3, 3])


@pytest.mark.parametrize("kw,contains", [
    ({"pose": np.zeros((1, 69))}, ("'pose'", "69 values", "expected 72")),
    ({"pose": np.zeros((2, 72))}, ("'pose'", "(2, 72)")),
    ({"pose": np.where(np.arange(72) == 5, np.nan, 0.0)[None]}, ("'pose'", "NaN")),
    ({"pose": np.full((1, 72), 90.0)}, ("'pose'", "radians")),
    ({"global_t": np.array([[0.0, np.inf, 3.0]])}, ("'global_t'", "Inf")),
    ({"global_t": np.array([[0.0, 100.0, 5000.0]])}, ("'global_t'", "metres")),
    ({"focal_l": None}, ("'focal_l'", "holds")),
    ({"focal_l": -5.0}, ("'focal_l'", "> 0")),
    ({"focal_l": 0.0}, ("'focal_l'", "> 0")),
    ({"shape": np.array([["a"] * 10])}, ("'shape'", "numeric")),
])
def test_bad_npz(tmp_path, kw, contains):
    path = _npz(tmp_path / "gt_params.npz", **kw)
    _raises(load_params_npz, path, (H, W), contains=("gt_params.npz", *contains))


def test_npz_not_an_archive_or_pickled(tmp_path):
    text = tmp_path / "params.npz"
    text.write_text("pose = 0\n")
    _raises(load_params_npz, text, (H, W), contains=("params.npz", "not an .npz"))
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, pose=np.array([object()], dtype=object), shape=np.zeros(10),
             global_t=np.zeros(3), focal_l=np.array(1.0))
    _raises(load_params_npz, pickled, (H, W), contains=("obj.npz", "pickled"))


# --------------------------------------------------------------------------- JSON

def _camera():
    K = np.array([[510.25, 0.0, 15.75], [0.0, 505.5, 12.125], [0.0, 0.0, 1.0]])
    return PinholeCamera(K, _rotation([0.2, 1.0, -0.1], 0.7), np.array([0.01, -0.02, 0.3]), W, H)


@pytest.mark.parametrize("model,n_betas", [("smpl", 10), ("open_body", 16), ("open_body", 0)])
def test_json_round_trip_exact(tmp_path, model, n_betas):
    rng = _rng(7)
    params = BodyParams(rng.uniform(-np.pi, np.pi, 72), rng.normal(size=n_betas),
                        np.array([0.123456789012345, -0.2, 4.5]), model)
    path = tmp_path / "body.json"
    write_params_json(path, params, _camera())
    assert [p.name for p in tmp_path.iterdir()] == ["body.json"]  # no temp file left behind
    assert json.loads(path.read_text())["format"] == "avatar-body-params"
    back, cam = load_params_json(path, (H, W))
    for a, b in ((back.pose, params.pose), (back.betas, params.betas), (back.transl, params.transl),
                 (cam.K, _camera().K), (cam.R, _camera().R), (cam.t, _camera().t)):
        np.testing.assert_array_equal(a, b)
    assert back.source_model == model and (cam.width, cam.height) == (W, H)
    assert (SMPL_BETAS_NOTE in back.notes) == (model == "smpl" and n_betas > 0)
    assert (betas_for_body(back, "open_body") is None) == (model != "open_body")


def test_json_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "body.json"
    path.write_text("old")
    params = BodyParams(np.zeros(72), np.zeros(0), np.array([0, 0, 3.0]), "open_body")
    write_params_json(path, params, _camera())
    assert load_params_json(path, (H, W))[0].transl[2] == 3.0


def test_json_focal_l_and_defaults(tmp_path):
    doc = _json_doc()
    del doc["shape"]
    params, cam = load_params_json(_write_json(tmp_path / "f.json", doc), (H, W))
    np.testing.assert_array_equal(cam.K, [[500, 0, W / 2], [0, 500, H / 2], [0, 0, 1]])
    np.testing.assert_array_equal(cam.R, np.eye(3))
    assert params.betas.shape == (0,) and params.source_model == "smpl"


def test_json_unknown_fields_noted(tmp_path):
    params, _ = load_params_json(_write_json(tmp_path / "typo.json", _json_doc(global_T=[0, 0, 1])),
                                 (H, W))
    assert any("global_T" in n for n in params.notes)


def test_json_syntax_error_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "avatar-body-params",\n  "version": 1,,\n}\n')
    _raises(load_params_json, path, (H, W), contains=("broken.json", "syntax error", "line 3"))


def _bad_camera(**kw):
    cam = {"width": W, "height": H, "focal_l": 500.0}
    cam.update(kw)
    return {k: v for k, v in cam.items() if v is not None}


@pytest.mark.parametrize("overrides,contains", [
    ({"version": 2}, ("'version'", "2", "version 1")),
    ({"version": True}, ("'version'",)),
    ({"format": "something-else"}, ("'format'", "something-else")),
    ({"pose": [0.0] * 69}, ("'pose'", "69 values", "expected 72")),
    ({"pose": [0.0] * 71 + [float("nan")]}, ("'pose'", "NaN")),
    ({"pose": [0.0] * 71 + ["x"]}, ("'pose'", "only numbers", '"x"')),
    ({"pose": [0.0] * 71 + [True]}, ("'pose'", "true")),
    ({"pose": [0.0] * 71 + [None]}, ("'pose'", "null")),
    ({"pose": None}, ("'pose'",)),
    ({"global_t": [0.0, float("inf"), 3.0]}, ("'global_t'", "Inf")),
    ({"global_t": [0.0, 0.0]}, ("'global_t'", "2 values", "expected 3")),
    ({"body_model": ""}, ("'body_model'",)),
    ({"camera": _bad_camera(width=W + 1)}, ("camera", f"{W + 1}x{H}", f"{W}x{H}")),
    ({"camera": _bad_camera(height=None)}, ("'height'",)),
    ({"camera": _bad_camera(width=32.0)}, ("'camera.width'",)),
    ({"camera": _bad_camera(focal_l=None)}, ("'K'", "'focal_l'")),
    ({"camera": _bad_camera(K=np.eye(3).tolist())}, ("exactly one",)),
    ({"camera": _bad_camera(focal_l=-1.0)}, ("'camera.focal_l'", "> 0")),
    ({"camera": _bad_camera(focal_l=None, K=[[-5, 0, 16], [0, 5, 12], [0, 0, 1]])},
     ("'camera.K'", "> 0")),
    ({"camera": _bad_camera(focal_l=None, K=[[5, 0, 16], [0, 5, 12], [0, 1, 1]])},
     ("'camera.K'", "form")),
    ({"camera": _bad_camera(R=[[1, 0, 0], [0, 2, 0], [0, 0, 1]])}, ("'camera.R'", "not a rotation")),
    ({"camera": _bad_camera(R=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]])}, ("'camera.R'", "det = -1")),
    ({"camera": _bad_camera(R=[[1, 0], [0, 1]])}, ("'camera.R'", "(2, 2)")),
    ({"camera": _bad_camera(t=[0, 0, 5000.0])}, ("'camera.t'", "metres")),
])
def test_bad_json(tmp_path, overrides, contains):
    doc = _json_doc(**{k: v for k, v in overrides.items() if v is not None})
    doc = {k: v for k, v in doc.items() if overrides.get(k, 0) is not None}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(doc))  # Python's json writes NaN / Infinity literals
    _raises(load_params_json, path, (H, W), contains=("params.json", *contains))


def test_json_not_an_object_or_text(tmp_path):
    arr = tmp_path / "list.json"
    arr.write_text("[1, 2]")
    _raises(load_params_json, arr, (H, W), contains=("list.json", "object"))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    _raises(load_params_json, binary, (H, W), contains=("bin.json", "UTF-8"))


def test_write_refuses_invalid(tmp_path):
    bad = BodyParams(np.full(72, np.nan), np.zeros(10), np.zeros(3), "smpl")
    _raises(write_params_json, tmp_path / "out.json", bad, _camera(), contains=("out.json", "NaN"))
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- load_fit_inputs

def test_fit_inputs_mask_file_wins_over_alpha(tmp_path):
    arr = np.dstack([_rgb(), np.zeros((H, W), np.uint8)])
    arr[2:10, 2:10, 3] = 255
    photo = _save(tmp_path / "photo.png", arr)
    m = np.zeros((H, W), np.uint8)
    m[5:20, 5:20] = 255
    mask = _save(tmp_path / "mask.png", m)
    fit = load_fit_inputs(photo, mask=mask, params=_write_json(tmp_path / "p.json", _json_doc()))
    assert fit.mask_source == "file"
    np.testing.assert_array_equal(fit.mask, m / np.float32(255))
    assert any("alpha" in w for w in fit.warnings)


def test_fit_inputs_warnings(tmp_path):
    photo = _save(tmp_path / "photo.png", _rgb())
    mask = _save(tmp_path / "full.png", np.full((H, W), 255, np.uint8))
    behind = _write_json(tmp_path / "behind.json", _json_doc(global_t=[0, 0, -2.0]))
    fit = load_fit_inputs(photo, mask=mask, params=behind)
    assert any("inverted" in w for w in fit.warnings)
    assert any("behind" in w and "behind.json" in w for w in fit.warnings)


def test_fit_inputs_errors(tmp_path):
    photo = _save(tmp_path / "photo.png", _rgb())
    photo_only = load_fit_inputs(photo)       # no parameters: the body is estimated later, the lens guessed
    assert photo_only.params is None and photo_only.lens_source == "default (no EXIF focal length)"
    assert photo_only.camera.K[0, 0] == pytest.approx(50.0 * np.hypot(W, H) / 43.2666, rel=1e-4)
    _raises(load_fit_inputs, None, contains=("no photo",))
    other = tmp_path / "params.yaml"
    other.write_text("pose: []")
    _raises(load_fit_inputs, photo, params=other, contains=("params.yaml", ".yaml"))
    # an ELICIT camera always follows the photo; ours must match it
    wrong = _write_json(tmp_path / "p.json", _json_doc(camera={"width": 64, "height": 48,
                                                               "focal_l": 500.0}))
    _raises(load_fit_inputs, photo, params=wrong, contains=("p.json", "64x48", f"{W}x{H}"))
