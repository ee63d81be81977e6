"""The photo, mask and body parameters of a fit, loaded and validated.

Everything a user hands us passes through here, so every problem becomes an InputError that
names the file, the field, what is wrong and (where we can tell) what to do. Downstream code
can then trust shapes, dtypes and ranges. Formats and conventions: docs/inputs.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import warnings as pywarnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import InputError
from shared.camera import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, PinholeCamera
from shared.rotations import rodrigues
from shared.smpl import POSE_DIM

PARAMS_FORMAT = "avatar-body-params"
PARAMS_VERSION = 1
SMPL = "smpl"

MAX_TRANSL_M = 1000.0          # beyond this a translation is in the wrong unit (mm?), not metres
MAX_POSE_RAD = 4.0 * math.pi   # axis-angle never needs more than 2*pi; 4*pi leaves slack, degrees fail
MAX_BETAS = 300                # SMPL-X has 300 shape components; more is a malformed file
ROTATION_TOL = 1e-4
STRUCT_TOL = 1e-6              # the fixed zeros / one of K
FOREGROUND = 0.5               # a mask value at or above this marks the person
INVERTED_MASK_FRACTION = 0.95  # a "person" covering more of the photo than this is suspicious

ELICIT_IMAGE, ELICIT_MASK, ELICIT_PARAMS = "gt_image.png", "gt_mask.png", "gt_params.npz"

SMPL_BETAS_NOTE = ("the 'shape' betas were made for SMPL and do not transfer to the built-in "
                   "open body: there they are ignored and fitting recovers the shape from the "
                   "photo (they are used as given only with a real SMPL model)")


@dataclasses.dataclass
class BodyParams:
    pose: np.ndarray          # (72,) float64 axis-angle, radians: global orientation + 23 joints
    betas: np.ndarray         # (N,) float64 shape coefficients of `source_model`; N may be 0
    transl: np.ndarray        # (3,) float64 metres, added to the posed body (world frame)
    source_model: str         # the body model the values were made for: "smpl", "open_body", ...
    notes: list[str] = dataclasses.field(default_factory=list)  # caveats for the consumer


@dataclasses.dataclass
class FitInputs:
    image: np.ndarray             # (H, W, 3) float32 in [0, 1], RGB, never composited
    mask: np.ndarray | None       # (H, W) float32 in [0, 1]; None: derive one (GrabCut) later
    mask_source: str              # "file", "alpha" or "none"
    params: BodyParams | None     # None: photo only (the body is estimated from the photo)
    camera: PinholeCamera
    photo_path: Path
    warnings: list[str] = dataclasses.field(default_factory=list)
    lens_source: str = "params"   # where the camera's focal length came from (backend.estimate.exif)


def betas_for_body(params: BodyParams, body_name: str) -> np.ndarray | None:
    """The betas if they mean something for `body_name`, else None (shape must be fitted).

    Shape spaces are model specific: SMPL's first beta is not the open body's first beta.
    """
    return params.betas.copy() if body_name == params.source_model else None


# --------------------------------------------------------------------------- images

def _require_file(path: Path, role: str) -> None:
    if not path.exists():
        raise InputError(f"{role} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{role} path is not a file: {path}")


def _check_size(width: int, height: int, path: Path) -> None:
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(f"{path}: the image is {width}x{height} pixels; the largest accepted side "
                         f"is {MAX_IMAGE_SIDE} px. Resize it (the body needs far fewer pixels).")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{path}: the image is {width}x{height} pixels; the smallest accepted "
                         f"side is {MIN_IMAGE_SIDE} px.")


def _pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded Pillow image -> (float32 HxWx3 in [0,1], float32 HxW alpha or None)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale PNGs decode to these modes; keep all 16 bits ("I" may hold wider
        # integers from other formats: read as 16-bit and clipped, as documented).
        gray = np.clip(np.asarray(img, dtype=np.float64) / 65535.0, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2).astype(np.float32), None
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2).astype(np.float32), None
    # Palette and greyscale images can carry transparency in img.info (PNG tRNS), not a band.
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / np.float32(255)
    if not has_alpha:
        return arr, None
    alpha = np.ascontiguousarray(arr[..., 3])
    return np.ascontiguousarray(arr[..., :3]), (None if alpha.min() >= 1.0 else alpha)


def _is_16bit_colour_png(path: Path) -> bool:
    """Pillow reads 16-bit colour (and grey+alpha) PNGs at 8 bits; these go to OpenCV."""
    with open(path, "rb") as f:
        head = f.read(26)  # signature + IHDR: bit depth at byte 24, colour type at 25
    return (head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and head[24] == 16 and head[25] in (2, 4, 6))  # RGB, grey+alpha, RGBA


def _decode_16bit_png(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2  # only needed here; keeps the module light to import

    arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise ValueError("OpenCV could not decode the 16-bit PNG")
    arr = (arr.astype(np.float64) / 65535.0).astype(np.float32)
    rgb = np.ascontiguousarray(arr[..., 2::-1])  # BGR(A) -> RGB; grey+alpha arrives as BGRA
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
    return rgb, (None if alpha is None or alpha.min() >= 1.0 else alpha)


def _read_image(path, role: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(path)
    _require_file(path, role)
    try:
        # Our own side limit applies; Pillow's bomb warning would only duplicate it.
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: the image is far larger than the accepted {MAX_IMAGE_SIDE} px "
                         f"per side ({e})") from e
    except UnidentifiedImageError as e:
        raise InputError(f"{path}: not an image Pillow can read (is it really a PNG/JPG "
                         f"image, not renamed text or another format?)") from e
    except OSError as e:
        raise InputError(f"{path}: cannot open the {role} ({e})") from e
    with img:
        # Pillow opens lazily: the header gives the size before any pixel is decoded.
        _check_size(*img.size, path)
        try:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{path}: an animation or multi-page image ({frames} frames); "
                                 f"save the one frame to use as a PNG")
            if img.format == "PNG" and _is_16bit_colour_png(path):
                return _decode_16bit_png(path)
            # Phones store portrait shots sideways plus an EXIF rotation: show what the user sees.
            return _pixels(ImageOps.exif_transpose(img))
        except InputError:
            raise
        except Exception as e:
            # Decoders raise many types on corrupt data (OSError, SyntaxError, ValueError,
            # struct/zlib errors...); any of them means this file cannot be used.
            raise InputError(f"{path}: the image data is damaged or truncated and cannot be "
                             f"decoded ({type(e).__name__}: {e})") from e


def load_image(path) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo -> (RGB float32 HxWx3 in [0,1], alpha float32 HxW, None if absent or opaque)."""
    return _read_image(path, "photo")


def load_mask(path, expected_hw: tuple[int, int]) -> np.ndarray:
    """A mask image of the photo's size -> float32 HxW in [0,1], white (1) marking the person.

    Values are kept as they are (soft edges stay soft, 0/255 masks give exactly 0/1). A
    transparent mask image uses its alpha; otherwise the brightest channel counts, so white,
    grey or single-colour masks on black all work.
    """
    path = Path(path)
    rgb, alpha = _read_image(path, "mask")
    mask = alpha if alpha is not None else rgb.max(axis=2)
    H, W = (int(v) for v in expected_hw)
    if mask.shape != (H, W):
        raise InputError(f"{path}: the mask is {mask.shape[1]}x{mask.shape[0]} pixels but the "
                         f"photo is {W}x{H}; the mask must have the photo's size")
    if not (mask >= FOREGROUND).any():
        raise InputError(f"{path}: the mask is empty (no pixel reaches {FOREGROUND}); white must "
                         f"mark the person")
    return np.ascontiguousarray(mask, dtype=np.float32)


# --------------------------------------------------------------------------- numbers

def _first_non_number(value) -> str | None:
    """The first JSON value that is not a number (bools and null included), as JSON text."""
    if isinstance(value, list):
        for v in value:
            bad = _first_non_number(v)
            if bad is not None:
                return bad
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value)[:40]
    return None


def _array(value, where: Path, field: str) -> np.ndarray:
    """A JSON list or npz array -> float64 array, refusing anything non-numeric."""
    if isinstance(value, np.ndarray):
        if value.dtype == bool or not (np.issubdtype(value.dtype, np.integer)
                                       or np.issubdtype(value.dtype, np.floating)):
            raise InputError(f"{where}: '{field}' must be numeric, got {value.dtype} data")
        return value.astype(np.float64)
    bad = _first_non_number(value)
    if bad is not None:
        raise InputError(f"{where}: '{field}' must contain only numbers, found {bad}")
    try:
        return np.array(value, dtype=np.float64)
    except ValueError as e:  # ragged nested lists
        raise InputError(f"{where}: '{field}' is not a regular array of numbers ({e})") from e


def _finite(arr: np.ndarray, where: Path, field: str) -> np.ndarray:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
        kind = "NaN" if np.isnan(arr[i]) else "Inf"
        index = ", ".join(str(int(k)) for k in i)
        raise InputError(f"{where}: '{field}' contains {kind} (at index {index or 'scalar'}); "
                         f"all values must be finite numbers")
    return arr


def _vector(value, where: Path, field: str, length: int | None, meaning: str) -> np.ndarray:
    """A (n,) or (1, n) array (ELICIT writes a batch of one) -> finite float64 (n,)."""
    arr = _array(value, where, field)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        expected = f"({length},) or (1, {length})" if length is not None else "(N,) or (1, N)"
        raise InputError(f"{where}: '{field}' has shape {arr.shape}, expected {expected} ({meaning})")
    if length is not None and arr.size != length:
        raise InputError(f"{where}: '{field}' has {arr.size} values, expected {length} ({meaning})")
    return _finite(arr, where, field)


def _matrix(value, where: Path, field: str, shape: tuple[int, int]) -> np.ndarray:
    arr = _array(value, where, field)
    if arr.shape != shape:
        raise InputError(f"{where}: '{field}' has shape {arr.shape}, expected {shape}")
    return _finite(arr, where, field)


def _focal(value, where: Path, field: str) -> float:
    arr = _array(value, where, field)
    if arr.size != 1:
        raise InputError(f"{where}: '{field}' must be one number, got shape {arr.shape}")
    f = float(_finite(arr.reshape(()), where, field))
    if f <= 0.0:
        raise InputError(f"{where}: '{field}' is {f}; a focal length (pixels) must be > 0")
    return f


def _pose(value, where: Path, field: str = "pose") -> np.ndarray:
    pose = _vector(value, where, field, POSE_DIM,
                   "axis-angle radians: global orientation + 23 joints")
    i = int(np.argmax(np.abs(pose)))
    if abs(pose[i]) > MAX_POSE_RAD:
        raise InputError(f"{where}: '{field}'[{i}] is {pose[i]:g}, beyond +-4*pi; pose values are "
                         f"axis-angle in radians (degrees given?)")
    return pose


def _translation(value, where: Path, field: str) -> np.ndarray:
    t = _vector(value, where, field, 3, "x, y, z in metres")
    if np.linalg.norm(t) > MAX_TRANSL_M:
        raise InputError(f"{where}: '{field}' is {t.tolist()}, more than {MAX_TRANSL_M:g} m away; "
                         f"translations are in metres (millimetres given?)")
    return t


def _betas(value, where: Path, field: str = "shape") -> np.ndarray:
    betas = _vector(value, where, field, None, "shape coefficients")
    if betas.size > MAX_BETAS:
        raise InputError(f"{where}: '{field}' has {betas.size} values; at most {MAX_BETAS} accepted")
    return betas


def _intrinsics(value, where: Path, field: str) -> np.ndarray:
    K = _matrix(value, where, field, (3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{where}: '{field}' has focal lengths fx={K[0, 0]:g}, fy={K[1, 1]:g}; "
                         f"both must be > 0 (pixels)")
    fixed = np.array([K[0, 1], K[1, 0], K[2, 0], K[2, 1], K[2, 2] - 1.0])
    if np.abs(fixed).max() > STRUCT_TOL:
        raise InputError(f"{where}: '{field}' must have the form [[fx,0,cx],[0,fy,cy],[0,0,1]] "
                         f"(no skew), got {K.tolist()}")
    return K


def _rotation(value, where: Path, field: str) -> np.ndarray:
    R = _matrix(value, where, field, (3, 3))
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if err > ROTATION_TOL or abs(det - 1.0) > ROTATION_TOL:
        raise InputError(f"{where}: '{field}' is not a rotation matrix (max |R R^T - I| = {err:.3g}, "
                         f"det = {det:.6g}); it must be orthonormal with det +1 "
                         f"(within {ROTATION_TOL:g}), a world->camera rotation")
    return R


def _body_params(pose, betas, transl, source_model: str, notes: list[str]) -> BodyParams:
    if source_model == SMPL and betas.size:
        notes = [*notes, SMPL_BETAS_NOTE]
    return BodyParams(pose, betas, transl, source_model, notes)


def _camera_size_matches(width: int, height: int, image_hw, where: Path) -> None:
    H, W = (int(v) for v in image_hw)
    if (width, height) != (W, H):
        raise InputError(f"{where}: the camera is {width}x{height} pixels but the photo is {W}x{H}; "
                         f"the parameters were made for a different image size")


# --------------------------------------------------------------------------- ELICIT .npz

def load_params_npz(path, image_hw: tuple[int, int]) -> tuple[BodyParams, PinholeCamera]:
    """ELICIT's gt_params.npz -> (SMPL BodyParams, camera for an image of size image_hw).

    Keys: pose (1,72), shape (1,10), global_t (1,3), focal_l (pixels; principal point at the
    image centre, camera at the origin looking down +Z). As in ELICIT, 'intrinsics' (3x3) plus
    'extrinsics' (4x4 world->camera) may replace focal_l, and an optional 'global_r'
    (axis-angle) rotates the posed body about the origin before global_t is added.
    """
    path = Path(path)
    _require_file(path, "body parameters")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would otherwise try to unpickle arbitrary files
            raise InputError(f"{path}: not an .npz archive (ELICIT's gt_params.npz is one)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = sorted(data.files)
            # ELICIT reads focal_l when present, else the full intrinsics/extrinsics pair.
            has_focal = "focal_l" in keys or not {"intrinsics", "extrinsics"} <= set(keys)
            need = ["pose", "shape", "global_t"] + (["focal_l"] if has_focal
                                                    else ["intrinsics", "extrinsics"])
            missing = [k for k in need if k not in keys]
            if missing:
                extra = (" (or 'intrinsics' + 'extrinsics')" if "focal_l" in missing else "")
                raise InputError(f"{path}: missing {', '.join(repr(k) for k in missing)}{extra}; "
                                 f"the file holds {keys}")
            raw = {k: data[k] for k in need + (["global_r"] if "global_r" in keys else [])}
    except InputError:
        raise
    except ValueError as e:  # object (pickled) arrays are refused with allow_pickle=False
        raise InputError(f"{path}: holds non-numeric (pickled) arrays, which are not loaded "
                         f"({e})") from e
    except Exception as e:  # BadZipFile, OSError, EOFError, zlib errors: a damaged archive
        raise InputError(f"{path}: damaged .npz archive ({type(e).__name__}: {e})") from e

    pose = _pose(raw["pose"], path)
    betas = _betas(raw["shape"], path)
    transl = _translation(raw["global_t"], path, "global_t")
    H, W = (int(v) for v in image_hw)
    if has_focal:
        camera = PinholeCamera.from_focal(_focal(raw["focal_l"], path, "focal_l"), W, H)
    else:
        E = _matrix(raw["extrinsics"], path, "extrinsics", (4, 4))
        if np.abs(E[3] - [0.0, 0.0, 0.0, 1.0]).max() > STRUCT_TOL:
            raise InputError(f"{path}: 'extrinsics' must be a 4x4 rigid transform with last row "
                             f"[0, 0, 0, 1], got {E[3].tolist()}")
        camera = PinholeCamera(_intrinsics(raw["intrinsics"], path, "intrinsics"),
                               _rotation(E[:3, :3], path, "extrinsics[:3, :3]"),
                               _translation(E[:3, 3], path, "extrinsics[:3, 3]"), W, H)
    notes: list[str] = []
    if "global_r" in raw:
        Rh = rodrigues(_vector(raw["global_r"], path, "global_r", 3, "axis-angle radians"))
        if not np.allclose(Rh, np.eye(3)):
            # ELICIT's body in camera space is Rh @ v + global_t. We keep the body model's own
            # frame and move the rotation into the camera: R' = R Rh, transl = Rh^T global_t.
            camera = PinholeCamera(camera.K, camera.R @ Rh, camera.t, W, H)
            transl = Rh.T @ transl
            notes.append(f"{path.name}: 'global_r' was folded into the camera rotation")
    return _body_params(pose, betas, transl, SMPL, notes), camera


# --------------------------------------------------------------------------- JSON

_JSON_KEYS = {"format", "version", "body_model", "pose", "shape", "global_t", "camera"}
_CAMERA_KEYS = {"width", "height", "K", "focal_l", "R", "t"}


def _int_field(cam: dict, key: str, where: Path) -> int:
    if key not in cam:
        raise InputError(f"{where}: 'camera' is missing '{key}'")
    v = cam[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(f"{where}: 'camera.{key}' must be a positive whole number of pixels, got {v!r}")
    return v


def _json_camera(cam, where: Path, image_hw) -> PinholeCamera:
    if not isinstance(cam, dict):
        raise InputError(f"{where}: 'camera' must be an object, got {type(cam).__name__}")
    width, height = _int_field(cam, "width", where), _int_field(cam, "height", where)
    _camera_size_matches(width, height, image_hw, where)
    if ("K" in cam) == ("focal_l" in cam):
        raise InputError(f"{where}: 'camera' needs exactly one of 'K' (3x3 intrinsics) or "
                         f"'focal_l' (pixels, principal point at the centre)")
    R = _rotation(cam["R"], where, "camera.R") if "R" in cam else np.eye(3)
    t = _translation(cam["t"], where, "camera.t") if "t" in cam else np.zeros(3)
    if "K" in cam:
        return PinholeCamera(_intrinsics(cam["K"], where, "camera.K"), R, t, width, height)
    return PinholeCamera.from_focal(_focal(cam["focal_l"], where, "camera.focal_l"),
                                    width, height, R, t)


def load_params_json(path, image_hw: tuple[int, int]) -> tuple[BodyParams, PinholeCamera]:
    """Our JSON body-parameter file (docs/inputs.md) -> (BodyParams, camera)."""
    path = Path(path)
    _require_file(path, "body parameters")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text, so not a JSON parameter file") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: "
                         f"{e.msg}") from e
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object at the top level, got {type(doc).__name__}")
    if doc.get("format") != PARAMS_FORMAT:
        raise InputError(f"{path}: unknown 'format' {doc.get('format')!r}; expected "
                         f"{PARAMS_FORMAT!r} (see docs/inputs.md)")
    version = doc.get("version")
    if isinstance(version, bool) or version != PARAMS_VERSION:
        raise InputError(f"{path}: unsupported 'version' {version!r}; this program reads version "
                         f"{PARAMS_VERSION}")
    for key in ("pose", "global_t", "camera"):
        if key not in doc:
            raise InputError(f"{path}: missing '{key}'")
    body_model = doc.get("body_model", SMPL)
    if not isinstance(body_model, str) or not body_model.strip():
        raise InputError(f"{path}: 'body_model' must be a name such as \"smpl\" or "
                         f"\"open_body\", got {body_model!r}")
    camera = _json_camera(doc["camera"], path, image_hw)
    notes = []
    unknown = sorted(set(doc) - _JSON_KEYS) + sorted(f"camera.{k}" for k in set(doc["camera"])
                                                     - _CAMERA_KEYS)
    if unknown:  # most likely typos ("global_T"); say so instead of silently dropping them
        notes.append(f"{path.name}: ignored unknown field(s) {', '.join(unknown)}")
    params = _body_params(_pose(doc["pose"], path), _betas(doc.get("shape", []), path),
                          _translation(doc["global_t"], path, "global_t"), body_model, notes)
    return params, camera


def _dumps(value, indent: int = 0) -> str:
    """JSON with one field per line and each array on one line: readable and diffable."""
    if isinstance(value, dict):
        pad = "  " * (indent + 1)
        body = ",\n".join(f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in value.items())
        return "{\n" + body + "\n" + "  " * indent + "}"
    return json.dumps(value, allow_nan=False)  # floats as repr: reading back is exact


def write_params_json(path, params: BodyParams, camera: PinholeCamera) -> None:
    """Write params + camera in the JSON format load_params_json reads, atomically."""
    path = Path(path)
    # Refuse to write what we would refuse to read.
    pose, betas = _pose(params.pose, path), _betas(params.betas, path)
    transl = _translation(params.transl, path, "global_t")
    doc = {
        "format": PARAMS_FORMAT, "version": PARAMS_VERSION, "body_model": params.source_model,
        "pose": pose.tolist(), "shape": betas.tolist(), "global_t": transl.tolist(),
        "camera": {"width": int(camera.width), "height": int(camera.height),
                   "K": _intrinsics(camera.K, path, "camera.K").tolist(),
                   "R": _rotation(camera.R, path, "camera.R").tolist(),
                   "t": _translation(camera.t, path, "camera.t").tolist()},
    }
    text = _dumps(doc) + "\n"
    # A temp file in the same folder + os.replace: readers never see a half-written file.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a parameter file is not a secret
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path}: {e}") from e
        raise


# --------------------------------------------------------------------------- entry points

def load_params(path, image_hw: tuple[int, int]) -> tuple[BodyParams, PinholeCamera]:
    """A .json (ours) or .npz (ELICIT) parameter file, by extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_params_json(path, image_hw)
    if suffix == ".npz":
        return load_params_npz(path, image_hw)
    raise InputError(f"{path}: unknown body-parameter file type {suffix or '(none)'!r}; give a "
                     f".json (docs/inputs.md) or an ELICIT .npz")


def _elicit_files(folder) -> dict[str, Path | None]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"ELICIT folder not found: {folder}")
    names = sorted(p.name for p in folder.iterdir())
    for required in (ELICIT_IMAGE, ELICIT_PARAMS):
        if required not in names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
            raise InputError(f"{folder}: missing {required} (an ELICIT folder holds {ELICIT_IMAGE}, "
                             f"{ELICIT_PARAMS} and optionally {ELICIT_MASK}); it contains: "
                             f"{shown or 'nothing'}")
    return {"photo": folder / ELICIT_IMAGE, "params": folder / ELICIT_PARAMS,
            "mask": folder / ELICIT_MASK if ELICIT_MASK in names else None}


def load_fit_inputs(photo=None, mask=None, params=None, elicit_dir=None,
                    camera: PinholeCamera | None = None) -> FitInputs:
    """Photo + optional mask + optional body parameters, validated together. Without parameters
    the camera comes from the photo's EXIF focal length (else the default lens) and `params` is
    None: the body is estimated from the photo (backend/jobs/body_fit.py). `camera` (photo only)
    is a known camera of the photo (e.g. a Blender camera), used instead of the lens guess.

    `elicit_dir` supplies whichever of photo / mask / params is not given explicitly. The
    mask comes from the mask file, else from the photo's alpha, else is None (mask_source
    "none": the caller derives one, e.g. with GrabCut). RGB is never composited over alpha.
    """
    if elicit_dir is not None:
        files = _elicit_files(elicit_dir)
        photo = photo if photo is not None else files["photo"]
        mask = mask if mask is not None else files["mask"]
        params = params if params is not None else files["params"]
    if photo is None:
        raise InputError("no photo given: give a photo file or an ELICIT folder")
    photo = Path(photo)
    image, alpha = load_image(photo)
    hw = image.shape[:2]
    warnings: list[str] = []
    if mask is not None:
        mask_arr, source = load_mask(mask, hw), "file"
        if alpha is not None:
            warnings.append(f"{photo}: its alpha channel is ignored; the mask file {mask} is used")
    elif alpha is not None and (alpha >= FOREGROUND).any():
        mask_arr, source = alpha, "alpha"
    else:
        if alpha is not None:
            warnings.append(f"{photo}: the alpha channel has no opaque pixel, so it is not used "
                            f"as the person mask; one will be derived from the photo")
        mask_arr, source = None, "none"
    if mask_arr is not None and (mask_arr >= FOREGROUND).mean() > INVERTED_MASK_FRACTION:
        warnings.append(f"the {source} mask marks {100 * (mask_arr >= FOREGROUND).mean():.0f}% of "
                        f"the photo as the person; is it inverted? (white must mark the person)")
    if params is None:   # photo only: the camera from EXIF (else the default lens), the body estimated later
        if camera is not None:
            _camera_size_matches(camera.width, camera.height, hw, photo)
            return FitInputs(image, mask_arr, source, None, camera, photo, warnings, "given camera")
        lens = photo_lens_of(photo, hw)
        camera = PinholeCamera.from_focal(lens.focal_px, hw[1], hw[0])
        return FitInputs(image, mask_arr, source, None, camera, photo, warnings, lens.source)
    body, camera = load_params(params, hw)
    depth = float((camera.R @ body.transl + camera.t)[2])
    if depth <= 0.0:
        warnings.append(f"{params}: the body's translation lies {'behind' if depth < 0 else 'at'} "
                        f"the camera (depth {depth:.3g} m); the fit will likely fail")
    return FitInputs(image, mask_arr, source, body, camera, photo, warnings)


def photo_lens_of(photo: Path, hw: tuple[int, int]):
    """The photo's lens (EXIF focal length, else the default) for its upright size hw."""
    from backend.estimate.exif import photo_lens

    with Image.open(photo) as img:
        return photo_lens(img, hw[1], hw[0])


def load_elicit_folder(folder) -> FitInputs:
    """An ELICIT subject folder: gt_image.png, gt_params.npz and optionally gt_mask.png."""
    return load_fit_inputs(elicit_dir=folder)
