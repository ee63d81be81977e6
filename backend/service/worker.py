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
import logging
import time

import zmq

from backend.errors import AvatarError
from backend.service.engine import Engine, FitCancelled
from backend.service.limits import WorkerLimits
from backend.service.store import AvatarStore
from backend.service.tasks import (FitJob, RenderRequest, Stream, TaskQueues, ack_timeout_message, answer,
                                   error_message, progress_status, room, stream_window)
from shared import protocol as P

log = logging.getLogger("avatar.worker")


class Worker(TaskQueues):
    def __init__(self, ctx: zmq.Context, outbox: str, store: AvatarStore, device: str = "auto",
                 preview_every: int = 25, limits: WorkerLimits = WorkerLimits()):
        engine = Engine(store, device=device, preview_every=preview_every)
        super().__init__("avatar-worker", ctx, outbox, store, limits, engine.scan_store())
        self.engine = engine
        self.device, self.presets = engine.device, engine.presets
        self.running: FitJob | None = None
        self._stopping = False
        # seconds a single render waited during a fit (the latest ones: memory stays bounded)
        self.render_delays: collections.deque[float] = collections.deque(maxlen=1000)

    # ------------------------------------------------------------------ called by the network thread
    def capabilities(self, max_side: int) -> dict:
        return self.engine.capabilities(max_side)

    def fit_warnings(self) -> list[str]:
        return self.engine.fit_warnings()

    def cancel(self, job_id: str) -> bool:
        with self.lock:
            if self.dequeue_fit(job_id):
                return True
            if self.running is not None and self.running.avatar_id == job_id:
                self.running.cancel.set()
                return True
        return False

    def submit_stream(self, stream: Stream) -> None:
        with self.lock:
            room(self.streams, self.limits.max_streams, "render streams are already waiting")
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
            self.engine.forget(avatar_id)
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
        self._open_outbox()
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

    def _error(self, identity, request_id, code: str, message: str) -> None:
        self._send(identity, "error", {"code": code, "message": message[:P.MAX_STRING]}, id=request_id)

    # ------------------------------------------------------------------ fits
    def _fit(self, job: FitJob) -> None:
        self._set_status(job.avatar_id, stage="A", iteration=0)

        def emit(type_, fields, frames):
            self._set_status(job.avatar_id, **progress_status(fields))
            self._send(job.identity, type_, fields, frames, id=job.request_id)

        try:
            done, iteration = self.engine.fit(job.avatar_id, emit, lambda: job.cancel.is_set() or self._stopping,
                                              self._renders_between_iterations, listening=job.identity is not None)
        except FitCancelled:
            if not self._stopping:
                self._set_status(job.avatar_id, stage="cancelled")
            return
        except AvatarError as exc:   # the inputs' fault: say what is wrong with them
            self._error(job.identity, job.request_id, P.BAD_FIELD, f"fit {job.avatar_id}: {exc}")
            try:
                self._set_status(job.avatar_id, stage="failed")
            except OSError:   # e.g. a full disk: the client has its answer; a restart retries the fit
                log.exception("recording the failed fit %s", job.avatar_id)
            return
        # anything else reaches run()'s catch-all: an `internal` error reply, the worker goes on
        self._set_status(job.avatar_id, stage="done", iteration=iteration)
        self._send(job.identity, *done, id=job.request_id)

    def _renders_between_iterations(self) -> None:
        while True:
            with self.lock:
                if not self.renders:
                    return
                req = self.renders.popleft()
            self._render_request(req)

    # ------------------------------------------------------------------ renders
    def _render_request(self, req: RenderRequest) -> None:
        if self.running is not None:
            self.render_delays.append(time.perf_counter() - req.received)
        try:
            message = answer(self.engine, req)
        except Exception as exc:  # noqa: BLE001 - a render's failure is its asker's error reply
            message = error_message(exc, "render")
        self._send(req.identity, *message, id=req.request_id)

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
                    frames, seconds = self.engine.frame(s.avatar, view, s.format, s.depth)
                except P.ProtocolError as exc:
                    self._error(s.identity, s.request_id, exc.code, exc.message)
                    return
                if i == 0:
                    s.window = stream_window(s.window, frames)
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
        self._error(s.identity, s.request_id, P.TIMEOUT, ack_timeout_message(s, timeout))
        return False
