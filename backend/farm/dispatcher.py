"""The farm front's stand-in for the single backend's worker: the network thread (server.py) calls
the same methods, and this thread hands the work to Ray actors (actor.py) instead of computing.

- Single renders, loads and exports go to the least-loaded worker.
- A render stream is cut into chunks of `chunk_frames` frames, spread over the workers and
  re-assembled: frames leave in order, within the client's ack window (as with one backend), and
  only a bounded number of frames is rendered ahead of the acks.
- A fit goes to the least-loaded worker without a fit; its progress is collected a few times a
  second and forwarded; cancel reaches the worker that runs it.
- A worker that dies (Ray raises RayActorError for everything it was doing) is left out until Ray
  has restarted it (the actors restart without limit); its chunks and renders are redone on
  other workers, its fit resumes elsewhere from the last checkpoint in the shared store. The
  client sees a delay, never a duplicate or missing frame.

Only this thread calls Ray; the network thread just queues under `lock`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time

import ray
import zmq

from backend.farm.config import FarmConfig
from backend.service.limits import WorkerLimits
from backend.service.store import AvatarStore
from backend.service.tasks import FitJob, Stream, TaskQueues, ack_timeout_message, progress_status, room, stream_window
from shared import protocol as P
from shared.camera import MAX_IMAGE_SIDE

log = logging.getLogger("avatar.farm")


@dataclasses.dataclass
class FarmWorkerHandle:
    index: int
    actor: object
    pid: int = 0
    node: str = ""
    tasks: int = 0              # renders and chunks in flight
    fit: str | None = None      # the avatar it fits
    down: bool = False          # died; waiting for Ray to restart it
    probe_at: float = 0.0       # when to ask a down worker again whether it is back
    probing: bool = False

    def load(self) -> int:
        return self.tasks + (2 if self.fit else 0)


@dataclasses.dataclass
class FarmStream:
    stream: Stream
    chunks: list[range]
    next_chunk: int = 0
    retry: collections.deque = dataclasses.field(default_factory=collections.deque)   # chunk numbers
    attempts: dict = dataclasses.field(default_factory=dict)     # chunk number -> tries
    avoid: dict = dataclasses.field(default_factory=dict)        # chunk number -> the worker that died on it
    frames: dict = dataclasses.field(default_factory=dict)       # index -> (frames, seconds), not yet sent
    next_send: int = 0
    blocked_since: float | None = None


@dataclasses.dataclass
class RunningFit:
    job: FitJob
    worker: FarmWorkerHandle
    attempts: int = 1
    poll: object = None         # the progress call in flight
    next_poll: float = 0.0


class FarmDispatcher(TaskQueues):
    def __init__(self, ctx: zmq.Context, outbox: str, store: AvatarStore, workers: list[FarmWorkerHandle],
                 info: dict, status: dict, cfg: FarmConfig = FarmConfig(), limits: WorkerLimits = WorkerLimits()):
        """info: a worker's describe() (capabilities, fit warnings); status: the store's avatars
        as a worker's scan() found them."""
        super().__init__("avatar-farm", ctx, outbox, store, limits, status)
        self.workers, self.cfg = workers, cfg
        caps = info["capabilities"]
        self.device = f"farm: {len(workers)} x {caps['device']}"
        self.presets = tuple(caps["presets"])
        self._capabilities = {**caps, "device": self.device[:64]}
        self._warnings = list(info["warnings"])
        self.running: dict[str, RunningFit] = {}
        self._cancels: list[tuple[FarmWorkerHandle, str]] = []
        self._pending: dict = {}    # ObjectRef -> (kind, worker, what)
        self._stopping = False

    # ------------------------------------------------------------------ called by the network thread
    def serving(self) -> bool:
        with self.lock:
            return self.is_alive() and any(not w.down for w in self.workers)

    def capabilities(self, max_side: int) -> dict:
        return {**self._capabilities, "max_image_side": min(max_side, self._capabilities["max_image_side"])}

    def fit_warnings(self) -> list[str]:
        return list(self._warnings)

    def cancel(self, job_id: str) -> bool:
        with self.lock:
            if self.dequeue_fit(job_id):
                self.running.pop(job_id, None)   # one whose worker died, waiting to resume
                return True
            run = self.running.get(job_id)
            if run is not None:
                run.job.cancel.set()
                self._cancels.append((run.worker, job_id))
                self.lock.notify_all()
                return True
        return False

    def submit_stream(self, stream: Stream) -> None:
        n, size = len(stream.views), max(1, self.cfg.chunk_frames)
        with self.lock:
            room(self.streams, self.limits.max_streams, "render streams are already waiting")
            self.streams.append(FarmStream(stream, [range(i, min(n, i + size)) for i in range(0, n, size)]))
            self.lock.notify_all()

    def ack(self, identity: bytes, stream_id: str, index: int) -> None:
        with self.lock:
            for fs in self.streams:
                s = fs.stream
                if s.id == stream_id and s.identity == identity and min(index, s.sent) > s.acked:
                    s.acked = min(index, s.sent)   # a future ack can't open the window
                    fs.blocked_since = None
            self.lock.notify_all()

    def delete(self, avatar_id: str) -> None:
        with self.lock:
            if avatar_id in self.running and self.running[avatar_id].worker.fit == avatar_id:
                raise P.ProtocolError(P.BUSY, f"avatar {avatar_id} is being fitted: cancel the fit first")
            self.fits = collections.deque(j for j in self.fits if j.avatar_id != avatar_id)
            self.running.pop(avatar_id, None)
            self.status.pop(avatar_id, None)
        self.store.delete(avatar_id)

    def cancel_stream(self, identity: bytes, request_id: int) -> None:
        with self.lock:
            for fs in self.streams:
                if fs.stream.identity == identity and fs.stream.request_id == request_id:
                    fs.stream.cancelled = True
            self.lock.notify_all()

    def drop_client(self, identity: bytes) -> None:
        with self.lock:
            for fs in self.streams:
                if fs.stream.identity == identity:
                    fs.stream.cancelled = True
            self.renders = collections.deque(r for r in self.renders if r.identity != identity)
            self.lock.notify_all()

    def stop(self) -> None:
        """Running fits stop at their next iteration (their checkpoints stay: the next start
        resumes them); streams end."""
        with self.lock:
            self._stopping = True
            self.lock.notify_all()
        if self.is_alive():
            self.join(timeout=60)

    # ------------------------------------------------------------------ the dispatch thread
    def run(self) -> None:
        self._open_outbox()
        try:
            while not self._stopping:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - one bad result must not stop the farm
                    log.exception("the farm's dispatch step failed")
                    self._failed("dispatch", f"{type(exc).__name__}: {exc}")
                    time.sleep(0.05)
            self._stop_fits()
        finally:
            self.push.close(linger=0)

    def _step(self) -> None:
        """Place waiting work, collect what finished, send the stream frames that may go."""
        with self.lock:
            self._place()
            cancels, self._cancels = self._cancels, []
        for worker, avatar_id in cancels:
            worker.actor.cancel.remote(avatar_id)
        self._poll_fits()
        self._probe()
        refs = list(self._pending)
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.05)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._completed(ref)
        else:
            with self.lock:
                self.lock.wait(0.05)
        with self.lock:
            self._send_stream_frames()

    def _stop_fits(self) -> None:
        for run in list(self.running.values()):
            run.worker.actor.cancel.remote(run.job.avatar_id)
        fits = [ref for ref, (kind, _, _) in self._pending.items() if kind == "fit"]
        if fits:
            ray.wait(fits, num_returns=len(fits), timeout=30)

    def _failed(self, what: str, message: str) -> None:
        self.failures += 1
        self.last_error = f"{what}: {message}"[:P.MAX_STRING]

    def _set_status(self, avatar_id: str, **values) -> None:
        try:
            super()._set_status(avatar_id, **values)
        except OSError:   # e.g. a full disk: the client still gets its answer; a restart retries the fit
            log.exception("recording the %s fit %s", values.get("stage"), avatar_id)

    # ------------------------------------------------------------------ placing work (under lock)
    def _pick(self, avoid: FarmWorkerHandle | None = None) -> FarmWorkerHandle | None:
        """The least-loaded live worker with room for another render task."""
        free = [w for w in self.workers if not w.down and w.tasks < self.cfg.tasks_per_worker]
        if avoid is not None and len(free) > 1:
            free = [w for w in free if w is not avoid] or free
        return min(free, key=FarmWorkerHandle.load, default=None)

    def _submit(self, worker: FarmWorkerHandle, kind: str, what, method: str, *args) -> None:
        ref = getattr(worker.actor, method).remote(*args)
        self._pending[ref] = (kind, worker, what)
        if kind in ("answer", "chunk"):
            worker.tasks += 1

    def _place(self) -> None:
        while self.renders:
            worker = self._pick()
            if worker is None:
                break
            req = self.renders.popleft()
            self._submit(worker, "answer", req, "answer", req)
        lookahead = self.cfg.chunk_frames * self.cfg.tasks_per_worker * len(self.workers)
        for fs in [fs for fs in self.streams if fs.stream.cancelled]:
            self.streams.remove(fs)
        for fs in self.streams:
            if not self._place_chunks(fs, lookahead):
                break   # every worker has its render tasks: fits may still go to one that is not fitting
        while self.fits:
            idle = [w for w in self.workers if not w.down and w.fit is None]
            if not idle:
                break
            worker = min(idle, key=FarmWorkerHandle.load)
            job = self.fits.popleft()
            run = self.running.get(job.avatar_id) or RunningFit(job, worker)
            run.worker, worker.fit = worker, job.avatar_id
            self.running[job.avatar_id] = run
            self._set_status(job.avatar_id, stage="A", iteration=0)
            self._submit(worker, "fit", run, "fit", job.avatar_id, job.identity is not None)

    def _place_chunks(self, fs: FarmStream, lookahead: int) -> bool:
        """Submit the stream's next chunks (retries first) as far as workers have room and the
        client's acks allow; False when no worker had room."""
        s = fs.stream
        while fs.retry or fs.next_chunk < len(fs.chunks):
            number = fs.retry[0] if fs.retry else fs.next_chunk
            if fs.chunks[number].start > s.acked + s.window + lookahead:
                return True   # far enough ahead of the client
            worker = self._pick(avoid=fs.avoid.get(number))
            if worker is None:
                return False
            if fs.retry:
                fs.retry.popleft()
            else:
                fs.next_chunk += 1
            fs.attempts[number] = fs.attempts.get(number, 0) + 1
            views = [s.views[i] for i in fs.chunks[number]]
            self._submit(worker, "chunk", (fs, number), "frames", s.avatar, views, s.format, s.depth)
        return True

    def _poll_fits(self) -> None:
        now = time.monotonic()
        for run in list(self.running.values()):
            if run.poll is None and now >= run.next_poll and not run.worker.down:
                run.poll = run.worker.actor.progress.remote(run.job.avatar_id)
                run.next_poll = now + self.cfg.poll_s
                self._pending[run.poll] = ("poll", run.worker, run)

    # ------------------------------------------------------------------ results
    def _completed(self, ref) -> None:
        entry = self._pending.pop(ref, None)
        if entry is None:   # a progress call its fit's end already accounted for
            return
        kind, worker, what = entry
        try:
            result, lost = ray.get(ref), None
        except ray.exceptions.RayError as exc:   # the worker died (or its result was lost)
            result, lost = None, exc
        with self.lock:
            if kind in ("answer", "chunk"):
                worker.tasks -= 1
            if lost is None:
                getattr(self, f"_got_{kind}")(worker, what, result)
            else:
                self._worker_lost(worker, lost)
                getattr(self, f"_lost_{kind}")(worker, what)

    def _worker_lost(self, worker: FarmWorkerHandle, exc: Exception) -> None:
        if not worker.down:
            log.warning("worker %d (pid %d) is gone (%s); its work goes to the others", worker.index, worker.pid,
                        type(exc).__name__)
            self._failed(f"worker {worker.index}", f"{type(exc).__name__}: {str(exc)[:200]}")
            worker.down, worker.probe_at = True, time.monotonic()

    def _probe(self) -> None:
        """Ask each down worker, once a second, whether Ray has restarted it."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.down and not worker.probing and now >= worker.probe_at:
                worker.probing = True
                self._submit(worker, "probe", None, "describe", MAX_IMAGE_SIDE)

    def _got_probe(self, worker, _, info) -> None:
        worker.down, worker.probing, worker.pid = False, False, info["pid"]
        log.warning("worker %d is back (pid %d)", worker.index, worker.pid)

    def _lost_probe(self, worker, _) -> None:
        worker.probing, worker.probe_at = False, time.monotonic() + 1.0   # still restarting

    def _got_answer(self, worker, req, message) -> None:
        self._send(req.identity, *message, id=req.request_id)

    def _lost_answer(self, worker, req) -> None:
        req.tries += 1
        if req.tries < self.cfg.chunk_attempts:
            self.renders.appendleft(req)
        else:
            self._send(req.identity, "error", {"code": P.INTERNAL, "message": "render failed: its workers died"},
                       id=req.request_id)

    def _got_chunk(self, worker, what, result) -> None:
        fs, number = what
        s = fs.stream
        if s.cancelled or fs not in self.streams:
            return
        if isinstance(result, tuple):   # an `error` message: the stream ends with it
            self._send(s.identity, *result, id=s.request_id)
            s.cancelled = True
            return
        for i, frame in zip(fs.chunks[number], result):
            fs.frames[i] = frame

    def _lost_chunk(self, worker, what) -> None:
        fs, number = what
        if fs.stream.cancelled or fs not in self.streams:
            return
        if fs.attempts.get(number, 0) < self.cfg.chunk_attempts:
            fs.retry.appendleft(number)
            fs.avoid[number] = worker
        else:
            self._send(fs.stream.identity, "error", {"code": P.INTERNAL, "message": (
                f"stream {fs.stream.id}: frames {fs.chunks[number].start}-{fs.chunks[number].stop - 1} failed "
                f"{fs.attempts[number]} times (their workers died)")}, id=fs.stream.request_id)
            fs.stream.cancelled = True

    def _got_poll(self, worker, run, messages) -> None:
        run.poll = None
        self._forward_progress(run, messages)

    def _lost_poll(self, worker, run) -> None:
        run.poll = None   # the fit's own result says what happened

    def _forward_progress(self, run: RunningFit, messages: list) -> None:
        for type_, fields, frames in messages:
            self._set_status(run.job.avatar_id, **progress_status(fields))
            self._send(run.job.identity, type_, fields, frames, id=run.job.request_id)

    def _got_fit(self, worker, run, result) -> None:
        job = run.job
        worker.fit = None
        if run.poll is not None:   # progress collected just before the end goes out first
            try:
                self._forward_progress(run, ray.get(run.poll, timeout=10))
            except ray.exceptions.RayError:
                pass
            self._pending.pop(run.poll, None)
        self.running.pop(job.avatar_id, None)
        self._forward_progress(run, result["progress"])
        outcome = result["outcome"]
        if outcome == "done":
            self._set_status(job.avatar_id, stage="done", iteration=result["iteration"])
        elif outcome == "cancelled":
            if not self._stopping:
                self._set_status(job.avatar_id, stage="cancelled")
            return
        else:
            if outcome == "failed":
                self._failed(f"fit {job.avatar_id}", result["message"][1]["message"])
            self._set_status(job.avatar_id, stage="failed")
        self._send(job.identity, *result["message"], id=job.request_id)

    def _lost_fit(self, worker, run) -> None:
        job = run.job
        worker.fit = None
        if run.poll is not None:
            self._pending.pop(run.poll, None)
            run.poll = None
        if job.cancel.is_set():
            self.running.pop(job.avatar_id, None)
            self._set_status(job.avatar_id, stage="cancelled")
        elif run.attempts < self.cfg.fit_attempts:   # resumed from its last checkpoint by another worker
            run.attempts += 1
            self.fits.appendleft(job)
            self._set_status(job.avatar_id, stage="queued")
        else:
            self.running.pop(job.avatar_id, None)
            self._set_status(job.avatar_id, stage="failed")
            self._send(job.identity, "error", {"code": P.INTERNAL, "message": (
                f"fit {job.avatar_id} failed: its worker died {run.attempts} times")}, id=job.request_id)

    # ------------------------------------------------------------------ streams out (under lock)
    def _send_stream_frames(self) -> None:
        now = time.monotonic()
        for fs in list(self.streams):
            s = fs.stream
            if s.cancelled:
                continue
            while fs.next_send in fs.frames:
                i = fs.next_send
                if i == 0:
                    s.window = stream_window(s.window, fs.frames[0][0])
                if i > s.acked + s.window:
                    fs.blocked_since = fs.blocked_since or now
                    break
                frames, seconds = fs.frames.pop(i)
                s.sent, fs.next_send, fs.blocked_since = i, i + 1, None
                self._send(s.identity, "frame", {"index": i, "stream": s.id, "seconds": seconds}, frames,
                           id=s.request_id)
            if fs.next_send == len(s.views):
                self._send(s.identity, "stream_done", {"stream": s.id, "count": len(s.views)}, id=s.request_id)
                self.streams.remove(fs)
            elif fs.blocked_since is not None and now - fs.blocked_since > self.limits.stream_ack_timeout_s:
                self._send(s.identity, "error", {"code": P.TIMEOUT, "message": ack_timeout_message(
                    s, self.limits.stream_ack_timeout_s)}, id=s.request_id)
                s.cancelled = True
