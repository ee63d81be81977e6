"""The add-on's connection thread (imported from the built zip) against a real backend that dies
mid-fit and a fake one that speaks garbage: it notices, says so and carries on."""
import signal
import threading
import time

import msgpack
import pytest
import zmq

from shared import protocol as P
from tests.backend_process import ServerProcess
from tests.installed_addon import load_built_addon


def wait_for(conn, kinds, timeout):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kind, payload in conn.drain():
            seen.append((kind, payload))
            if kind in kinds:
                return kind, payload, seen
        time.sleep(0.05)
    raise AssertionError(f"none of {kinds} within {timeout} s; seen {[k for k, _ in seen]}")


def test_a_backend_killed_mid_fit_is_noticed_by_its_missing_heartbeats(tmp_path, subject_128):
    connection = load_built_addon().connection
    server = ServerProcess(tmp_path / "store")
    conn = connection.Connection(server.address, timeout=30)
    try:
        wait_for(conn, {"welcome"}, 60)
        s = subject_128
        conn.submit("fit", photo=s["photo"], pose=s["pose"], transl=s["transl"], camera=s["camera"],
                    mask=s["mask"], preset="quick", fit_body=False)
        wait_for(conn, {"progress"}, 120)
        server.kill(signal.SIGKILL)
        killed = time.monotonic()
        kind, payload, _ = wait_for(conn, {"lost"}, 30)
        noticed = time.monotonic() - killed
        print(f"noticed the dead backend after {noticed:.1f} s")
        assert "stopped answering" in payload["text"]
        assert noticed < P.HEARTBEAT_S * P.HEARTBEAT_LIVENESS + 3
        kind, payload, _ = wait_for(conn, {"status"}, 30)    # and keeps retrying, saying so
        assert "not reachable" in payload["text"] and conn.thread.is_alive()
    finally:
        conn.close()
        server.kill()


class FakeServer(threading.Thread):
    """A ROUTER that answers hello properly and everything else with a frame no protocol allows."""

    def __init__(self):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.stop = threading.Event()
        self.answered = 0

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            identity, *parts = self.sock.recv_multipart()
            msg = P.decode(parts)
            if msg.type == "hello":
                reply = P.encode("welcome", {"protocol": P.PROTOCOL_VERSION, "server": "fake", "capabilities": {
                    "device": "cpu", "body_models": ["open_body"], "clip": False, "presets": ["tiny"],
                    "max_image_side": 64}}, id=msg.id)
            elif msg.type == "heartbeat":
                continue
            else:   # a header from a "newer" server: a field type this client refuses
                reply = [msgpack.packb({"v": P.PROTOCOL_VERSION, "type": "avatars", "id": msg.id, "avatars": 7})]
                self.answered += 1
            self.sock.send_multipart([identity, *reply])
        self.sock.close(linger=0)
        self.ctx.term()


def test_a_protocol_error_does_not_end_the_connection_thread():
    connection = load_built_addon().connection
    fake = FakeServer()
    fake.start()
    conn = connection.Connection(f"tcp://127.0.0.1:{fake.port}", timeout=5)
    try:
        wait_for(conn, {"welcome"}, 30)
        for _ in range(3):
            conn.submit("list")
            kind, payload, _ = wait_for(conn, {"error", "lost"}, 30)
            assert "avatars" in payload["text"] and conn.thread.is_alive()
        assert fake.answered == 3
    finally:
        conn.close()
        fake.stop.set()
        fake.join(timeout=5)
    assert not conn.thread.is_alive()   # it ends when closed, not before


@pytest.mark.parametrize("garbage", [[b"\x00not msgpack"], [msgpack.packb({"v": 99, "type": "welcome", "id": 1})]])
def test_a_server_speaking_garbage_is_retried_not_fatal(garbage):
    connection = load_built_addon().connection
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    conn = connection.Connection(f"tcp://127.0.0.1:{port}", timeout=3)
    try:
        assert sock.poll(10_000)
        identity, *_ = sock.recv_multipart()
        sock.send_multipart([identity, *garbage])
        kind, payload, _ = wait_for(conn, {"status"}, 30)
        assert "retrying" in payload["text"] and conn.thread.is_alive()
    finally:
        conn.close()
        sock.close(linger=0)
        ctx.term()
