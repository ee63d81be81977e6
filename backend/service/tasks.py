"""The requests a backend queues (fits, single renders, render streams) and the queues
themselves: `TaskQueues` is what the network thread calls, the same for the single compute
worker (worker.py) and the farm's dispatcher (backend/farm/dispatcher.py). No heavy imports:
the farm's front queues the same requests without torch."""
from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
import time

import zmq

from backend.service.limits import WorkerLimits
from backend.service.store import AvatarStore
from shared import protocol as P

log = logging.getLogger("avatar.tasks")


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
    tries: int = 0              # a farm redoes a render whose worker died


def room(queue, limit: int, what: str) -> None:
    """`busy` when the queue is at its limit."""
    if len(queue) >= limit:
        raise P.ProtocolError(P.BUSY, f"{len(queue)} {what}; try again later")


class TaskQueues(threading.Thread):
    """The queues of fits and single renders, the avatars' listed state, and the calls the
    network thread makes on them (under `lock`). Subclasses run the thread that serves them."""

    def __init__(self, name: str, ctx: zmq.Context, outbox: str, store: AvatarStore, limits: WorkerLimits,
                 status: dict[str, dict]):
        super().__init__(name=name, daemon=True)
        self.ctx, self.outbox_address = ctx, outbox
        self.store, self.limits, self.status = store, limits, status
        self.failures = 0
        self.last_error: str | None = None
        self.lock = threading.Condition()
        self.fits: collections.deque[FitJob] = collections.deque()
        self.renders: collections.deque[RenderRequest] = collections.deque()
        self.streams: collections.deque = collections.deque()

    def fit_warnings(self) -> list[str]:
        return []

    # ------------------------------------------------------------------ replies (from the serving thread only)
    def _open_outbox(self) -> None:
        """The serving thread's PUSH into the network thread's outbox: made in the thread that uses
        it, as no ZeroMQ socket may be shared by two threads."""
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.outbox_address)

    def _send(self, identity: bytes | None, type_: str, fields: dict, frames=None, id: int = 0) -> None:
        if identity is not None:
            self.push.send_multipart([identity] + P.encode(type_, fields, frames, id=id))

    def serving(self) -> bool:
        """Whether work is being done (health's `alive`)."""
        return self.is_alive()

    def health(self) -> dict:
        with self.lock:
            queued = len(self.fits) + len(self.renders) + len(self.streams)
        return {"alive": self.serving(), "failures": self.failures, "last_error": self.last_error,
                "queued": queued}

    def check_room_for_fit(self) -> None:
        """Called before a fit's inputs are stored: a full queue stores nothing."""
        with self.lock:
            room(self.fits, self.limits.max_queued_fits, "fits are already queued")

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
        return self.fit_warnings()

    def dequeue_fit(self, job_id: str) -> bool:
        """Cancel a fit still waiting (True), under the lock."""
        for job in list(self.fits):
            if job.avatar_id == job_id:
                self.fits.remove(job)
                self._set_status(job_id, stage="cancelled")
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
            room(self.renders, self.limits.max_queued_renders, "renders are already waiting")
            self.renders.append(req)
            self.lock.notify_all()

    def resume_unfinished(self) -> None:
        """After a restart: fits that were queued, running or failed continue (from their checkpoint)."""
        with self.lock:
            for avatar_id, st in self.status.items():
                if st["stage"] not in ("done", "cancelled"):
                    self.fits.append(FitJob(avatar_id, None, 0))
            self.lock.notify_all()

    def _set_status(self, avatar_id: str, **values) -> None:
        with self.lock:
            self.status.setdefault(avatar_id, {"stage": "queued", "iteration": 0, "preset": "", "name": ""})
            self.status[avatar_id].update(values)
        if values.get("stage") in ("cancelled", "failed"):
            self.store.set_state(avatar_id, values["stage"])


def answer(engine, req: RenderRequest):
    """The message that answers a single render, load or export (engine: service/engine.py's Engine)."""
    if req.load_only:
        return engine.loaded(req.avatar)
    if req.export is not None:
        return engine.exported(req.avatar, req.export)
    frames, seconds = engine.frame(req.avatar, req.view, req.format, req.depth)
    return ("frame", {"index": 0, "seconds": seconds}, frames)


def error_message(exc: Exception, what: str):
    """An `error` message for a failed request: the request's fault keeps its code, anything
    else is `internal`."""
    if isinstance(exc, P.ProtocolError):
        return ("error", {"code": exc.code, "message": exc.message[:P.MAX_STRING]}, None)
    log.error("%s failed", what, exc_info=exc)
    return ("error", {"code": P.INTERNAL, "message": f"{what} failed: {type(exc).__name__}: {exc}"[:P.MAX_STRING]},
            None)


def progress_status(fields: dict) -> dict:
    """A fit's listed state after one of its progress messages."""
    return {"stage": fields["stage"], "iteration": fields["iteration"] if fields["stage"] == "B" else 0}


def stream_window(window: int, frames: dict) -> int:
    """Big frames: fewer in flight, so a stalled client holds a bounded amount."""
    nbytes = sum(f.nbytes for f in frames.values())
    return max(1, min(window, P.MAX_STREAM_BYTES_IN_FLIGHT // max(1, nbytes)))


def ack_timeout_message(s: Stream, timeout: float) -> str:
    return f"stream {s.id}: no ack for {timeout:g} s after frame {s.acked}; the stream was stopped"
