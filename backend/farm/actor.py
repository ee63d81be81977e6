"""A farm worker: one Engine (the single backend's compute) over the farm's shared store, run by
Ray as an actor on one GPU or `cpus_per_worker` CPUs. Threaded (max_concurrency): the front can
collect a fit's progress, cancel it, or have frames rendered while it runs.

Answers are plain values (messages as shared/protocol.py defines them, never exceptions): a
request's fault comes back as an `error` message, so Ray errors at the front mean one thing
only, that the worker is gone.
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from backend.errors import AvatarError
from backend.service.store import AvatarStore
from backend.service.tasks import RenderRequest, answer, error_message
from shared import protocol as P

log = logging.getLogger("avatar.farm.worker")
PROGRESS_KEPT = 64   # progress messages a fit keeps for the front (it collects them a few times a second)


class FarmWorker:
    def __init__(self, store: str, device: str, preview_every: int, cpus: int):
        import torch   # here, not at the top: the front imports this class only to hand it to Ray

        from backend.service.engine import Engine

        if device == "cpu" or not torch.cuda.is_available():
            torch.set_num_threads(max(1, cpus))
        self.engine = Engine(AvatarStore(store, lock=False), device=device, preview_every=preview_every)
        self._fits: dict[str, tuple[threading.Event, collections.deque]] = {}
        self._lock = threading.Lock()
        # renders take turns: a worker is one GPU or CPU slot, and the front keeps the next task
        # queued here so the slot never idles between tasks (a fit runs beside them)
        self._render_turn = threading.Lock()

    def describe(self, max_side: int) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "capabilities": self.engine.capabilities(max_side), "warnings": self.engine.fit_warnings()}

    def scan(self) -> dict:
        return self.engine.scan_store()

    def forget(self, avatar_id: str) -> None:
        self.engine.forget(avatar_id)

    def answer(self, req: RenderRequest):
        """A single render, load or export: its answer message."""
        try:
            with self._render_turn:
                return answer(self.engine, req)
        except Exception as exc:  # noqa: BLE001 - the asker's error reply, the worker goes on
            return error_message(exc, "render")

    def frames(self, avatar_id: str, views: list, fmt: str, depth: bool):
        """A chunk of a render stream: [(frames, seconds), ...] in order, or an `error` message."""
        try:
            with self._render_turn:
                return [self.engine.frame(avatar_id, v, fmt, depth) for v in views]
        except Exception as exc:  # noqa: BLE001
            return error_message(exc, "render")

    def fit(self, avatar_id: str, listening: bool) -> dict:
        """Fit (or resume) a stored avatar. {"outcome": done | cancelled | bad_input | failed,
        "message": the answer, "iteration": the last one, "progress": the progress messages
        `progress` has not handed out yet}."""
        from backend.service.engine import FitCancelled

        cancel, messages = threading.Event(), collections.deque(maxlen=PROGRESS_KEPT)
        with self._lock:
            self._fits[avatar_id] = (cancel, messages)
        out = {"outcome": "failed", "message": None, "iteration": 0}
        try:
            done, iteration = self.engine.fit(avatar_id, lambda *m: messages.append(m), cancel.is_set,
                                              listening=listening)
            out.update(outcome="done", message=done, iteration=iteration)
        except FitCancelled:
            out.update(outcome="cancelled")
        except AvatarError as exc:   # the inputs' fault
            out.update(outcome="bad_input", message=("error", {
                "code": P.BAD_FIELD, "message": f"fit {avatar_id}: {exc}"[:P.MAX_STRING]}, None))
        except Exception as exc:  # noqa: BLE001
            out.update(message=error_message(exc, f"fit {avatar_id}"))
        finally:
            with self._lock:
                self._fits.pop(avatar_id, None)
        out["progress"] = _drain(messages)
        return out

    def progress(self, avatar_id: str) -> list:
        """The progress messages of a running fit since the last call."""
        with self._lock:
            entry = self._fits.get(avatar_id)
        return [] if entry is None else _drain(entry[1])

    def cancel(self, avatar_id: str) -> None:
        with self._lock:
            entry = self._fits.get(avatar_id)
        if entry is not None:
            entry[0].set()


def _drain(queue: collections.deque) -> list:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out
