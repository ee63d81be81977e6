"""Networking off Blender's UI thread.

A daemon thread owns the backend socket (shared.client.ServiceClient); operators submit tasks
to it and a `bpy.app.timers` callback applies what comes back (`Connection.drain`). Renders for
the live preview replace each other while waiting (only the newest pose/camera matters, stale
frames are never drawn). An unreachable backend is retried with backoff and reported in one
status line, never as a traceback. A backend that dies mid-fit or mid-stream is noticed by its
missing heartbeats (shared/protocol.py HEARTBEAT_*): the thread reconnects, posts "lost" (the
panel drops the running fit or stream and says so) and, once back, "welcome" (the panel
re-lists the avatars: a restarted backend resumes unfinished fits).
"""
from __future__ import annotations

import ipaddress
import queue
import threading
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from .shared.client import ServiceClient, ServiceError
from .shared.protocol import ProtocolError

POLL_S = 0.25         # how often the thread looks for a cancel while a fit or stream runs
CONNECT_TIMEOUT_S = 5.0   # a (re)connection's hello: an absent backend is reported this soon
BACKOFF_S = (1, 2, 5, 10, 30)


def address_host(address: str) -> str:
    """The host of a ZeroMQ endpoint (tcp://host:port); ValueError for anything else."""
    parts = urlsplit(address.strip())
    if parts.scheme in ("ipc", "inproc"):
        return "localhost"
    if parts.scheme != "tcp" or not parts.hostname:
        raise ValueError(f"'{address}' is not a backend address like tcp://127.0.0.1:5557")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"'{address}' names no port (e.g. tcp://{parts.hostname}:5557)")
    return parts.hostname


def is_local_address(address: str) -> bool:
    """Whether the endpoint is this computer (loopback or an ipc/inproc endpoint)."""
    host = address_host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_keys(server_key: str, client_key: str) -> tuple[Path | None, Path | None]:
    """The key files as paths, or ValueError naming the one that is missing."""
    paths = []
    for label, value in (("server key", server_key), ("client key", client_key)):
        path = Path(value).expanduser() if value else None
        if path is not None and not path.is_file():
            raise ValueError(f"the {label} file {path} does not exist")
        paths.append(path)
    if paths[1] is not None and paths[0] is None:
        raise ValueError("a client key needs the server key as well")
    return paths[0], paths[1]


class Connection:
    def __init__(self, address: str, timeout: float = 10.0, server_key: Path | None = None,
                 client_key: Path | None = None):
        self.address, self.timeout = address, timeout
        self.keys = {"server_key": server_key, "client_key": client_key} if server_key else {}
        self.tasks: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.status = "connecting"
        self.capabilities: dict | None = None
        self._latest_render: dict = {}        # slot -> (key, avatar, view, depth): the newest per slot
        self._lock = threading.Lock()
        self._cancel_job: str | None = None
        self._cancel_stream = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="avatar-connection", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ UI thread side
    def submit(self, kind: str, **kw) -> None:
        self.tasks.put((kind, kw))
        self._wake.set()

    def request_render(self, key, avatar: str, view: dict, slot="camera", depth: bool = False) -> None:
        """Live preview (slot "camera") or a viewport region's frame (its slot): replaces a render
        still waiting for the same slot; the slots take turns."""
        with self._lock:
            self._latest_render.pop(slot, None)   # (re-inserted last: the other slots go first)
            self._latest_render[slot] = (key, avatar, view, depth)
        self._wake.set()

    def cancel_fit(self, job: str) -> None:
        self._cancel_job = job
        self._wake.set()

    def cancel_stream(self) -> None:
        self._cancel_stream = True

    def drain(self, limit: int = 100) -> list[tuple[str, dict]]:
        out = []
        while len(out) < limit:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------ the thread
    def _post(self, kind: str, **payload) -> None:
        self.results.put((kind, payload))

    def _run(self) -> None:
        client = None
        attempt = 0
        try:
            while not self._stop.is_set():
                if client is None:
                    try:
                        client = ServiceClient(self.address, timeout=self.timeout, should_stop=self._stop.is_set,
                                               **self.keys)
                        self.capabilities = client.hello("blender add-on",
                                                         timeout=min(self.timeout, CONNECT_TIMEOUT_S))
                        self.status = "connected"
                        attempt = 0
                        self._post("welcome", capabilities=self.capabilities)
                    except Exception as exc:  # noqa: BLE001 - unreachable, refused, bad key: retry
                        if client is not None:
                            client.close()
                            client = None
                        wait = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                        attempt += 1
                        self.status = f"backend not reachable at {self.address} ({exc}); retrying in {wait} s"
                        self._post("status", text=self.status)
                        self._stop.wait(wait)
                        continue
                try:
                    self._serve_one(client)
                except TimeoutError as exc:
                    client.close()
                    client = None
                    self.status = f"backend stopped answering ({exc}); reconnecting"
                    self._post("lost", text=self.status)
                except (ServiceError, ProtocolError) as exc:   # a refused request: the connection is fine
                    self._post("error", text=f"{exc.code}: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                    traceback.print_exc()
                    client.close()
                    client = None
                    self.status = f"connection error ({type(exc).__name__}: {exc}); reconnecting"
                    self._post("lost", text=self.status)
                    self._stop.wait(1.0)
        finally:
            if client is not None:
                client.close()

    def _serve_one(self, client: ServiceClient) -> None:
        with self._lock:
            slot = next(iter(self._latest_render), None)
            render = self._latest_render.pop(slot) if slot is not None else None
        if render is not None:
            key, avatar, view, depth = render
            out = client.render(avatar, view["pose"], view["transl"], view["camera"], depth=depth)
            rgba, z = out if depth else (out, None)
            self._post("frame", key=key, slot=slot, rgba=rgba, depth=z)
            return
        try:
            kind, kw = self.tasks.get(timeout=POLL_S)
        except queue.Empty:
            self._wake.wait(POLL_S)
            self._wake.clear()
            return
        if kind == "list":
            self._post("avatars", avatars=client.list())
        elif kind == "load":
            self._post("loaded", keep_pose=kw.get("keep_pose", False), **client.load(kw["avatar"]))
        elif kind == "fit":
            self._fit(client, kw)
        elif kind == "export":
            self._export(client, kw)
        elif kind == "stream":
            self._stream(client, kw)

    def _export(self, client: ServiceClient, kw: dict) -> None:
        """Bake the avatar on the backend and write the .glb to kw["path"] (a name the operator
        chose that holds nothing yet; written whole or not at all)."""
        try:
            info, data = client.export(kw["avatar"], preset=kw.get("preset"))
        except (ServiceError, ProtocolError) as exc:
            self._post("export_failed", text=f"the backend could not bake the mesh: {exc.message}")
            return
        path = Path(kw["path"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            self._post("export_failed", text=f"could not write {path}: {exc.strerror or exc}")
            return
        self._post("exported", path=str(path), **info)

    def _fit(self, client: ServiceClient, kw: dict) -> None:
        try:
            msg_id, job, warnings = client.start_fit(**kw)
        except ServiceError as exc:
            self._post("fit_failed", text=f"the backend refused the fit: {exc.message}")
            return
        self._cancel_job = None
        self._post("accepted", job=job, warnings=warnings)
        while not self._stop.is_set():
            if self._cancel_job == job:
                self._cancel_job = None
                try:  # the answer carries the cancel request's id; the fit's own messages are skipped
                    client.receive(client.send("cancel", {"job": job}))
                except ServiceError as exc:
                    self._post("error", text=f"{exc.code}: {exc.message}")
                self._post("cancelled", job=job)
                return
            try:
                msg = client.receive(msg_id, timeout=POLL_S)
            except TimeoutError:
                client.check_alive()   # a backend that died mid-fit: reconnect instead of waiting for ever
                continue
            except ServiceError as exc:
                self._post("fit_failed", text=f"the fit failed: {exc.message}")
                return
            if msg.type == "progress":
                self._post("progress", preview=msg.frames.get("preview"), **msg.fields)
            elif msg.type == "done":
                self._post("done", **msg.fields)
                return

    def _stream(self, client: ServiceClient, kw: dict) -> None:
        """Frames of an animation in order; Stop closes the stream, which cancels it on the server."""
        self._cancel_stream = False
        frames = client.render_stream(kw["avatar"], kw["views"], window=kw.get("window", 4))
        try:
            for index, rgba in frames:
                self._post("stream_frame", index=index, rgba=rgba, total=len(kw["views"]))
                if self._cancel_stream or self._stop.is_set():
                    self._post("stream_cancelled")
                    return
        finally:
            frames.close()
        self._post("stream_done", total=len(kw["views"]))
