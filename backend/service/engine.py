"""What a backend computes, without threads or sockets: fits, frames, loads and exports of the
avatars in one store. The single backend's worker thread (worker.py) and each farm worker (a Ray
actor, backend/farm/actor.py) drive one Engine each, so both answer with the same messages.

Every answer is a message: (type, fields, frames) as shared/protocol.py defines them. Faults of
the request (an unknown avatar, a bad export setting) raise P.ProtocolError; a fit's inputs that
cannot be fitted raise AvatarError; anything else is the caller's `internal` error.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np
import torch

from backend.avatar.config import PRESETS
from backend.errors import AvatarError
from backend.service.store import AvatarStore
from shared import protocol as P
from shared.camera import PinholeCamera

log = logging.getLogger("avatar.engine")
SERVED_PRESETS = ("quick", "full", "tiny")
Message = tuple[str, dict, dict | None]
Emit = Callable[[str, dict, dict | None], None]


class FitCancelled(Exception):
    pass


class Engine:
    def __init__(self, store: AvatarStore, device: str = "auto", preview_every: int = 25, cache_size: int = 4):
        from backend.jobs.avatar_fit import resolve_device

        self.store = store
        self.device = resolve_device(device)
        self.preview_every = preview_every
        self.cache_size = cache_size
        self.presets = tuple(p for p in SERVED_PRESETS if p in PRESETS)
        self._cache: dict[str, tuple[float, object]] = {}
        self._bodies: dict[str, object] = {}   # the served body, per device
        self._lock = threading.Lock()          # a farm worker renders while it fits: one cache, two threads

    # ------------------------------------------------------------------ what this backend offers
    def clip_spec(self):
        from backend.avatar.pretrained import ClipError, ClipSpec, resolve_weights

        spec = ClipSpec()
        try:
            resolve_weights(spec)
        except ClipError:
            return None
        return spec

    def capabilities(self, max_side: int) -> dict:
        return {"device": str(self.device), "body_models": ["open_body"], "clip": self.clip_spec() is not None,
                "presets": list(self.presets), "max_image_side": max_side}

    def fit_warnings(self) -> list[str]:
        from backend.jobs.avatar_fit import NO_CLIP_WARNING

        return [] if self.clip_spec() is not None else [NO_CLIP_WARNING]

    def scan_store(self) -> dict[str, dict]:
        """Every avatar of the store: {id: {stage, iteration, preset, name}}. A damaged folder is
        skipped (and left untouched), never a reason to stop."""
        from backend.avatar.avatar_file import load_avatar

        status = {}
        for avatar_id in self.store.ids():
            try:
                job = self.store.job(avatar_id)
                if not isinstance(job, dict) or job.get("preset") not in self.presets:
                    raise ValueError(f"no served preset in it ({str(job)[:80]!r})")
            except (OSError, ValueError) as exc:
                log.warning("%s: not served, its job.json is unreadable (%s); the folder is left untouched",
                            avatar_id, exc)
                continue
            st = {"stage": job.get("state") or "queued", "iteration": 0, "preset": job["preset"],
                  "name": str(job.get("name") or "")[:200]}
            path = self.store.avatar_path(avatar_id)
            if path.exists() and st["stage"] not in ("cancelled", "failed"):
                try:
                    rec = load_avatar(path, body=self.served_body("cpu"), device="cpu")
                    st.update(stage=rec.stage, iteration=rec.iteration)
                except AvatarError as exc:
                    log.warning("%s: %s", avatar_id, exc)
            status[avatar_id] = st
        return status

    def served_body(self, device):
        """The one body this server offers (one instance per device: loading moves it there).
        An avatar file names its body, but a file in the store must never make the server open
        a path it names (a hostile SMPL 'file')."""
        with self._lock:
            if str(device) not in self._bodies:
                from backend.body.body_model import load_open_body

                self._bodies[str(device)] = load_open_body()
            return self._bodies[str(device)]

    def forget(self, avatar_id: str) -> None:
        with self._lock:
            self._cache.pop(avatar_id, None)

    # ------------------------------------------------------------------ fits
    def fit(self, avatar_id: str, emit: Emit, should_stop: Callable[[], bool],
            between_iterations: Callable[[], None] = lambda: None, listening: bool = True) -> tuple[Message, int]:
        """Fit (or resume) a stored avatar. emit: its progress messages as they come; should_stop:
        asked every iteration (True: FitCancelled); listening: False when nobody hears the
        progress (a fit resumed after a restart): no previews are made. Returns the `done` message
        and the last iteration."""
        from backend.jobs.avatar_fit import run_avatar_fit

        meta = self.store.job(avatar_id)
        inputs = self.store.inputs(avatar_id)

        def progress(rec):
            if should_stop():
                raise FitCancelled()
            stage = rec.get("stage", "B")
            losses = {k: v for k, v in rec.items() if isinstance(v, float) and k not in
                      ("eta_s", "seconds_per_iteration") and np.isfinite(v)}
            emit("progress", {"job": avatar_id, "stage": stage, "iteration": rec["iteration"],
                              "total": rec.get("of", 0), "losses": losses, "eta_s": rec.get("eta_s")}, None)

        told_body = False

        def on_step(stage, rec):
            nonlocal told_body
            if not told_body and listening:   # the body, once: the client can pose its rig now
                told_body = True
                t = stage.target
                emit("progress", {"job": avatar_id, "stage": "B", "iteration": rec["iteration"],
                                  "total": rec.get("of", 0),
                                  "body": {"pose": t.pose, "transl": t.transl, "camera": t.camera.to_dict(),
                                           "rest_joints": rest_joints(stage.avatar)}}, None)
            between_iterations()
            if self.preview_every and rec["iteration"] % self.preview_every == 0 and listening:
                emit("progress", {"job": avatar_id, "stage": "B", "iteration": rec["iteration"],
                                  "total": rec.get("of", 0)}, {"preview": preview(stage)})

        result = run_avatar_fit(photo=inputs["photo"], mask=inputs["mask"], params=inputs["params"],
                                body_spec=meta.get("body", "open_body"), preset=meta["preset"],
                                out=self.store.avatar_path(avatar_id), prompt=meta.get("prompt") or None,
                                clip_spec=self.clip_spec(), device=self.device,
                                fit_body=meta.get("fit_body", True), resume=True, camera=inputs["camera"],
                                log=lambda m: log.info("%s: %s", avatar_id, m),
                                progress=progress, on_step=on_step)
        return ("done", {"job": avatar_id, "avatar": avatar_id,
                         "warnings": list(result.report.get("warnings", []))[:16]}, None), result.record.iteration

    # ------------------------------------------------------------------ renders
    def avatar(self, avatar_id: str):
        """The stored avatar, loaded once per file version (a few are kept)."""
        from backend.avatar.avatar_file import load_avatar

        path = self.store.avatar_path(avatar_id)
        if not path.exists():
            raise P.ProtocolError(P.UNKNOWN_AVATAR, f"avatar {avatar_id!r} has no fitted state yet")
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(avatar_id)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        rec = load_avatar(path, body=self.served_body(self.device), device=self.device)
        with self._lock:
            if len(self._cache) >= self.cache_size and avatar_id not in self._cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[avatar_id] = (mtime, rec)
        return rec

    def frame(self, avatar_id: str, view: dict, fmt: str, depth: bool = False) -> tuple[dict, float]:
        """The frames of one `frame` message ({"rgba"[, "depth"]}) and the seconds it took."""
        start = time.perf_counter()
        rec = self.avatar(avatar_id)
        cam = view["camera"]
        camera = PinholeCamera(cam["K"], cam["R"], cam["t"], cam["width"], cam["height"])
        rgba, z = rec.avatar.render_layers(camera, view["pose"], view["transl"])
        img = (rgba * 255).round().to(torch.uint8) if fmt == "uint8" else rgba.to(torch.float16)
        frames = {"rgba": img.cpu().numpy()}
        if depth:   # 0 exactly where the alpha sent is 0 (uint8 rounds the faintest alpha to 0)
            frames["depth"] = torch.where(img[..., 3] > 0, z, torch.zeros_like(z)).float().cpu().numpy()
        return frames, time.perf_counter() - start

    def loaded(self, avatar_id: str) -> Message:
        """The `loaded` answer: the avatar's state, its body and the proxy mesh."""
        rec = self.avatar(avatar_id)
        return ("loaded", {"avatar": avatar_id, "stage": rec.stage, "iteration": rec.iteration,
                           "preset": rec.config.name, "pose": rec.pose, "transl": rec.transl,
                           "camera": rec.camera.to_dict(), "rest_joints": rest_joints(rec.avatar),
                           "warnings": list((rec.report or {}).get("warnings", []))[:16]},
                P.proxy_frames(proxy(rec.avatar)))

    def exported(self, avatar_id: str, settings: dict) -> Message:
        """The `exported` answer: the avatar baked into a rigged, textured glTF mesh."""
        from backend.errors import InputError
        from backend.export.gltf import to_glb
        from backend.jobs.avatar_export import ExportConfig, bake

        rec = self.avatar(avatar_id)
        if rec.stage != "done":
            raise P.ProtocolError(P.BAD_FIELD, f"avatar {avatar_id!r} is not finished (stage {rec.stage}); "
                                               f"export it once its fit is done")
        try:
            cfg = ExportConfig.preset(settings.get("preset") or "default", triangles=settings.get("triangles"),
                                      texture=settings.get("texture"))
        except InputError as exc:
            raise P.ProtocolError(P.BAD_FIELD, str(exc)) from None
        start = time.perf_counter()
        with torch.no_grad():
            mesh, _ = bake(rec.avatar, cfg, photo_view=(rec.camera, rec.pose, rec.transl))
        data = np.frombuffer(to_glb(mesh, name=f"avatar_{avatar_id[:6]}"), np.uint8).reshape(-1, 1)
        return ("exported", {"avatar": avatar_id, "triangles": int(len(mesh.faces)),
                             "vertices": int(len(mesh.vertices)), "texture": int(mesh.texture.shape[0]),
                             "seconds": time.perf_counter() - start}, {"glb": data})


def preview(stage, side: int = 128) -> np.ndarray:
    """The avatar as it is now, from the photo's camera, at most `side` pixels: (h, w, 3) uint8."""
    t = stage.target
    cam = t.camera.scaled(side / max(t.camera.width, t.camera.height))
    with torch.no_grad():
        out = stage.avatar.render(cam, t.pose, t.transl, background=(1.0, 1.0, 1.0))
    return (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def rest_joints(avatar) -> np.ndarray:
    """(24, 3) rest-pose joints of the avatar's fitted body (SMPL frame): a rig's bone heads."""
    with torch.no_grad():
        return avatar.body.rest(avatar.betas)[1][0].cpu().numpy().astype(np.float64)


def proxy(avatar) -> dict:
    """The avatar's body as a mesh for a rig to deform (the add-on's shadow proxy): the rest-pose
    vertices `rest_joints` belongs to (SMPL frame), the faces, and each vertex's skinning as its
    strongest joints, as many as the body uses up to P.PROXY_MAX_INFLUENCES (the open body: 7),
    renormalised to sum to 1. Posed with the body's own transforms, it is the body's linear blend
    skinning, exactly where no vertex has more joints (the open body), and without pose-corrective
    blend shapes (SMPL has them, the open body not)."""
    body = avatar.body
    with torch.no_grad():
        vertices = body.rest(avatar.betas)[0][0]
        weights = body.weights.float()
        k = max(1, min(P.PROXY_MAX_INFLUENCES, int((weights > 0).sum(1).max())))
        w, index = weights.topk(k, dim=1)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    return {"vertices": vertices.cpu().numpy(), "faces": body.faces.cpu().numpy(),
            "joint_index": index.cpu().numpy(), "joint_weight": w.cpu().numpy()}
