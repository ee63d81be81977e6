"""The service under faults and abuse (issue 12), against real server processes on 127.0.0.1:
a failing task never ends the worker, an abandoned stream never blocks the others, queues are
bounded, avatars can be deleted, one server per store, private keys and store."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from shared import protocol as P
from shared.client import ServiceClient, ServiceError
from tests.backend_process import ServerProcess, store_with, view

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_a_failing_task_is_answered_and_the_worker_goes_on(tmp_path, fitted, subject_128):
    """A corrupt avatar file used to end the worker thread from inside a stream (only protocol
    errors were caught there) while the server kept answering pings."""
    store = store_with(tmp_path, fitted, "good000000000001", "bad0000000000001", "broken0000000001", "empty00000000001")
    (store / "broken0000000001" / "job.json").write_text("{ not json")      # damaged store folders: the
    (store / "empty00000000001" / "job.json").write_text("[]")              # server starts, serves the rest
    server = ServerProcess(store)
    try:
        with ServiceClient(server.address, timeout=30) as c:
            welcome = c.request("hello", {"client": "t", "protocol": P.PROTOCOL_VERSION}).fields
            assert welcome["worker"] == {"alive": True, "failures": 0, "last_error": None, "queued": 0}
            assert sorted(a["id"] for a in c.list()) == ["bad0000000000001", "good000000000001"]
            assert (store / "broken0000000001" / "job.json").read_text() == "{ not json"   # left as it was
            # the file breaks while the server runs (a disk error, a user's copy over it)
            (store / "bad0000000000001" / "avatar.avatar").write_bytes(b"\x00 not an avatar" * 100)
            with pytest.raises(ServiceError) as e:
                list(c.render_stream("bad0000000000001", [view(subject_128)] * 3))
            assert e.value.code == P.INTERNAL and "stream failed" in e.value.message
            health = c.health()
            assert health["alive"] and health["failures"] == 1 and "stream" in health["last_error"]
            # the worker still works: a render and a stream of the good avatar
            assert c.render("good000000000001", **view(subject_128)).shape == (64, 64, 4)
            assert [i for i, _ in c.render_stream("good000000000001", [view(subject_128)] * 3)] == [0, 1, 2]
            with pytest.raises(ServiceError) as e:   # a single render of the bad one: an error too
                c.render("bad0000000000001", **view(subject_128))
            assert c.health()["alive"]
    finally:
        server.kill(signal.SIGTERM)


def _raw_stream(address, avatar, views, window):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send_multipart(P.encode("render_stream", {"avatar": avatar, "views": [
        {"pose": v["pose"].tolist(), "transl": v["transl"].tolist(), "camera": v["camera"].to_dict()} for v in views],
        "window": window}, id=7))
    return sock


def _messages_for(sock, seconds: float) -> list:
    """What arrives within `seconds`, heartbeats left out."""
    got, deadline = [], time.monotonic() + seconds
    while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        msg = P.decode(sock.recv_multipart())
        if msg.type != "heartbeat":
            got.append(msg)
    return got


def test_an_abandoned_stream_times_out_and_blocks_nobody(tmp_path, fitted, subject_128):
    store = store_with(tmp_path, fitted, "good000000000001")
    server = ServerProcess(store, "--stream-ack-timeout", "3")
    try:
        views = [view(subject_128)] * 20
        sock = _raw_stream(server.address, "good000000000001", views, window=1)
        first = P.decode(sock.recv_multipart()) if sock.poll(30_000) else None
        assert first is not None and first.type == "frame" and first.fields["index"] == 0
        started = time.monotonic()
        with ServiceClient(server.address, timeout=30) as c:
            # while the stream waits for an ack that never comes, single renders are served
            t = time.perf_counter()
            assert c.render("good000000000001", **view(subject_128)).shape == (64, 64, 4)
            assert time.perf_counter() - t < 2.5
            # then the stream ends with a timeout error, having sent nothing more
            rest = _messages_for(sock, 6.0)
            assert [m.type for m in rest] == ["error"] and rest[0].fields["code"] == P.TIMEOUT
            assert 2.5 < time.monotonic() - started < 8.0
            assert c.health() == {"alive": True, "failures": 0, "last_error": None, "queued": 0}

            # an ack from the future cannot open the window: only sent frames count
            sock2 = _raw_stream(server.address, "good000000000001", views, window=1)
            frame0 = P.decode(sock2.recv_multipart())
            sock2.send_multipart(P.encode("ack", {"stream": frame0.fields["stream"], "index": 19}))
            more = _messages_for(sock2, 1.5)
            assert [m.fields.get("index") for m in more if m.type == "frame"] == [1]
            sock2.send_multipart(P.encode("stream_cancel", {"request": 7}, id=8))
            sock2.close()
        sock.close()
    finally:
        server.kill(signal.SIGTERM)


def test_full_queues_answer_busy_and_delete_removes_avatars(tmp_path, fitted, subject_128):
    store = store_with(tmp_path, fitted, "done000000000001")
    server = ServerProcess(store, "--max-queued-fits", "1")
    s = subject_128
    try:
        with ServiceClient(server.address, timeout=60) as c:
            fit = dict(mask=s["mask"], preset="quick", fit_body=False)
            run_id, running, _ = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], **fit)
            assert c.receive(run_id, timeout=120).type == "progress"      # it runs
            _, queued, _ = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], **fit)
            folders = sorted(p.name for p in store.iterdir())
            with pytest.raises(ServiceError) as e:
                c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], **fit)
            assert e.value.code == P.BUSY
            assert sorted(p.name for p in store.iterdir()) == folders     # nothing stored for it

            c.delete(queued)                                              # a queued fit: dropped
            assert queued not in {a["id"] for a in c.list()} and not (store / queued).exists()
            with pytest.raises(ServiceError) as e:                        # the running one: cancel first
                c.delete(running)
            assert e.value.code == P.BUSY and "cancel" in e.value.message
            c.cancel(running)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    c.delete(running)
                    break
                except ServiceError as exc:
                    assert exc.code == P.BUSY
                    time.sleep(0.2)
            assert not (store / running).exists()

            assert c.render("done000000000001", **view(s)).shape == (64, 64, 4)   # cached, then deleted
            c.delete("done000000000001")
            assert c.list() == [] and sorted(p.name for p in store.iterdir()) == [".lock"]
            with pytest.raises(ServiceError) as e:
                c.render("done000000000001", **view(s))
            assert e.value.code == P.UNKNOWN_AVATAR
            with pytest.raises(ServiceError) as e:
                c.delete("done000000000001")
            assert e.value.code == P.UNKNOWN_AVATAR
            assert c.health()["alive"]
    finally:
        server.kill(signal.SIGTERM)


def test_one_server_per_store_and_private_files(tmp_path):
    store = tmp_path / "store"
    first = ServerProcess(store)
    try:
        assert stat.S_IMODE(store.stat().st_mode) == 0o700     # people's photos live here
        second = subprocess.run([sys.executable, "-m", "backend", "serve", "--port", "0", "--store", str(store),
                                 "--device", "cpu"], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"another backend is already serving the store {store}" in second.stderr
        assert f"process {first.proc.pid}" in second.stderr
    finally:
        first.kill(signal.SIGTERM)
    again = ServerProcess(store)          # the lock goes with the process that held it
    again.kill(signal.SIGKILL)
    ServerProcess(store).kill(signal.SIGTERM)   # ... even a killed one

    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "backend", "keys", str(keys), "--client", "artist"], check=True,
                   env=ENV, cwd=ROOT, capture_output=True)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for secret in (keys / "server.key_secret", keys / "artist.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    before = (keys / "server.key_secret").read_bytes()
    rerun = subprocess.run([sys.executable, "-m", "backend", "keys", str(keys)], env=ENV, cwd=ROOT,
                           capture_output=True, text=True)
    assert rerun.returncode != 0 and "keys exist already" in rerun.stderr
    assert (keys / "server.key_secret").read_bytes() == before   # never overwritten


def test_a_full_disk_during_a_fit_is_reported_and_the_worker_goes_on(tmp_path, fitted, subject_128, monkeypatch):
    """In process (to make the disk 'full'): the checkpoint write fails, and so does recording
    the failure in the store; the client still gets an `internal` error naming the cause, and
    the worker renders the next request."""
    import errno

    import backend.jobs.avatar_fit as avatar_fit_job
    from backend.service.store import AvatarStore
    from backend.service.worker import Worker

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    store_dir = store_with(tmp_path, fitted, "good000000000001")
    ctx = zmq.Context()
    outbox = ctx.socket(zmq.PULL)
    outbox.bind("inproc://test-outbox")
    store = AvatarStore(store_dir)
    worker = Worker(ctx, "inproc://test-outbox", store, device="cpu", preview_every=0)
    worker.start()
    try:
        s = subject_128
        avatar_id = store.create(s["photo"], s["mask"], s["pose"], None, s["transl"], s["camera"],
                                 {"preset": "tiny", "prompt": "", "name": "", "body": "open_body", "fit_body": False})
        monkeypatch.setattr(avatar_fit_job, "save_avatar", full)
        monkeypatch.setattr(AvatarStore, "set_state", full)
        worker.submit_fit(avatar_id, b"artist", 5)

        def next_reply(timeout_s=120):
            assert outbox.poll(timeout_s * 1000), "no reply from the worker"
            identity, *parts = outbox.recv_multipart()
            return identity, P.decode(parts)
        while True:
            identity, msg = next_reply()
            if msg.type != "progress":
                break
        assert identity == b"artist" and msg.id == 5 and msg.type == "error"
        assert msg.fields["code"] == P.INTERNAL and "No space left on device" in msg.fields["message"]
        health = worker.health()
        assert health["alive"] and health["failures"] == 1 and "fit" in health["last_error"]
        assert worker.list_avatars()[-1]["stage"] == "failed"   # known as failed while it runs
        v = view(s)
        worker.submit_render(b"artist", 6, "good000000000001",
                             {"pose": v["pose"], "transl": v["transl"], "camera": v["camera"].to_dict()}, "uint8")
        identity, msg = next_reply()
        assert msg.type == "frame" and msg.id == 6 and msg.frames["rgba"].shape == (64, 64, 4)
    finally:
        worker.stop()
        outbox.close(linger=0)
        ctx.term()
        store.close()


def test_the_soak_script_finds_nothing_lost_under_load_and_fuzz(tmp_path):
    """benchmarks/service_soak.py at a smaller size (docs/speed.md has the full run)."""
    import json

    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "benchmarks/service_soak.py", "--fuzz", "2000", "--clients", "8",
                           "--renders", "20", "--stream", "30", "--json", str(out)],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    f, ld = result["fuzz"], result["load"]
    assert f["server_answers"] and f["worker"]["alive"] and f["replies"] >= 0.5 * f["messages"]
    assert f["rss_growth_mb"] < 200
    assert ld["errors"] == [] and ld["renders"] == 8 * 20
    assert ld["stream"]["frames"] == 30 and ld["stream"]["in_order"] and ld["stream"]["identical"]


def test_a_backend_killed_during_a_stream_is_noticed_within_the_heartbeat_budget(tmp_path, fitted, subject_128):
    store = store_with(tmp_path, fitted, "good000000000001")
    server = ServerProcess(store)
    try:
        with ServiceClient(server.address, timeout=120) as c:    # a long timeout: liveness must be sooner
            frames = c.render_stream("good000000000001", [view(subject_128)] * 1000, window=1)
            assert next(frames)[0] == 0
            server.kill(signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(TimeoutError, match="sent nothing"):
                for _ in frames:
                    pass
            noticed = time.monotonic() - killed
            print(f"noticed after {noticed:.1f} s")
            assert noticed < P.HEARTBEAT_S * P.HEARTBEAT_LIVENESS + 3
    finally:
        server.kill()


def test_oversized_parts_are_refused_before_allocation_and_streams_queue_is_bounded(tmp_path, fitted, subject_128):
    store = store_with(tmp_path, fitted, "good000000000001")
    server = ServerProcess(store, "--stream-ack-timeout", "30")
    try:
        with ServiceClient(server.address, timeout=30) as c:
            c.ping()
            rss = server.rss_kb()
            # one part a byte over the limit: ZeroMQ drops the sender's connection after reading
            # the part's size, before allocating it; nobody else notices
            big = zmq.Context.instance().socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(server.address)
            big.send_multipart([P.encode("ping")[0], bytes(P.MAX_PART_BYTES + 1)])
            assert not big.poll(3000)                       # no answer: the connection was dropped
            big.close()
            assert c.health()["alive"] and server.rss_kb() - rss < 64_000    # kB: nothing near 128 MiB stayed

            # the worker held by a stream that waits for acks; streams queue up to the limit, then busy
            hold = _raw_stream(server.address, "good000000000001", [view(subject_128)] * 5, window=1)
            assert hold.poll(30_000)
            v = [view(subject_128)]
            queued = [c.send("render_stream", {"avatar": "good000000000001", "views": [
                {"pose": x["pose"].tolist(), "transl": x["transl"].tolist(), "camera": x["camera"].to_dict()}
                for x in v]}) for _ in range(17)]
            with pytest.raises(ServiceError) as e:
                c.receive(queued[-1], timeout=10)
            assert e.value.code == P.BUSY and "16 render streams" in e.value.message
            assert c.health()["queued"] == 16
            hold.send_multipart(P.encode("stream_cancel", {"request": 7}, id=9))
            for msg_id in queued[:16]:                     # the queued ones are served once it ends
                while c.receive(msg_id, timeout=60).type != "stream_done":
                    pass
            hold.close()
    finally:
        server.kill(signal.SIGTERM)


def test_the_single_render_queue_is_bounded(tmp_path):
    """In process, with the worker not started, so the queue only fills."""
    from backend.service.limits import WorkerLimits
    from backend.service.store import AvatarStore
    from backend.service.worker import Worker

    ctx = zmq.Context()
    store = AvatarStore(tmp_path / "store")
    worker = Worker(ctx, "inproc://unused", store, device="cpu", limits=WorkerLimits(max_queued_renders=3))
    try:
        for i in range(3):
            worker.submit_render(b"c", i, "x" * 16, {}, "uint8")
        with pytest.raises(P.ProtocolError) as e:
            worker.submit_load(b"c", 4, "x" * 16)
        assert e.value.code == P.BUSY and "3 renders are already waiting" in e.value.message
        worker.drop_client(b"c")                           # a client's requests leave with it
        worker.submit_render(b"d", 5, "x" * 16, {}, "uint8")
        assert worker.health()["queued"] == 1
    finally:
        store.close()
        ctx.term()
