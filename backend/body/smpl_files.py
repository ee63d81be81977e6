"""Load a user's SMPL model file (.pkl official release, or .npz) as plain numpy arrays.

The official SMPL .pkl files (v1.0.0: 10 betas, v1.1.0: 300) are Python-2 pickles holding
chumpy objects and a scipy sparse joint regressor. chumpy does not work on Python 3.11 /
numpy >= 1.24, and unpickling runs code named in the file, so we use a restricted unpickler:
chumpy classes become a stand-in that keeps the array, numpy and scipy.sparse classes are
allowed, and anything else is refused before it can run.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from backend.errors import BodyModelFileError
from shared.smpl import NUM_JOINTS

WHERE_FROM = ("SMPL files come from https://smpl.is.tue.mpg.de (register, then download 'SMPL for "
              "Python', v1.0.0 or v1.1.0; their licence forbids redistribution), or use the "
              "built-in open body ('open_body')")
REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
MAX_FILE_BYTES = 2_000_000_000

# Classes a legitimate SMPL pickle needs to rebuild its arrays (module, name).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("scipy.sparse.csc", "csc_matrix"), ("scipy.sparse._csc", "csc_matrix"),
    ("scipy.sparse.csr", "csr_matrix"), ("scipy.sparse._csr", "csr_matrix"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 writes byte strings in protocol-2 pickles
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a class that no SMPL file needs (and that could run code)."""


class _ChumpyStandIn:
    """Receives a chumpy object's pickled state; its array is the state's 'x'."""

    def __setstate__(self, state):
        self.state = state

    def __init__(self, *args, **kwargs):
        self.state = {}

    def to_array(self):
        state = self.state if isinstance(self.state, dict) else {}
        if "x" not in state:
            raise ValueError("a chumpy object without its array ('x')")
        return np.asarray(state["x"])


class _SmplUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "chumpy":
            return _ChumpyStandIn
        if (module, name) in _ALLOWED:
            if module == "copy_reg":
                module = "copyreg"
            if module == "__builtin__":
                module = "builtins"
            if module.startswith("scipy.sparse"):
                import scipy.sparse
                return getattr(scipy.sparse, name)
            return super().find_class(module, name)
        raise _Refused(f"refusing to load class {module}.{name} (not an array type; a pickle can run code)")


def _plain(value):
    if isinstance(value, _ChumpyStandIn):
        return value.to_array()
    return value


def _read_pkl(path: Path) -> dict:
    try:
        data = _SmplUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except _Refused as exc:
        raise BodyModelFileError(f"{path}: not a usable SMPL pickle: {exc}. {WHERE_FROM}") from None
    except Exception as exc:  # truncated or garbage bytes raise many different errors
        raise BodyModelFileError(f"{path}: unreadable SMPL pickle ({type(exc).__name__}: {exc}). {WHERE_FROM}") from None
    if not isinstance(data, dict):
        raise BodyModelFileError(f"{path}: expected a dictionary of arrays, found {type(data).__name__}. {WHERE_FROM}")
    try:
        return {k: _plain(v) for k, v in data.items() if k in REQUIRED}
    except ValueError as exc:
        raise BodyModelFileError(f"{path}: {exc}") from None


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k in REQUIRED}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BodyModelFileError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc}). {WHERE_FROM}") from None


def _check(path: Path, arrays: dict) -> dict:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise BodyModelFileError(f"{path}: missing {', '.join(missing)}; an SMPL model file holds {', '.join(REQUIRED)}. {WHERE_FROM}")
    import scipy.sparse

    def shape_error(key, expected):
        return BodyModelFileError(f"{path}: '{key}' has shape {tuple(np.shape(arrays[key]))}, expected {expected}")

    out = {}
    for key in REQUIRED:
        value = arrays[key]
        if scipy.sparse.issparse(value):
            value = value.tocsc().astype(np.float64)
            dense_view = value.data
        else:
            try:
                value = np.asarray(value)
            except Exception:
                raise BodyModelFileError(f"{path}: '{key}' is not an array") from None
            if value.dtype == object or value.dtype.kind not in "biuf":
                raise BodyModelFileError(f"{path}: '{key}' is not numeric (dtype {value.dtype})")
            dense_view = value
        if dense_view.dtype.kind == "f" and not np.isfinite(dense_view).all():
            raise BodyModelFileError(f"{path}: '{key}' contains NaN or Inf values")
        out[key] = value
    v = out["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
        raise shape_error("v_template", "(V, 3)")
    V = v.shape[0]
    if out["shapedirs"].ndim != 3 or out["shapedirs"].shape[:2] != (V, 3) or out["shapedirs"].shape[2] < 1:
        raise shape_error("shapedirs", f"({V}, 3, num_betas)")
    if out["posedirs"].ndim != 3 or out["posedirs"].shape[:2] != (V, 3):
        raise shape_error("posedirs", f"({V}, 3, 207)")
    if out["J_regressor"].shape != (NUM_JOINTS, V):
        raise shape_error("J_regressor", f"({NUM_JOINTS}, {V})")
    if out["weights"].shape != (V, NUM_JOINTS):
        raise shape_error("weights", f"({V}, {NUM_JOINTS})")
    if out["kintree_table"].shape != (2, NUM_JOINTS):
        raise shape_error("kintree_table", f"(2, {NUM_JOINTS})")
    f = out["f"]
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
        raise shape_error("f", "(F, 3) integers")
    if f.size and (f.min() < 0 or f.max() >= V):
        raise BodyModelFileError(f"{path}: 'f' indexes vertex {int(f.max())} but there are {V} vertices")
    out["f"] = f.astype(np.int64)
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    return out


def load_smpl_arrays(path) -> dict:
    """The arrays smplx reads (v_template, shapedirs, posedirs, J_regressor, weights,
    kintree_table, f) from an official SMPL .pkl or an .npz, validated."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelFileError(f"{path}: no such SMPL model file. {WHERE_FROM}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BodyModelFileError(f"{path}: {path.stat().st_size / 1e9:.1f} GB is far larger than any SMPL model")
    with open(path, "rb") as fh:
        zip_magic = fh.read(4) == b"PK\x03\x04"
    arrays = _read_npz(path) if zip_magic else _read_pkl(path)
    return _check(path, arrays)


def num_betas(arrays: dict) -> int:
    return int(arrays["shapedirs"].shape[-1])
