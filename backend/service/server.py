"""The backend service: a ZeroMQ ROUTER socket speaking shared/protocol.py.

Threads: the network loop (this module's `serve`) owns the sockets: it validates every inbound
message, answers the cheap ones (hello, ping, list, cancel, ack) itself and queues the rest for
the single compute worker (backend/service/worker.py), or, in a farm, for the dispatcher that
hands them to Ray actors (backend/farm/dispatcher.py). The worker sends its replies through an
inproc PUSH socket that the network loop forwards, so no socket is ever shared by two threads.
Renders asked for while a fit runs are answered between fit iterations.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from backend.service.limits import WorkerLimits
from backend.service.store import AvatarStore
from backend.service.tasks import Stream
from shared import protocol as P
from shared.camera import MAX_IMAGE_SIDE, PinholeCamera

log = logging.getLogger("avatar.server")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ: the server's secret certificate and a folder of allowed clients' public ones."""
    server_secret: Path
    clients_dir: Path


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    store: Path
    bind: str = "127.0.0.1"
    port: int = P.DEFAULT_PORT      # 0: a free port (tests); the bound one is Server.port
    device: str = "auto"
    curve: CurveKeys | None = None
    heartbeat_s: float = P.HEARTBEAT_S
    client_timeout_s: float = 30.0  # a client silent this long loses its streams
    preview_every: int = 25         # fit iterations between preview images
    limits: WorkerLimits = WorkerLimits()


class Server:
    def __init__(self, cfg: ServerConfig, make_worker=None):
        """make_worker(ctx, outbox_address, store): what computes (default: the single compute
        Worker; the farm's front passes its Ray dispatcher, backend/farm/)."""
        if cfg.bind not in LOCAL_HOSTS and cfg.curve is None:
            raise ValueError(f"refusing to listen on {cfg.bind} without CurveZMQ keys: remote clients must "
                             f"authenticate (make keys with 'avatar-backend keys DIR', pass --curve DIR)")
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.store = AvatarStore(cfg.store)   # StoreInUse if another server holds it
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client: drop, don't block
        # ZeroMQ checks MAXMSGSIZE per part, before allocating it: no part may exceed the
        # protocol's largest (a frame); a bigger one drops the sender's connection.
        self.router.setsockopt(zmq.MAXMSGSIZE, P.MAX_PART_BYTES)
        # small queues per peer: a client that sends faster than it is served waits (TCP
        # back-pressure); one that never reads loses replies beyond SNDHWM rather than growing
        # the server's memory (streams are bounded by their window anyway)
        self.router.setsockopt(zmq.RCVHWM, 64)
        self.router.setsockopt(zmq.SNDHWM, 256)
        self.auth = None
        if cfg.curve is not None:
            self._setup_curve(cfg.curve)
        host = "[::1]" if cfg.bind == "::1" else cfg.bind
        if cfg.port:
            self.router.bind(f"tcp://{host}:{cfg.port}")
            self.port = cfg.port
        else:
            self.port = self.router.bind_to_random_port(f"tcp://{host}")
        self.outbox_address = f"inproc://outbox-{id(self)}"
        self.outbox = self.ctx.socket(zmq.PULL)
        self.outbox.bind(self.outbox_address)
        if make_worker is None:
            from backend.service.worker import Worker   # torch: only where it computes

            def make_worker(ctx, outbox, store):
                return Worker(ctx, outbox, store, device=cfg.device, preview_every=cfg.preview_every,
                              limits=cfg.limits)
        self.worker = make_worker(self.ctx, self.outbox_address, self.store)
        self.clients: dict[bytes, float] = {}   # identity -> last seen
        self._stop = threading.Event()

    def _setup_curve(self, keys: CurveKeys) -> None:
        from zmq import auth as zmq_auth
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = zmq_auth.load_certificate(str(keys.server_secret))
        if secret is None:
            raise ValueError(f"{keys.server_secret} holds no secret key (use the .key_secret file)")
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(keys.clients_dir))  # only these public keys
        self.router.curve_secretkey = secret
        self.router.curve_publickey = public
        self.router.curve_server = True

    # ------------------------------------------------------------------ lifecycle
    def serve(self) -> None:
        """Run until stop() (or Ctrl-C)."""
        self.worker.start()
        self.worker.resume_unfinished()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.outbox, zmq.POLLIN)
        next_beat = time.monotonic() + self.cfg.heartbeat_s
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self.outbox in events:
                    while True:
                        try:
                            parts = self.outbox.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.router.send_multipart(parts)
                if self.router in events:
                    while True:
                        try:
                            parts = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle(parts)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(now)
                    next_beat = now + self.cfg.heartbeat_s
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.worker.stop()
        for s in (self.router, self.outbox):
            s.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        self.store.close()

    def _heartbeat(self, now: float) -> None:
        for identity, seen in list(self.clients.items()):
            if now - seen > self.cfg.client_timeout_s:
                del self.clients[identity]
                self.worker.drop_client(identity)
            else:
                self._send(identity, "heartbeat", {})

    # ------------------------------------------------------------------ requests
    def _send(self, identity: bytes, type_: str, fields: dict, frames=None, id: int = 0) -> None:
        self.router.send_multipart([identity] + P.encode(type_, fields, frames, id=id))

    def _handle(self, parts: list[bytes]) -> None:
        identity, body = parts[0], parts[1:]
        self.clients[identity] = time.monotonic()
        try:
            msg = P.decode(body)
        except P.ProtocolError as exc:
            self.router.send_multipart([identity] + P.error_message(exc))
            return
        try:
            handler = getattr(self, f"_on_{msg.type}", None)
            if handler is None:
                raise P.ProtocolError(P.UNKNOWN_TYPE, f"a server does not accept '{msg.type}' messages")
            handler(identity, msg)
        except P.ProtocolError as exc:
            self.router.send_multipart([identity] + P.error_message(exc, msg.id))
        except Exception as exc:  # noqa: BLE001 - the server keeps serving whatever one request did
            log.exception("request %s failed", msg.type)
            self._send(identity, "error", {"code": P.INTERNAL, "message": f"{type(exc).__name__}: {exc}"[:1000]},
                       id=msg.id)

    def _on_hello(self, identity, msg) -> None:
        if msg.fields["protocol"] != P.PROTOCOL_VERSION:
            raise P.ProtocolError(P.BAD_VERSION, f"client speaks protocol {msg.fields['protocol']}, "
                                                 f"this server {P.PROTOCOL_VERSION}")
        self._send(identity, "welcome", {"protocol": P.PROTOCOL_VERSION, "server": "one-shot-avatar backend",
                                         "capabilities": self.worker.capabilities(MAX_IMAGE_SIDE),
                                         "worker": self.worker.health()}, id=msg.id)

    def _on_ping(self, identity, msg) -> None:
        self._send(identity, "pong", {"worker": self.worker.health()}, id=msg.id)

    def _on_heartbeat(self, identity, msg) -> None:
        pass  # last-seen is recorded for every message

    def _on_list(self, identity, msg) -> None:
        self._send(identity, "avatars", {"avatars": self.worker.list_avatars()}, id=msg.id)

    def _on_cancel(self, identity, msg) -> None:
        if not self.worker.cancel(msg.fields["job"]):
            raise P.ProtocolError(P.UNKNOWN_JOB, f"no queued or running fit {msg.fields['job']!r}")
        self._send(identity, "cancelled", {"job": msg.fields["job"]}, id=msg.id)

    def _on_stream_cancel(self, identity, msg) -> None:
        self.worker.cancel_stream(identity, msg.fields["request"])
        self._send(identity, "stream_cancelled", {"request": msg.fields["request"]}, id=msg.id)

    def _on_ack(self, identity, msg) -> None:
        self.worker.ack(identity, msg.fields["stream"], msg.fields["index"])

    def _on_fit(self, identity, msg) -> None:
        f, frames = msg.fields, msg.frames
        photo = frames.get("photo")
        if photo is None or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] not in (3, 4):
            raise P.ProtocolError(P.BAD_FIELD, "fit.photo: a uint8 H x W x 3 (RGB) or 4 (RGBA) frame is required")
        mask = frames.get("mask")
        if mask is not None and (mask.dtype != np.uint8 or mask.shape != photo.shape[:2]):
            raise P.ProtocolError(P.BAD_FIELD, f"fit.mask: must be uint8 {photo.shape[0]} x {photo.shape[1]} "
                                               f"(the photo's size), got {mask.dtype} {mask.shape}")
        cam = f["camera"]
        if (cam["height"], cam["width"]) != photo.shape[:2]:
            raise P.ProtocolError(P.BAD_FIELD, f"fit.camera: {cam['width']}x{cam['height']} but the photo is "
                                               f"{photo.shape[1]}x{photo.shape[0]}")
        preset = f["preset"] or "quick"
        if preset not in self.worker.presets:
            raise P.ProtocolError(P.BAD_FIELD, f"fit.preset: {preset!r} is not one of {', '.join(self.worker.presets)}")
        if (f["body"] or "open_body") != "open_body":
            raise P.ProtocolError(P.BAD_FIELD, "fit.body: this server offers only the built-in 'open_body'")
        if (f["pose"] is None) != (f["transl"] is None):
            raise P.ProtocolError(P.BAD_FIELD, "fit: give pose and transl together, or neither (photo only)")
        camera = PinholeCamera(cam["K"], cam["R"], cam["t"], cam["width"], cam["height"])
        self.worker.check_room_for_fit()   # busy: nothing is stored
        job = {"preset": preset, "prompt": f["prompt"] or "", "name": f["name"] or "", "body": "open_body",
               "fit_body": True if f["fit_body"] is None else f["fit_body"]}
        avatar_id = self.store.create(photo, mask, f["pose"], f["betas"], f["transl"], camera, job)
        warnings = self.worker.submit_fit(avatar_id, identity, msg.id)
        self._send(identity, "accepted", {"job": avatar_id, "warnings": warnings}, id=msg.id)

    def _on_delete(self, identity, msg) -> None:
        self._known(msg.fields["avatar"])
        self.worker.delete(msg.fields["avatar"])
        self._send(identity, "deleted", {"avatar": msg.fields["avatar"]}, id=msg.id)

    def _on_load(self, identity, msg) -> None:
        self._known(msg.fields["avatar"])
        self.worker.submit_load(identity, msg.id, msg.fields["avatar"])

    def _on_export(self, identity, msg) -> None:
        f = msg.fields
        self._known(f["avatar"])
        self.worker.submit_export(identity, msg.id, f["avatar"],
                                  {"preset": f["preset"], "triangles": f["triangles"], "texture": f["texture"]})

    def _on_render(self, identity, msg) -> None:
        f = msg.fields
        self._known(f["avatar"])
        self.worker.submit_render(identity, msg.id, f["avatar"], f["view"], f["format"] or "uint8", bool(f["depth"]))

    def _on_render_stream(self, identity, msg) -> None:
        f = msg.fields
        self._known(f["avatar"])
        stream = Stream(identity, msg.id, f["avatar"], f["views"], f["format"] or "uint8", f["window"] or 4,
                        depth=bool(f["depth"]))
        self.worker.submit_stream(stream)

    def _known(self, avatar_id: str) -> None:
        if avatar_id not in self.worker.known_avatars():
            raise P.ProtocolError(P.UNKNOWN_AVATAR, f"no avatar {avatar_id!r} on this server (ask 'list')")
