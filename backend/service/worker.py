"""The service's single compute worker: fits, single renders and render streams, one at a time.

Order: waiting single renders first, then streams, then fits (FIFO). While a fit runs,
single renders are answered between its iterations (a render waits for at most one
iteration: ~0.25 s with `quick` on a 2-core CPU); streams wait for the fit to end. A stream
keeps at most `window` frames unacknowledged (back-pressure: a slow client never makes the
server buffer frames); while it waits for acks, single renders are answered, and a stream
whose client stops acknowledging ends after `stream_ack_timeout_s`.

Whatever a task raises becomes an `error` reply (`internal`) to whoever asked, the failure is
counted in `health()` (reported by `welcome` and `pong`), and the worker takes the next task.
Queues are bounded (WorkerLimits): beyond them a request is answered `busy`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
import time

import numpy as np
import torch
import zmq

from backend.avatar.config import PRESETS
from backend.errors import AvatarError
from backend.service.limits import WorkerLimits
from backend.service.store import AvatarStore
from shared import protocol as P
from shared.camera import PinholeCamera

log = logging.getLogger("avatar.worker")
SERVED_PRESETS = ("quick", "full", "tiny")


class FitCancelled(Exception):
    pass


@dataclasses.dataclass
class FitJob:
    avatar_id: str
    identity: bytes | None      # None: resumed after a restart, nobody to tell
    request_id: int
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class Stream:
    identity: bytes
    request_id: int
    avatar: str
    views: list
    format: str
    window: int
    depth: bool = False         # send each frame's depth too
    id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(6))
    acked: int = -1
    sent: int = -1              # the last frame index sent: an ack beyond it counts only up to it
    cancelled: bool = False


@dataclasses.dataclass
class RenderRequest:
    identity: bytes
    request_id: int
    avatar: str
    view: dict
    format: str
    load_only: bool = False     # a `load`: warm the cache and describe the avatar, no image
    export: dict | None = None  # an `export`: bake the avatar with these settings (preset, triangles, texture)
    depth: bool = False         # send the frame's depth too
    received: float = dataclasses.field(default_factory=time.perf_counter)


class Worker(threading.Thread):
    def __init__(self, ctx: zmq.Context, outbox: str, store: AvatarStore, device: str = "auto",
                 preview_every: int = 25, limits: WorkerLimits = WorkerLimits()):
        super().__init__(name="avatar-worker", daemon=True)
        from backend.jobs.avatar_fit import resolve_device

        self.ctx, self.outbox_address, self.store = ctx, outbox, store
        self.device = resolve_device(device)
        self.preview_every = preview_every
        self.limits = limits
        self.failures = 0
        self.last_error: str | None = None
        self.presets = tuple(p for p in SERVED_PRESETS if p in PRESETS)
        self.lock = threading.Condition()
        self.fits: collections.deque[FitJob] = collections.deque()
        self.renders: collections.deque[RenderRequest] = collections.deque()
        self.streams: collections.deque[Stream] = collections.deque()
        self.running: FitJob | None = None
        self.status: dict[str, dict] = {}
        self._stopping = False
        self._cache: dict[str, tuple[float, object]] = {}
        # seconds a single render waited during a fit (the latest ones: memory stays bounded)
        self.render_delays: collections.deque[float] = collections.deque(maxlen=1000)
        self._bodies: dict[str, object] = {}   # the served body, per device
        self._scan_store()

    # ------------------------------------------------------------------ called by the network thread
    def health(self) -> dict:
        with self.lock:
            queued = len(self.fits) + len(self.renders) + len(self.streams)
        return {"alive": self.is_alive(), "failures": self.failures, "last_error": self.last_error,
                "queued": queued}

    def check_room_for_fit(self) -> None:
        """Called before a fit's inputs are stored: a full queue stores nothing."""
        with self.lock:
            _room(self.fits, self.limits.max_queued_fits, "fits are already queued")

    def capabilities(self, max_side: int) -> dict:
        return {"device": str(self.device), "body_models": ["open_body"], "clip": self._clip_spec() is not None,
                "presets": list(self.presets), "max_image_side": max_side}

    def list_avatars(self) -> list[dict]:
        with self.lock:
            return [{"id": i, "stage": s["stage"], "iteration": s["iteration"], "preset": s["preset"],
                     "name": s.get("name") or None} for i, s in self.status.items()]

    def known_avatars(self) -> set[str]:
        with self.lock:
            return set(self.status)

    def submit_fit(self, avatar_id: str, identity: bytes, request_id: int) -> list[str]:
        job = self.store.job(avatar_id)
        with self.lock:
            self.status[avatar_id] = {"stage": "queued", "iteration": 0, "preset": job["preset"], "name": job["name"]}
            self.fits.append(FitJob(avatar_id, identity, request_id))
            self.lock.notify_all()
        return [] if self._clip_spec() is not None else [_no_clip_warning()]

    def cancel(self, job_id: str) -> bool:
        with self.lock:
            for job in list(self.fits):
                if job.avatar_id == job_id:
                    self.fits.remove(job)
                    self._mark_cancelled(job_id)
                    return True
            if self.running is not None and self.running.avatar_id == job_id:
                self.running.cancel.set()
                return True
        return False

    def submit_render(self, identity: bytes, request_id: int, avatar: str, view: dict, fmt: str,
                      depth: bool = False) -> None:
        self._queue_render(RenderRequest(identity, request_id, avatar, view, fmt, depth=depth))

    def submit_load(self, identity: bytes, request_id: int, avatar: str) -> None:
        self._queue_render(RenderRequest(identity, request_id, avatar, {}, "", load_only=True))

    def submit_export(self, identity: bytes, request_id: int, avatar: str, settings: dict) -> None:
        self._queue_render(RenderRequest(identity, request_id, avatar, {}, "", export=settings))

    def _queue_render(self, req: RenderRequest) -> None:
        with self.lock:
            _room(self.renders, self.limits.max_queued_renders, "renders are already waiting")
            self.renders.append(req)
            self.lock.notify_all()

    def submit_stream(self, stream: Stream) -> None:
        with self.lock:
            _room(self.streams, self.limits.max_streams, "render streams are already waiting")
            self.streams.append(stream)
            self.lock.notify_all()

    def ack(self, identity: bytes, stream_id: str, index: int) -> None:
        with self.lock:
            for s in self._all_streams():
                if s.id == stream_id and s.identity == identity:
                    s.acked = max(s.acked, min(index, s.sent))   # a future ack can't open the window
            self.lock.notify_all()

    def delete(self, avatar_id: str) -> None:
        """Remove an avatar and its inputs; a queued fit of it is dropped, a running one refused."""
        with self.lock:
            if self.running is not None and self.running.avatar_id == avatar_id:
                raise P.ProtocolError(P.BUSY, f"avatar {avatar_id} is being fitted: cancel the fit first")
            self.fits = collections.deque(j for j in self.fits if j.avatar_id != avatar_id)
            self.status.pop(avatar_id, None)
            self._cache.pop(avatar_id, None)
        self.store.delete(avatar_id)

    def cancel_stream(self, identity: bytes, request_id: int) -> None:
        """A client's stop: its stream (queued or running) ends without another frame."""
        with self.lock:
            for s in self._all_streams():
                if s.identity == identity and s.request_id == request_id:
                    s.cancelled = True
            self.streams = collections.deque(s for s in self.streams if not s.cancelled)
            self.lock.notify_all()

    def drop_client(self, identity: bytes) -> None:
        with self.lock:
            for s in self._all_streams():
                if s.identity == identity:
                    s.cancelled = True
            self.renders = collections.deque(r for r in self.renders if r.identity != identity)
            self.lock.notify_all()

    def resume_unfinished(self) -> None:
        """After a restart: fits that were queued or running continue (from their checkpoint)."""
        with self.lock:
            for avatar_id, st in self.status.items():
                if st["stage"] not in ("done", "cancelled"):
                    self.fits.append(FitJob(avatar_id, None, 0))
            self.lock.notify_all()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            if self.running is not None:
                self.running.cancel.set()
            for s in self._all_streams():
                s.cancelled = True
            self.lock.notify_all()
        if self.is_alive():
            self.join(timeout=30)

    # ------------------------------------------------------------------ the worker thread
    def run(self) -> None:
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.outbox_address)
        self._current_stream = None
        try:
            while True:
                with self.lock:
                    while not (self._stopping or self.renders or self.streams or self.fits):
                        self.lock.wait()
                    if self._stopping:
                        return
                    if self.renders:
                        task = ("render", self.renders.popleft())
                    elif self.streams:
                        task = ("stream", self.streams.popleft())
                    else:
                        task = ("fit", self.fits.popleft())
                        self.running = task[1]
                try:
                    if task[0] == "render":
                        self._render_request(task[1])
                    elif task[0] == "stream":
                        self._stream(task[1])
                    else:
                        self._fit(task[1])
                except Exception as exc:  # noqa: BLE001 - one task's failure must not end the worker
                    self._task_failed(task, exc)
                finally:
                    with self.lock:
                        self.running = None
        finally:
            self.push.close(linger=0)

    def _task_failed(self, task: tuple, exc: Exception) -> None:
        kind, item = task
        log.exception("%s failed", kind)
        self.failures += 1
        self.last_error = f"{kind}: {type(exc).__name__}: {exc}"[:P.MAX_STRING]
        what = f"fit {item.avatar_id}" if kind == "fit" else kind
        try:
            if kind == "fit":
                self._set_status(item.avatar_id, stage="failed")
        except Exception:  # noqa: BLE001 - e.g. a full disk: the reply below still goes out
            log.exception("recording the failed fit %s", item.avatar_id)
        try:
            self._error(item.identity, item.request_id, P.INTERNAL, f"{what} failed: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001
            log.exception("replying to a failed %s", kind)

    def _send(self, identity: bytes | None, type_: str, fields: dict, frames=None, id: int = 0) -> None:
        if identity is not None:
            self.push.send_multipart([identity] + P.encode(type_, fields, frames, id=id))

    def _error(self, identity, request_id, code: str, message: str) -> None:
        self._send(identity, "error", {"code": code, "message": message[:P.MAX_STRING]}, id=request_id)

    # ------------------------------------------------------------------ fits
    def _clip_spec(self):
        from backend.avatar.pretrained import ClipError, ClipSpec, resolve_weights

        spec = ClipSpec()
        try:
            resolve_weights(spec)
        except ClipError:
            return None
        return spec

    def _fit(self, job: FitJob) -> None:
        from backend.jobs.avatar_fit import run_avatar_fit

        meta = self.store.job(job.avatar_id)
        inputs = self.store.inputs(job.avatar_id)
        self._set_status(job.avatar_id, stage="A", iteration=0)

        def progress(rec):
            if job.cancel.is_set() or self._stopping:
                raise FitCancelled()
            stage = rec.get("stage", "B")
            losses = {k: v for k, v in rec.items() if isinstance(v, float) and k not in
                      ("eta_s", "seconds_per_iteration") and np.isfinite(v)}
            total = rec.get("of", 0)
            self._set_status(job.avatar_id, stage=stage, iteration=rec["iteration"] if stage == "B" else 0)
            self._send(job.identity, "progress", {"job": job.avatar_id, "stage": stage, "iteration": rec["iteration"],
                                                  "total": total, "losses": losses,
                                                  "eta_s": rec.get("eta_s")}, id=job.request_id)

        told_body = False

        def on_step(stage, rec):
            nonlocal told_body
            if not told_body and job.identity is not None:   # the body, once: the client can pose its rig now
                told_body = True
                t = stage.target
                self._send(job.identity, "progress", {
                    "job": job.avatar_id, "stage": "B", "iteration": rec["iteration"], "total": rec.get("of", 0),
                    "body": {"pose": t.pose, "transl": t.transl, "camera": t.camera.to_dict(),
                             "rest_joints": _rest_joints(stage.avatar)}}, id=job.request_id)
            self._renders_between_iterations()
            if self.preview_every and rec["iteration"] % self.preview_every == 0 and job.identity is not None:
                self._send(job.identity, "progress", {"job": job.avatar_id, "stage": "B",
                                                      "iteration": rec["iteration"], "total": rec.get("of", 0)},
                           {"preview": _preview(stage)}, id=job.request_id)

        try:
            result = run_avatar_fit(photo=inputs["photo"], mask=inputs["mask"], params=inputs["params"],
                                    body_spec=meta.get("body", "open_body"), preset=meta["preset"],
                                    out=self.store.avatar_path(job.avatar_id), prompt=meta.get("prompt") or None,
                                    clip_spec=self._clip_spec(), device=self.device,
                                    fit_body=meta.get("fit_body", True), resume=True, camera=inputs["camera"],
                                    log=lambda m: log.info("%s: %s", job.avatar_id, m),
                                    progress=progress, on_step=on_step)
        except FitCancelled:
            if not self._stopping:
                self._mark_cancelled(job.avatar_id)
            return
        except AvatarError as exc:   # the inputs' fault: say what is wrong with them
            self._error(job.identity, job.request_id, P.BAD_FIELD, f"fit {job.avatar_id}: {exc}")
            try:
                self._set_status(job.avatar_id, stage="failed")
            except OSError:   # e.g. a full disk: the client has its answer; a restart retries the fit
                log.exception("recording the failed fit %s", job.avatar_id)
            return
        # anything else reaches run()'s catch-all: an `internal` error reply, the worker goes on
        self._set_status(job.avatar_id, stage="done", iteration=result.record.iteration)
        self._send(job.identity, "done", {"job": job.avatar_id, "avatar": job.avatar_id,
                                          "warnings": list(result.report.get("warnings", []))[:16]},
                   id=job.request_id)

    def _renders_between_iterations(self) -> None:
        while True:
            with self.lock:
                if not self.renders:
                    return
                req = self.renders.popleft()
            self._render_request(req)

    def _mark_cancelled(self, avatar_id: str) -> None:
        self._set_status(avatar_id, stage="cancelled")

    def _set_status(self, avatar_id: str, **values) -> None:
        with self.lock:
            self.status.setdefault(avatar_id, {"stage": "queued", "iteration": 0, "preset": "", "name": ""})
            self.status[avatar_id].update(values)
        if values.get("stage") in ("cancelled", "failed"):
            self.store.set_state(avatar_id, values["stage"])

    def _scan_store(self) -> None:
        from backend.avatar.avatar_file import load_avatar

        for avatar_id in self.store.ids():
            try:
                job = self.store.job(avatar_id)
                if not isinstance(job, dict) or job.get("preset") not in self.presets:
                    raise ValueError(f"no served preset in it ({str(job)[:80]!r})")
            except (OSError, ValueError) as exc:   # a damaged folder must not stop the server: left as it is
                log.warning("%s: not served, its job.json is unreadable (%s); the folder is left untouched",
                            avatar_id, exc)
                continue
            st = {"stage": job.get("state") or "queued", "iteration": 0, "preset": job["preset"],
                  "name": str(job.get("name") or "")[:200]}
            path = self.store.avatar_path(avatar_id)
            if path.exists() and st["stage"] not in ("cancelled", "failed"):
                try:
                    rec = load_avatar(path, body=self._served_body("cpu"), device="cpu")
                    st.update(stage=rec.stage, iteration=rec.iteration)
                except AvatarError as exc:
                    log.warning("%s: %s", avatar_id, exc)
            self.status[avatar_id] = st

    # ------------------------------------------------------------------ renders
    def _avatar(self, avatar_id: str):
        from backend.avatar.avatar_file import load_avatar

        path = self.store.avatar_path(avatar_id)
        if not path.exists():
            raise P.ProtocolError(P.UNKNOWN_AVATAR, f"avatar {avatar_id!r} has no fitted state yet")
        mtime = path.stat().st_mtime
        cached = self._cache.get(avatar_id)
        if cached is None or cached[0] != mtime:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[avatar_id] = (mtime, load_avatar(path, body=self._served_body(self.device), device=self.device))
        return self._cache[avatar_id][1]

    def _served_body(self, device):
        """The one body this server offers (one instance per device: loading moves it there).
        An avatar file names its body, but a file in the store must never make the server open
        a path it names (a hostile SMPL 'file')."""
        if str(device) not in self._bodies:
            from backend.body.body_model import load_open_body

            self._bodies[str(device)] = load_open_body()
        return self._bodies[str(device)]

    def _frame(self, avatar_id: str, view: dict, fmt: str, depth: bool = False) -> tuple[dict, float]:
        """The frames of one `frame` message ({"rgba"[, "depth"]}) and the seconds it took."""
        start = time.perf_counter()
        rec = self._avatar(avatar_id)
        cam = view["camera"]
        camera = PinholeCamera(cam["K"], cam["R"], cam["t"], cam["width"], cam["height"])
        rgba, z = rec.avatar.render_layers(camera, view["pose"], view["transl"])
        img = (rgba * 255).round().to(torch.uint8) if fmt == "uint8" else rgba.to(torch.float16)
        frames = {"rgba": img.cpu().numpy()}
        if depth:   # 0 exactly where the alpha sent is 0 (uint8 rounds the faintest alpha to 0)
            frames["depth"] = torch.where(img[..., 3] > 0, z, torch.zeros_like(z)).float().cpu().numpy()
        return frames, time.perf_counter() - start

    def _render_request(self, req: RenderRequest) -> None:
        if self.running is not None:
            self.render_delays.append(time.perf_counter() - req.received)
        try:
            if req.load_only:
                rec = self._avatar(req.avatar)
                self._send(req.identity, "loaded", {
                    "avatar": req.avatar, "stage": rec.stage, "iteration": rec.iteration, "preset": rec.config.name,
                    "pose": rec.pose, "transl": rec.transl, "camera": rec.camera.to_dict(),
                    "rest_joints": _rest_joints(rec.avatar),
                    "warnings": list((rec.report or {}).get("warnings", []))[:16]},
                    P.proxy_frames(_proxy(rec.avatar)), id=req.request_id)
                return
            if req.export is not None:
                self._export(req)
                return
            frames, seconds = self._frame(req.avatar, req.view, req.format, req.depth)
        except P.ProtocolError as exc:
            self._error(req.identity, req.request_id, exc.code, exc.message)
            return
        except Exception as exc:  # noqa: BLE001
            log.exception("render failed")
            self._error(req.identity, req.request_id, P.INTERNAL, f"render failed: {exc}")
            return
        self._send(req.identity, "frame", {"index": 0, "seconds": seconds}, frames, id=req.request_id)

    def _export(self, req: RenderRequest) -> None:
        from backend.errors import InputError
        from backend.export.gltf import to_glb
        from backend.jobs.avatar_export import ExportConfig, bake

        rec = self._avatar(req.avatar)
        if rec.stage != "done":
            raise P.ProtocolError(P.BAD_FIELD, f"avatar {req.avatar!r} is not finished (stage {rec.stage}); "
                                               f"export it once its fit is done")
        try:
            cfg = ExportConfig.preset(req.export.get("preset") or "default", triangles=req.export.get("triangles"),
                                      texture=req.export.get("texture"))
        except InputError as exc:
            raise P.ProtocolError(P.BAD_FIELD, str(exc)) from None
        start = time.perf_counter()
        with torch.no_grad():
            mesh, _ = bake(rec.avatar, cfg, photo_view=(rec.camera, rec.pose, rec.transl))
        data = np.frombuffer(to_glb(mesh, name=f"avatar_{req.avatar[:6]}"), np.uint8).reshape(-1, 1)
        self._send(req.identity, "exported", {
            "avatar": req.avatar, "triangles": int(len(mesh.faces)), "vertices": int(len(mesh.vertices)),
            "texture": int(mesh.texture.shape[0]), "seconds": time.perf_counter() - start},
            {"glb": data}, id=req.request_id)

    def _all_streams(self):
        current = [self._current_stream] if getattr(self, "_current_stream", None) is not None else []
        return list(self.streams) + current

    def _stream(self, s: Stream) -> None:
        self._current_stream = s
        try:
            for i, view in enumerate(s.views):
                if not self._wait_for_acks(s, i):
                    return
                try:
                    frames, seconds = self._frame(s.avatar, view, s.format, s.depth)
                except P.ProtocolError as exc:
                    self._error(s.identity, s.request_id, exc.code, exc.message)
                    return
                if i == 0:   # big frames: fewer in flight, so a stalled client holds a bounded amount
                    nbytes = sum(f.nbytes for f in frames.values())
                    s.window = max(1, min(s.window, P.MAX_STREAM_BYTES_IN_FLIGHT // max(1, nbytes)))
                with self.lock:   # before the send: the client's ack of frame i may come back at once
                    s.sent = i
                self._send(s.identity, "frame", {"index": i, "stream": s.id, "seconds": seconds}, frames,
                           id=s.request_id)
            self._send(s.identity, "stream_done", {"stream": s.id, "count": len(s.views)}, id=s.request_id)
        finally:
            self._current_stream = None

    def _wait_for_acks(self, s: Stream, i: int) -> bool:
        """Until frame i may be sent (True) or the stream ends (False: cancelled, stopping or no
        ack for stream_ack_timeout_s). Single renders are answered meanwhile."""
        timeout = self.limits.stream_ack_timeout_s
        acked, deadline = s.acked, time.monotonic() + timeout
        while True:
            with self.lock:
                if s.cancelled or self._stopping:
                    return False
                if i <= s.acked + s.window:
                    return True
                now = time.monotonic()
                if s.acked != acked:
                    acked, deadline = s.acked, now + timeout
                if now >= deadline:
                    break
                if not self.renders:
                    self.lock.wait(timeout=min(0.5, deadline - now))
                    continue
            self._renders_between_iterations()
        self._error(s.identity, s.request_id, P.TIMEOUT,
                    f"stream {s.id}: no ack for {timeout:g} s after frame {s.acked}; the stream was stopped")
        return False


def _room(queue, limit: int, what: str) -> None:
    """`busy` when the queue is at its limit."""
    if len(queue) >= limit:
        raise P.ProtocolError(P.BUSY, f"{len(queue)} {what}; try again later")


def _preview(stage, side: int = 128) -> np.ndarray:
    """The avatar as it is now, from the photo's camera, at most `side` pixels: (h, w, 3) uint8."""
    t = stage.target
    cam = t.camera.scaled(side / max(t.camera.width, t.camera.height))
    with torch.no_grad():
        out = stage.avatar.render(cam, t.pose, t.transl, background=(1.0, 1.0, 1.0))
    return (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _rest_joints(avatar) -> np.ndarray:
    """(24, 3) rest-pose joints of the avatar's fitted body (SMPL frame): a rig's bone heads."""
    with torch.no_grad():
        return avatar.body.rest(avatar.betas)[1][0].cpu().numpy().astype(np.float64)


def _proxy(avatar) -> dict:
    """The avatar's body as a mesh for a rig to deform (the add-on's shadow proxy): the rest-pose
    vertices `_rest_joints` belongs to (SMPL frame), the faces, and each vertex's skinning as its
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


def _no_clip_warning() -> str:
    from backend.jobs.avatar_fit import NO_CLIP_WARNING

    return NO_CLIP_WARNING
