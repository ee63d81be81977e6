"""A tiny but valid SMPL-format model, and writers for the official .pkl layout and .npz.

24 small boxes, one around each joint of an SMPL-like T-pose (Y-up, facing +Z, left at +X),
each box skinned fully to its joint; the joint regressor averages a box's corners, so it
reproduces the joints exactly.
"""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import scipy.sparse

from shared.smpl import NUM_JOINTS, PARENTS

# Rough SMPL rest joint offsets from the parent (metres).
_OFFSETS = [(0, -0.23, 0.03), (0.06, -0.09, 0), (-0.06, -0.09, 0), (0, 0.11, -0.02), (0.04, -0.38, 0),
            (-0.04, -0.38, 0), (0, 0.14, 0.01), (0, -0.40, -0.04), (0, -0.40, -0.04), (0, 0.06, 0),
            (0.02, -0.06, 0.12), (-0.02, -0.06, 0.12), (0, 0.21, -0.03), (0.08, 0.12, -0.02),
            (-0.08, 0.12, -0.02), (0, 0.09, 0.05), (0.12, 0.04, -0.01), (-0.12, 0.04, -0.01),
            (0.26, 0, 0), (-0.26, 0, 0), (0.25, 0, 0), (-0.25, 0, 0), (0.08, 0, 0), (-0.08, 0, 0)]
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_BOX_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def tiny_joints() -> np.ndarray:
    joints = np.zeros((NUM_JOINTS, 3))
    for j, offset in enumerate(_OFFSETS):
        joints[j] = (joints[PARENTS[j]] if PARENTS[j] >= 0 else 0.0) + np.asarray(offset)
    return joints


def make_tiny_smpl_arrays(num_betas: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    joints = tiny_joints()
    V = 8 * NUM_JOINTS
    v_template = (joints[:, None, :] + 0.02 * _CORNERS[None]).reshape(V, 3)
    owner = np.repeat(np.arange(NUM_JOINTS), 8)
    weights = np.zeros((V, NUM_JOINTS))
    weights[np.arange(V), owner] = 1.0
    J_regressor = weights.T / 8.0
    return {
        "v_template": v_template,
        "shapedirs": 0.01 * rng.standard_normal((V, 3, num_betas)),
        "posedirs": 0.001 * rng.standard_normal((V, 3, 207)),
        "J_regressor": J_regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295 if p < 0 else p for p in PARENTS], list(range(NUM_JOINTS))], dtype=np.int64),
        "f": np.concatenate([_BOX_FACES + 8 * j for j in range(NUM_JOINTS)]).astype(np.uint32),
    }


def write_official_pkl(path, arrays: dict, version: str = "1.0.0") -> None:
    """A pickle laid out like the official SMPL release, made WITHOUT chumpy installed: a
    throw-away module named chumpy.ch supplies the Ch class whose state holds the array in
    'x', as chumpy's does; it is removed again before anyone loads the file."""
    if version == "1.1.0" and arrays["shapedirs"].shape[2] < 300:
        raise ValueError("SMPL v1.1.0 files have 300 shape directions")
    assert "chumpy" not in sys.modules, "a real or fake chumpy is already imported"
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        data = {
            "v_template": Ch(arrays["v_template"]), "shapedirs": Ch(arrays["shapedirs"]),
            "posedirs": arrays["posedirs"], "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
            "weights": Ch(arrays["weights"]), "kintree_table": arrays["kintree_table"],
            "f": arrays["f"], "J": Ch(tiny_joints()), "bs_style": "lbs", "bs_type": "lrotmin",
            "weights_prior": arrays["weights"], "vert_sym_idxs": np.arange(arrays["v_template"].shape[0]),
        }
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def write_npz(path, arrays: dict) -> None:
    np.savez(path, **arrays)
