"""The server's avatar store: one folder per avatar, holding the fit's inputs and the avatar.

    <store>/<id>/job.json      what was asked (preset, prompt, name, ...), written first
    <store>/<id>/photo.png     the photo (and mask.png when one was sent)
    <store>/<id>/params.json   body parameters + camera (docs/inputs.md format), or
    <store>/<id>/camera.json   the camera alone (photo only: the body is estimated by the fit)
    <store>/<id>/avatar.avatar the avatar: written atomically, also the fit's checkpoint

Everything an interrupted fit needs to resume is on disk before it starts, so after a restart
the server lists every avatar again and resumes the unfinished ones. Only complete files are
ever read: job.json and the avatar are replaced atomically, and an id is listed only once its
job.json exists.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backend.inputs import BodyParams, write_params_json
from shared.camera import PinholeCamera

_ID = re.compile(r"^[a-z0-9]{6,32}$")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class AvatarStore:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, avatar_id: str) -> Path:
        if not _ID.match(avatar_id or ""):
            raise KeyError(avatar_id)
        return self.root / avatar_id

    def avatar_path(self, avatar_id: str) -> Path:
        return self.folder(avatar_id) / "avatar.avatar"

    def create(self, photo: np.ndarray, mask: np.ndarray | None, pose, betas, transl, camera: PinholeCamera,
               job: dict) -> str:
        """Save a fit's inputs under a new id; returns the id."""
        avatar_id = secrets.token_hex(8)
        folder = self.root / avatar_id
        folder.mkdir()
        Image.fromarray(np.ascontiguousarray(photo)).save(folder / "photo.png")
        if mask is not None:
            Image.fromarray(np.ascontiguousarray(mask)).save(folder / "mask.png")
        if pose is None:   # photo only: the worker estimates the body in this camera
            _write_json(folder / "camera.json", camera.to_dict())
        else:
            betas = np.zeros(0) if betas is None else np.asarray(betas, dtype=np.float64)
            params = BodyParams(np.asarray(pose, np.float64), betas, np.asarray(transl, np.float64),
                                source_model=job.get("body", "open_body"))
            write_params_json(folder / "params.json", params, camera)
        _write_json(folder / "job.json", {**job, "created": time.time()})  # last: the id now exists
        return avatar_id

    def job(self, avatar_id: str) -> dict:
        return json.loads((self.folder(avatar_id) / "job.json").read_text())

    def set_state(self, avatar_id: str, state: str) -> None:
        """Record a final state that the avatar file cannot tell (cancelled, failed), so that a
        restarted server does not resume that fit."""
        _write_json(self.folder(avatar_id) / "job.json", {**self.job(avatar_id), "state": state})

    def ids(self) -> list[str]:
        found = [p.parent.name for p in self.root.glob("*/job.json") if _ID.match(p.parent.name)]
        return sorted(found, key=lambda i: (self.root / i / "job.json").stat().st_mtime)

    def inputs(self, avatar_id: str) -> dict:
        folder = self.folder(avatar_id)
        mask, params, camera = folder / "mask.png", folder / "params.json", folder / "camera.json"
        return {"photo": folder / "photo.png", "mask": mask if mask.exists() else None,
                "params": params if params.exists() else None,
                "camera": PinholeCamera.from_dict(json.loads(camera.read_text())) if camera.exists() else None}
