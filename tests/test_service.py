"""The backend service against a real server process on 127.0.0.1 (random port), tiny configs."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from PIL import Image

from shared import protocol as P
from shared.camera import PinholeCamera
from shared.client import ServiceClient, ServiceError
from tests.backend_process import ServerProcess, check_fit_progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subject(subject_128):
    return subject_128


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(tmp_path / "store", "--preview-every", "5")
    yield s
    s.kill(signal.SIGTERM)


def fit_tiny(c, subject, **kw):
    return c.start_fit(subject["photo"], subject["pose"], subject["transl"], subject["camera"],
                       mask=subject["mask"], preset="tiny", fit_body=False, **kw)


def test_fit_progress_render_and_stream(server, subject):
    with ServiceClient(server.address, timeout=60) as c:
        caps = c.hello()
        assert caps["device"] == "cpu" and "tiny" in caps["presets"] and caps["body_models"] == ["open_body"]
        assert c.ping() < 5
        msg_id, job, warnings = fit_tiny(c, subject, name="me")
        assert any("WITHOUT the CLIP" in w for w in warnings)
        seen = []
        done = c.wait_fit(msg_id, seen.append, timeout=300)
        assert done.type == "done" and done.fields["avatar"] == job
        check_fit_progress(seen, 20)
        previews = [m.frames["preview"] for m in seen if "preview" in m.frames]
        assert previews and previews[0].shape == (128, 128, 3) and previews[0].dtype == np.uint8
        assert any(m.fields.get("losses") for m in seen)
        assert [a for a in c.list() if a["id"] == job] == [{"id": job, "stage": "done", "iteration": 20,
                                                             "preset": "tiny", "name": "me"}]

        loaded = c.load(job)
        assert loaded["stage"] == "done" and loaded["preset"] == "tiny" and loaded["camera"]["width"] == 128
        assert np.allclose(loaded["pose"], subject["pose"], atol=1e-5)   # no body fit: the given pose
        assert np.asarray(loaded["rest_joints"]).shape == (24, 3)

        rgba = c.render(job, subject["pose"], subject["transl"], subject["camera"])
        assert rgba.shape == (128, 128, 4) and rgba.dtype == np.uint8
        body = subject["mask"] > 127
        assert rgba[..., 3][body].mean() > 128 and rgba[..., 3][0:5, 0:5].max() == 0  # the person, not the corner
        half = c.render(job, subject["pose"], subject["transl"], subject["camera"], fmt="float16")
        assert half.dtype == np.float16 and np.abs(half.astype(np.float32) * 255 - rgba).max() <= 1.0

        views = []
        for k in range(5):
            pose = subject["pose"].copy()
            pose[3 * 16 + 2] = 0.2 * k   # raise the left arm a little more each frame
            views.append({"pose": pose, "transl": subject["transl"], "camera": subject["camera"].scaled(0.5)})
        frames = list(c.render_stream(job, views, window=2))
        assert [i for i, _ in frames] == [0, 1, 2, 3, 4]
        assert all(f.shape == (64, 64, 4) for _, f in frames)
        assert not np.array_equal(frames[0][1], frames[4][1])

        # a long animation goes as several requests (STREAM_CHUNK views each), indices run on
        chunk = P.STREAM_CHUNK
        P.STREAM_CHUNK = 2
        try:
            chunked = list(c.render_stream(job, views, window=2))
        finally:
            P.STREAM_CHUNK = chunk
        assert [i for i, _ in chunked] == [0, 1, 2, 3, 4]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(frames, chunked))

        # leaving a stream early cancels it on the server: with window 1 an abandoned stream would
        # wait for acks for ever and hold the single worker; a render right after must come back
        stream = c.render_stream(job, views * 6, window=1)
        assert next(stream)[0] == 0
        stream.close()                      # what `break` does: sends stream_cancel
        assert c.render(job, subject["pose"], subject["transl"], subject["camera"].scaled(0.5)).shape == (64, 64, 4)
        assert c.ping() < 5


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(server, subject):
    with ServiceClient(server.address, timeout=30) as c:
        with pytest.raises(ServiceError) as e:
            c.render("0123456789abcdef", subject["pose"], subject["transl"], subject["camera"])
        assert e.value.code == P.UNKNOWN_AVATAR
        # a NaN pose, sent raw (the client library would refuse to encode it)
        header = {"v": P.PROTOCOL_VERSION, "type": "render", "id": 9, "avatar": "x" * 16,
                  "view": {"pose": [float("nan")] * 72, "transl": [0, 0, 3], "camera": subject["camera"].to_dict()}}
        c.sock.send_multipart([msgpack.packb(header)])
        reply = P.decode(c.sock.recv_multipart())
        assert reply.type == "error" and reply.fields["code"] == P.BAD_FIELD and "NaN" in reply.fields["message"]
        c.sock.send_multipart([b"\x00garbage"])
        reply = P.decode(c.sock.recv_multipart())
        assert reply.type == "error" and reply.fields["code"] == P.BAD_MESSAGE
        with pytest.raises(ServiceError, match="photo"):
            c.start_fit(np.zeros((8, 8), np.uint8), subject["pose"], subject["transl"], subject["camera"])
        with pytest.raises(ServiceError, match="camera"):   # camera size != photo size
            c.start_fit(subject["photo"], subject["pose"], subject["transl"], subject["camera"].scaled(0.5))
        with pytest.raises(ServiceError, match="preset"):
            c.start_fit(subject["photo"], subject["pose"], subject["transl"], subject["camera"], preset="huge")
        with pytest.raises(ServiceError) as e:
            c.cancel("nosuchjob")
        assert e.value.code == P.UNKNOWN_JOB
        assert c.ping() < 5


def test_cancel_a_running_fit(server, subject):
    with ServiceClient(server.address, timeout=60) as c:
        msg_id, job, _ = c.start_fit(subject["photo"], subject["pose"], subject["transl"], subject["camera"],
                                     mask=subject["mask"], preset="quick", fit_body=False)
        first = c.receive(msg_id, timeout=120)
        assert first.type == "progress"
        c.cancel(job)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and [a["stage"] for a in c.list() if a["id"] == job] != ["cancelled"]:
            time.sleep(0.2)
        assert [a["stage"] for a in c.list() if a["id"] == job] == ["cancelled"]
        assert c.ping() < 5


def test_restart_lists_avatars_and_resumes_a_killed_fit(tmp_path, subject):
    store = tmp_path / "store"
    first = ServerProcess(store)
    try:
        with ServiceClient(first.address, timeout=60) as c:
            done_id, job_done, _ = fit_tiny(c, subject, name="finished")
            assert c.wait_fit(done_id, timeout=300).type == "done"
            msg_id, job, _ = c.start_fit(subject["photo"], subject["pose"], subject["transl"], subject["camera"],
                                         mask=subject["mask"], preset="quick", fit_body=False)
            while True:   # killed in stage B, after its first checkpoint
                msg = c.receive(msg_id, timeout=300)
                if msg.fields["stage"] == "B":
                    break
    finally:
        first.kill()
    second = ServerProcess(store)
    try:
        with ServiceClient(second.address, timeout=60) as c:
            listed = {a["id"]: a for a in c.list()}
            assert listed[job_done]["stage"] == "done" and listed[job_done]["name"] == "finished"
            assert job in listed and listed[job]["stage"] in ("queued", "A", "B")
            assert c.render(job_done, subject["pose"], subject["transl"], subject["camera"]).shape == (128, 128, 4)
            # the killed fit resumed: it runs stage B again without redoing stage A
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and c.list() and \
                    {a["id"]: a for a in c.list()}[job]["iteration"] < 2:
                time.sleep(0.5)
            assert {a["id"]: a for a in c.list()}[job]["stage"] == "B"
            c.cancel(job)
    finally:
        second.kill(signal.SIGTERM)
    assert not list(store.glob("*/.*.tmp"))  # no half-written file was left to be read


@pytest.mark.parametrize("command", ["serve", "farm"])
def test_curve_keys_admit_only_known_clients(tmp_path, command):
    """The same rules for one backend and for a farm's front (docs/farm.md)."""
    keys = tmp_path / "keys"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "backend", "keys", str(keys), "--client", "artist"], check=True,
                   env=env, cwd=ROOT, capture_output=True)
    extra = ("--workers", "1") if command == "farm" else ()
    server = ServerProcess(tmp_path / "store", "--curve", str(keys), *extra, command=command)
    try:
        with ServiceClient(server.address, timeout=20, server_key=keys / "server.key",
                           client_key=keys / "artist.key_secret") as c:
            assert c.hello()["device"] == {"serve": "cpu", "farm": "farm: 1 x cpu"}[command]
        stranger = tmp_path / "stranger"
        import zmq.auth
        stranger.mkdir()
        zmq.auth.create_certificates(str(stranger), "x")
        with ServiceClient(server.address, timeout=3, server_key=keys / "server.key",
                           client_key=stranger / "x.key_secret") as c:
            with pytest.raises(TimeoutError):
                c.ping()
        with ServiceClient(server.address, timeout=3) as c:   # no Curve at all
            with pytest.raises(TimeoutError):
                c.ping()
    finally:
        server.kill(signal.SIGTERM)
    # listening beyond localhost without keys is refused
    proc = subprocess.run([sys.executable, "-m", "backend", command, "--bind", "0.0.0.0", "--port", "0",
                           "--store", str(tmp_path / "s2")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "CurveZMQ" in proc.stderr


def test_fuzz_thousands_of_bad_messages(server, subject):
    rng = np.random.default_rng(0)
    seeds = [P.encode("ping"), P.encode("list"),
             P.encode("render", {"avatar": "a" * 16, "view": {"pose": [0.0] * 72, "transl": [0, 0, 3],
                                                              "camera": subject["camera"].to_dict()}}),
             # a photo smaller than its camera: every mutation of it is refused, no fit starts
             P.encode("fit", {"pose": [0.0] * 72, "transl": [0, 0, 3], "camera": subject["camera"].to_dict(),
                              "preset": "tiny"}, {"photo": np.zeros((64, 64, 3), np.uint8)})]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    with ServiceClient(server.address, timeout=30) as c:
        c.ping()
        rss_before = server.rss_kb()
        sent = replies = 0
        for i in range(1500):
            parts = [bytearray(p) for p in seeds[i % len(seeds)]]
            if i % 3 == 0:
                for _ in range(int(rng.integers(1, 8))):
                    parts[0][int(rng.integers(0, len(parts[0])))] = int(rng.integers(0, 256))
            elif i % 3 == 1:
                parts = [bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))]
            else:
                parts = parts[: max(1, int(rng.integers(0, len(parts) + 1)))]
                parts[-1] = parts[-1][: int(rng.integers(0, len(parts[-1]) + 1))]
            sock.send_multipart([bytes(p) for p in parts])
            sent += 1
            while sock.poll(0):   # read as a client does: a peer's send queue is bounded (SNDHWM)
                sock.recv_multipart()
                replies += 1
        while sock.poll(2000):
            sock.recv_multipart()
            replies += 1
        assert sent >= 1000 and replies > 0.5 * sent  # answered (errors), not silently dropped
        assert c.ping() < 5
        assert c.list() is not None
        assert server.rss_kb() - rss_before < 200_000  # no unbounded growth (kB)
    sock.close()


def test_client_command_line(server, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def client(*args):
        return subprocess.run([sys.executable, "-m", "backend", "client", *map(str, args), "--address", server.address],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    proc = client("ping")
    assert proc.returncode == 0 and "pong in" in proc.stdout and "'device': 'cpu'" in proc.stdout
    sample = tmp_path / "sample"
    subprocess.run([sys.executable, "-m", "backend", "sample", str(sample)], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    proc = client("fit", "--elicit", sample, "--preset", "tiny", "--no-body-fit", "--name", "cli")
    assert proc.returncode == 0, proc.stderr
    avatar = re.search(r"avatar (\w+) done", proc.stdout).group(1)
    assert "stage B 20/20" in proc.stdout
    proc = client("list")
    assert avatar in proc.stdout and "done" in proc.stdout and "cli" in proc.stdout
    pose = np.load(sample / "gt_params.npz")["pose"][0]
    (tmp_path / "poses.json").write_text(json.dumps({"poses": [pose.tolist()] * 2,
                                                     "transl": [[0.0, 0.2, 4.8]] * 2}))
    cam = PinholeCamera.from_focal(300.0, 96, 96).to_dict()
    (tmp_path / "cams.json").write_text(json.dumps({"cameras": [cam]}))
    proc = client("render", "--avatar", avatar, "--poses", tmp_path / "poses.json", "--cameras",
                  tmp_path / "cams.json", "--out", tmp_path / "frames")
    assert proc.returncode == 0, proc.stderr
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 2 and np.asarray(Image.open(frames[0])).shape == (96, 96, 4)
    proc = client("render", "--avatar", avatar)
    assert proc.returncode == 2 and "--poses" in proc.stderr


def test_a_photo_alone_is_enough(server, tmp_path, subject):
    """Photo only over the protocol: the client sends the photo and its camera, the server
    estimates the body (landmarks, mask), fits, and `load` returns the estimated pose."""
    pytest.importorskip("mediapipe", reason="the photo-only path needs mediapipe")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sample = tmp_path / "sample"
    subprocess.run([sys.executable, "-m", "backend", "sample", str(sample)], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "backend", "client", "fit", "--photo", str(sample / "gt_image.png"),
                           "--preset", "tiny", "--name", "photo", "--address", server.address],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    avatar = re.search(r"avatar (\w+) done", proc.stdout).group(1)
    truth = np.load(sample / "true_params.npz")
    with ServiceClient(server.address, timeout=60) as c:
        loaded = c.load(avatar)
        # the lens the sample's PNG states in its EXIF, read by the client
        from backend.jobs.sample_subject import FOCAL

        assert abs(loaded["camera"]["K"][0][0] - FOCAL) < 1e-3
        from scipy.spatial.transform import Rotation

        turn = Rotation.from_rotvec(loaded["pose"][:3]) * Rotation.from_rotvec(truth["pose"][0, :3]).inv()
        assert np.degrees(turn.magnitude()) < 20       # upright, facing the camera, as in the photo
        assert np.abs(np.asarray(loaded["pose"][3:])).max() > 0.2   # not a rest pose: the photo's
        with pytest.raises(ServiceError, match="pose and transl together"):
            c.start_fit(subject["photo"], subject["pose"], None, subject["camera"], preset="tiny")
