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

The store holds people's photos: its folder is private to the user (0700). One server owns a
store at a time (`<store>/.lock`, an exclusive flock held while the server runs): two servers
resuming the same fits would overwrite each other's checkpoints. A farm's workers open the
store their front holds without the lock; of them only the worker running a fit writes (its
avatar file), the front writes everything else.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
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


class StoreInUse(RuntimeError):
    """Another server already serves this store."""


class AvatarStore:
    def __init__(self, root, lock: bool = True):
        """lock=False: a farm worker's view of a store its front serves (and holds locked)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self._lock_file = None
        if lock:
            self._lock()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:   # Windows: no flock; one server per store is then the user's care
            return
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise StoreInUse(f"another backend is already serving the store {self.root}"
                             + (f" (process {holder})" if holder else "")
                             + ": stop it first, or give this one another --store") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()   # releases the flock
            self._lock_file = None

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

    def delete(self, avatar_id: str) -> None:
        """Remove an avatar's folder: first renamed out of the listing (atomic), then removed."""
        folder = self.folder(avatar_id)
        gone = self.root / f".deleted-{avatar_id}-{secrets.token_hex(4)}"
        os.replace(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def ids(self) -> list[str]:
        found = [p.parent.name for p in self.root.glob("*/job.json") if _ID.match(p.parent.name)]
        return sorted(found, key=lambda i: (self.root / i / "job.json").stat().st_mtime)

    def inputs(self, avatar_id: str) -> dict:
        folder = self.folder(avatar_id)
        mask, params, camera = folder / "mask.png", folder / "params.json", folder / "camera.json"
        return {"photo": folder / "photo.png", "mask": mask if mask.exists() else None,
                "params": params if params.exists() else None,
                "camera": PinholeCamera.from_dict(json.loads(camera.read_text())) if camera.exists() else None}
