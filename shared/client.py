"""A client of the backend service (pyzmq + msgpack + numpy only: the add-on uses it too).

    c = ServiceClient("tcp://127.0.0.1:5557")
    caps = c.hello()
    job = c.start_fit(photo, pose, transl, camera)        # then c.wait_fit(job, on_progress)
    rgba = c.render(avatar_id, pose, transl, camera)     # (H, W, 4) uint8, straight alpha
    for index, rgba in c.render_stream(avatar_id, views): ...

Every call has a timeout; errors from the server raise ServiceError(code, message).
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zmq

from . import protocol as P


# a server that sent nothing at all (heartbeats included) for this long is taken for gone
SILENT_S = P.HEARTBEAT_S * P.HEARTBEAT_LIVENESS


class ServiceError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class ServiceClient:
    def __init__(self, address: str = f"tcp://127.0.0.1:{P.DEFAULT_PORT}", timeout: float = 30.0,
                 server_key: Path | None = None, client_key: Path | None = None,
                 should_stop: Callable[[], bool] | None = None):
        """server_key: the server's public certificate; client_key: this client's secret
        certificate (both from 'avatar-backend keys'); needed when the server uses CurveZMQ.
        should_stop: checked several times a second while waiting; when it returns True the wait
        ends with TimeoutError (a UI closing its connection thread need not wait for a timeout)."""
        self.timeout = timeout
        self.should_stop = should_stop
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A DEALER blocks a send while it has no peer (a refused CurveZMQ handshake drops the
        # peer): bound it like every wait, so a wrong key is a TimeoutError, never a hang.
        self.sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        self.sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_PART_BYTES)   # a bad server can't make us allocate more
        if server_key is not None:
            from zmq import auth as zmq_auth

            server_public, _ = zmq_auth.load_certificate(str(server_key))
            public, secret = zmq_auth.load_certificate(str(client_key)) if client_key else zmq.curve_keypair()
            if secret is None:
                raise ValueError(f"{client_key} holds no secret key (use the .key_secret file)")
            self.sock.curve_serverkey = server_public
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.sock.connect(address)
        self._ids = itertools.count(1)
        self._last_sent = time.monotonic()
        self.last_heard = time.monotonic()   # any message from the server, heartbeats included

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ plumbing
    HEARTBEAT_S = 5.0  # while waiting, tell the server we are still here this often
    STOP_CHECK_S = 0.2  # how often a wait looks at should_stop

    def send(self, type_: str, fields: dict | None = None, frames: dict | None = None) -> int:
        msg_id = next(self._ids)
        self._send(P.encode(type_, fields, frames, id=msg_id))
        return msg_id

    def _send(self, parts: list[bytes]) -> None:
        try:
            self.sock.send_multipart(parts)
        except zmq.Again:
            raise TimeoutError(f"the backend does not take messages within {self.timeout} s (not running, "
                               f"or it refused this client's keys)") from None
        self._last_sent = time.monotonic()

    def receive(self, msg_id: int, timeout: float | None = None) -> P.Message:
        """The next message answering request `msg_id` (heartbeats and others are skipped).
        TimeoutError after `timeout`, or sooner when the server falls silent (no message at all,
        heartbeats included, for HEARTBEAT_S * HEARTBEAT_LIVENESS: it died or the network went)."""
        start = time.monotonic()
        deadline = start + (self.timeout if timeout is None else timeout)
        while True:
            now = time.monotonic()
            if now - self._last_sent > self.HEARTBEAT_S:
                self._send(P.encode("heartbeat"))
            left = deadline - now
            if left <= 0:
                raise TimeoutError(f"no answer from the backend within {self.timeout if timeout is None else timeout} s")
            if self._silent(since=start):
                raise TimeoutError(f"the backend has sent nothing for {SILENT_S:.0f} s (not even a heartbeat)")
            if self.should_stop is not None and self.should_stop():
                raise TimeoutError("stopped while waiting for the backend")
            if not self.sock.poll(int(min(left, self.HEARTBEAT_S, self.STOP_CHECK_S) * 1000)):
                continue
            parts = self.sock.recv_multipart()
            self.last_heard = time.monotonic()
            msg = P.decode(parts)
            if msg.type == "heartbeat" or msg.id != msg_id:
                continue
            if msg.type == "error":
                raise ServiceError(msg.fields["code"], msg.fields["message"])
            return msg

    def _silent(self, since: float = 0.0) -> bool:
        """Whether the server has sent nothing for SILENT_S (counted from `since` at the earliest)."""
        return time.monotonic() - max(self.last_heard, since) > SILENT_S

    def check_alive(self) -> None:
        """TimeoutError when the server has sent nothing, not even a heartbeat, for longer than
        its heartbeats allow (it died or the network went): for callers that poll `receive`
        with short timeouts while a long task runs."""
        if self._silent():
            raise TimeoutError(f"the backend has sent nothing for {time.monotonic() - self.last_heard:.0f} s")

    def request(self, type_: str, fields: dict | None = None, frames: dict | None = None,
                timeout: float | None = None) -> P.Message:
        return self.receive(self.send(type_, fields, frames), timeout)

    # ------------------------------------------------------------------ calls
    def hello(self, client: str = "one-shot-avatar client", timeout: float | None = None) -> dict:
        msg = self.request("hello", {"client": client, "protocol": P.PROTOCOL_VERSION}, timeout=timeout)
        return msg.fields["capabilities"]

    def ping(self) -> float:
        start = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - start

    def health(self) -> dict:
        """How the server's compute worker is: alive, failures, last_error, queued."""
        return self.request("ping").fields.get("worker") or {}

    def delete(self, avatar: str) -> None:
        """Remove an avatar (and its inputs) from the server's store."""
        self.request("delete", {"avatar": avatar})

    def list(self) -> list[dict]:
        return self.request("list").fields["avatars"]

    def start_fit(self, photo: np.ndarray, pose, transl, camera: dict, mask: np.ndarray | None = None,
                  betas=None, prompt: str | None = None, preset: str = "quick", fit_body: bool = True,
                  name: str | None = None) -> tuple[int, str, list[str]]:
        """Queue a fit. pose and transl None: photo only (the server estimates the body in
        `camera`). Returns (request id, job id = avatar id, warnings)."""
        fields = {"pose": None if pose is None else _list(pose), "transl": None if transl is None else _list(transl),
                  "camera": _camera(camera), "preset": preset,
                  "fit_body": fit_body, "prompt": prompt, "name": name,
                  "betas": None if betas is None else _list(betas)}
        msg_id = self.send("fit", fields, {"photo": photo, "mask": mask})
        msg = self.receive(msg_id)
        return msg_id, msg.fields["job"], list(msg.fields.get("warnings") or [])

    def wait_fit(self, msg_id: int, on_progress: Callable[[P.Message], None] | None = None,
                 timeout: float = 3600.0) -> P.Message:
        """Progress messages until the fit is done (returns the `done` message) or fails."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.receive(msg_id, timeout=max(1.0, deadline - time.monotonic()))
            if msg.type == "progress":
                if on_progress is not None:
                    on_progress(msg)
                continue
            return msg

    def load(self, avatar: str) -> dict:
        """Get an avatar ready on the server; returns its stage, preset, fitted `pose` and
        `transl`, the body's `rest_joints` and the photo's `camera` (to pose a rig and a camera
        like the photo), and `proxy`: the body's rest-pose mesh with its skinning, {vertices
        (V, 3) float32, faces (F, 3) int32, joint_index (V, K) uint8, joint_weight (V, K)
        float32} (a rig's shadow proxy; None from a server that sends none)."""
        msg = self.request("load", {"avatar": avatar})
        return {**msg.fields, "proxy": P.proxy_from_frames(msg.frames)}

    def export(self, avatar: str, preset: str | None = None, triangles: int | None = None,
               texture: int | None = None, timeout: float = 900.0) -> tuple[dict, bytes]:
        """Bake a finished avatar into a rigged, textured mesh: (its triangles, vertices, texture
        size and seconds; the .glb file's bytes)."""
        msg_id = self.send("export", {"avatar": avatar, "preset": preset, "triangles": triangles,
                                      "texture": texture})
        msg = self.receive(msg_id, timeout=timeout)
        return msg.fields, msg.frames["glb"].tobytes()

    def cancel(self, job: str) -> None:
        self.request("cancel", {"job": job})

    def render(self, avatar: str, pose, transl, camera: dict, fmt: str = "uint8", depth: bool = False):
        """(H, W, 4) RGBA; with depth=True (rgba, depth): depth (H, W) float32, the avatar's camera
        depth in metres where alpha > 0, else 0."""
        view = {"pose": _list(pose), "transl": _list(transl), "camera": _camera(camera)}
        msg = self.request("render", {"avatar": avatar, "view": view, "format": fmt, "depth": depth or None})
        return (msg.frames["rgba"], msg.frames["depth"]) if depth else msg.frames["rgba"]

    def render_stream(self, avatar: str, views: list[dict], window: int = 4, fmt: str = "uint8",
                      depth: bool = False) -> Iterator[tuple]:
        """Frames in order, each acknowledged as it arrives (the server sends at most `window`
        ahead). views: dicts with pose, transl and camera; any number of them: they are sent
        P.STREAM_CHUNK at a time so no request exceeds the protocol's header limit. Leaving the
        loop early (break, an exception, close()) cancels the stream on the server. Yields
        (index, rgba), or (index, rgba, depth) with depth=True."""
        for start in range(0, len(views), P.STREAM_CHUNK):
            chunk = [{"pose": _list(v["pose"]), "transl": _list(v["transl"]), "camera": _camera(v["camera"])}
                     for v in views[start:start + P.STREAM_CHUNK]]
            msg_id = self.send("render_stream", {"avatar": avatar, "views": chunk, "format": fmt, "window": window,
                                                 "depth": depth or None})
            finished = False
            try:
                while True:
                    msg = self.receive(msg_id)
                    if msg.type == "stream_done":
                        finished = True
                        break
                    self.send("ack", {"stream": msg.fields["stream"], "index": msg.fields["index"]})
                    index = start + msg.fields["index"]
                    yield (index, msg.frames["rgba"], msg.frames["depth"]) if depth else (index, msg.frames["rgba"])
            finally:
                if not finished:
                    self.cancel_stream(msg_id)

    def cancel_stream(self, request_id: int, timeout: float = 5.0) -> None:
        """Stop the server's render_stream sent as request `request_id` (frames already on their
        way are dropped by `receive`, which skips other requests' messages)."""
        if self._silent():
            return   # the server fell silent (gone): nobody to tell, no reason to wait
        try:
            self.request("stream_cancel", {"request": request_id}, timeout=timeout)
        except (TimeoutError, ServiceError, zmq.ZMQError):
            pass  # the stream ends with the client's session anyway (server-side client timeout)


def _list(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def _camera(cam) -> dict:
    d = cam.to_dict() if hasattr(cam, "to_dict") else dict(cam)
    return {k: (np.asarray(v, dtype=np.float64).tolist() if k in ("K", "R", "t") else int(v)) for k, v in d.items()}
