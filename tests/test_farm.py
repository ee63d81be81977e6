"""The farm (`python -m backend farm`): a real local Ray cluster with two CPU workers behind the one
ZeroMQ front, against the single backend (`serve`), over real sockets on 127.0.0.1."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.client import ServiceClient
from tests.backend_process import ServerProcess, check_fit_progress, store_with

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 48


@pytest.fixture(scope="module")
def farm(tmp_path_factory, fitted):
    store = store_with(tmp_path_factory.mktemp("farm"), fitted, "farm000000000001")
    f = ServerProcess(store, "--workers", "2", "--preview-every", "5", command="farm")
    f.pids = [int(m.group(1)) for line in f.said for m in [re.match(r"worker \d+: pid (\d+) ", line)] if m]
    assert len(f.pids) == 2, f.said
    yield f
    f.kill(signal.SIGTERM)
    assert f.proc.returncode == 0


def animation(subject, n=FRAMES) -> list[dict]:
    """n views of the person turning and raising an arm, at 64 px."""
    views = []
    for k in range(n):
        pose = subject["pose"].copy()
        pose[3 * 16 + 2] = 0.6 * k / n
        pose[1] = 2 * np.pi * k / n
        views.append({"pose": pose, "transl": subject["transl"], "camera": subject["camera"].scaled(0.5)})
    return views


@pytest.fixture(scope="module")
def single_backend_frames(tmp_path_factory, fitted, subject_128):
    """The animation as one backend (`serve`) renders it."""
    server = ServerProcess(store_with(tmp_path_factory.mktemp("single"), fitted, "farm000000000001"))
    try:
        with ServiceClient(server.address, timeout=60) as c:
            return [rgba for _, rgba in c.render_stream("farm000000000001", animation(subject_128))]
    finally:
        server.kill(signal.SIGTERM)


def test_a_stream_through_two_workers_equals_the_single_backend(farm, subject_128, single_backend_frames):
    with ServiceClient(farm.address, timeout=60) as c:
        caps = c.hello()
        assert caps["device"] == "farm: 2 x cpu" and "tiny" in caps["presets"]
        got = list(c.render_stream("farm000000000001", animation(subject_128), window=6))
    assert [i for i, _ in got] == list(range(FRAMES))
    assert all(np.array_equal(a, b) for (_, a), b in zip(got, single_backend_frames))
    assert len({f.tobytes() for _, f in got}) == FRAMES   # the frames differ: order matters


def test_killing_a_worker_mid_stream_still_delivers_every_frame_once(farm, subject_128, single_backend_frames):
    with ServiceClient(farm.address, timeout=120) as c:
        got = []
        for i, rgba in c.render_stream("farm000000000001", animation(subject_128), window=6):
            got.append((i, rgba))
            if i == 8:
                os.kill(farm.pids[1], signal.SIGKILL)
        assert [i for i, _ in got] == list(range(FRAMES))
        assert all(np.array_equal(a, b) for (_, a), b in zip(got, single_backend_frames))
        health = c.request("ping", {}).fields["worker"]
        assert health["alive"] and health["failures"] >= 1 and "worker 1" in health["last_error"]
        # Ray restarts the worker (a new process); the farm keeps serving meanwhile and after
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(farm_worker_pids()) - set(farm.pids):
            time.sleep(0.5)
        restarted = set(farm_worker_pids()) - set(farm.pids)
        assert restarted, "Ray did not restart the killed worker"
        farm.pids = [farm.pids[0], *restarted]
        again = list(c.render_stream("farm000000000001", animation(subject_128), window=6))
        assert all(np.array_equal(a, b) for (_, a), b in zip(again, single_backend_frames))


def farm_worker_pids() -> list[int]:
    """Processes Ray runs the FarmWorker actors in (it names them ray::FarmWorker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::FarmWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_fits_progress_and_cancel_as_with_one_backend(farm, subject_128):
    s = subject_128
    with ServiceClient(farm.address, timeout=60) as c:
        other_id, other, _ = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], mask=s["mask"],
                                         preset="quick", fit_body=False)
        assert c.receive(other_id, timeout=120).type == "progress"
        msg_id, job, warnings = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], mask=s["mask"],
                                            preset="tiny", fit_body=False, name="farmed")
        assert any("WITHOUT the CLIP" in w for w in warnings)
        seen = []
        done = c.wait_fit(msg_id, seen.append, timeout=300)
        assert done.type == "done" and done.fields["avatar"] == job
        check_fit_progress(seen, 20)
        # the long fit ran meanwhile on the other worker: cancel it
        assert [a["stage"] for a in c.list() if a["id"] == other] in (["A"], ["B"])
        c.cancel(other)
        assert any("preview" in m.frames for m in seen) and any(m.fields["body"] is not None for m in seen)
        listed = {a["id"]: a for a in c.list()}
        assert listed[job] == {"id": job, "stage": "done", "iteration": 20, "preset": "tiny", "name": "farmed"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and listed[other]["stage"] != "cancelled":
            time.sleep(0.2)
            listed = {a["id"]: a for a in c.list()}
        assert listed[other]["stage"] == "cancelled"
        assert c.load(job)["stage"] == "done"
        rgba = c.render(job, s["pose"], s["transl"], s["camera"])
        assert rgba.shape == (128, 128, 4) and rgba[..., 3][s["mask"] > 127].mean() > 128


def test_a_fit_whose_worker_dies_resumes_on_another(farm, subject_128):
    """Both workers are killed during a fit: it resumes (from its last checkpoint in the shared
    store) on whichever Ray restarts first, and the client just sees it finish later."""
    s = subject_128
    with ServiceClient(farm.address, timeout=60) as c:
        msg_id, job, _ = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], mask=s["mask"],
                                     preset="tiny", fit_body=False)
        seen = []

        def kill_at_stage_b(msg):
            seen.append(msg)
            if msg.fields["stage"] == "B" and len([m for m in seen if m.fields["stage"] == "B"]) == 1:
                for pid in farm_worker_pids():
                    os.kill(pid, signal.SIGKILL)
        done = c.wait_fit(msg_id, kill_at_stage_b, timeout=300)
        assert done.type == "done" and done.fields["avatar"] == job
        assert seen[-1].fields["stage"] == "B" and seen[-1].fields["iteration"] == 20
        health = c.request("ping", {}).fields["worker"]
        assert health["alive"] and health["failures"] >= 2
        assert [a["stage"] for a in c.list() if a["id"] == job] == ["done"]
        assert c.render(job, s["pose"], s["transl"], s["camera"]).shape == (128, 128, 4)


def test_the_farm_front_imports_no_torch():
    """The front only dispatches: torch is loaded by the workers, not by it."""
    code = ("import sys; import backend.farm.cluster, backend.farm.dispatcher, backend.farm.actor;"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_serve_imports_no_ray(tmp_path):
    """The single-machine path stays free of Ray: its server, worker and command line."""
    code = ("import sys; from backend.cli import build_parser; build_parser();"
            "from backend.service.server import Server, ServerConfig;"
            f"s = Server(ServerConfig(store={str(tmp_path / 'store')!r}, port=0, device='cpu')); s.close();"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
