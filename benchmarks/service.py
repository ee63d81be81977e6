"""Service benchmark on loopback: streamed render FPS, single-frame latency (request -> frame
received) at 256² and 512², and how long a render waits while a fit is running.

    bash scripts/env.sh python benchmarks/service.py [--device cuda] [--preset quick]

Starts a real server process on 127.0.0.1 with a temporary store, fits the sample subject
with `--preset` (`quick`: ~2 minutes on a 2-core CPU) and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.body.body_model import load_body_model  # noqa: E402
from backend.inputs import load_elicit_folder  # noqa: E402
from backend.jobs.sample_subject import write_sample_subject  # noqa: E402
from shared.client import ServiceClient  # noqa: E402


def start_server(store: Path, device: str) -> tuple[subprocess.Popen, str]:
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))
    errors = open(store.parent / "server.stderr", "w+")   # a file, not a pipe: nobody has to drain it
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", "0", "--store", str(store),
                             "--device", device], stdout=subprocess.PIPE, stderr=errors, text=True,
                            env=env, cwd=ROOT)
    m = re.search(r"tcp://127\.0\.0\.1:(\d+)", proc.stdout.readline())
    if not m:
        proc.kill()
        proc.wait()
        errors.seek(0)
        raise SystemExit("the server did not start:\n" + "\n".join(errors.read().splitlines()[-15:]))
    return proc, f"tcp://127.0.0.1:{m.group(1)}"


def turntable(camera, pose, transl, n: int):
    from shared.orbit import body_up, orbit_from_camera

    centre = np.array([0.0, 0.0, 4.8])   # the sample subject's body centre (frame_body)
    up = body_up(pose[:3])
    return [{"pose": pose, "transl": transl, "camera": orbit_from_camera(camera, centre, up, 360.0 * i / n)}
            for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        body = load_body_model("open_body")
        folder = write_sample_subject(body, Path(tmp) / "subject")
        inp = load_elicit_folder(folder)
        truth = np.load(folder / "true_params.npz")
        pose, transl = truth["pose"][0], truth["global_t"][0]
        photo = (inp.image * 255).round().astype(np.uint8)
        mask = (inp.mask > 0.5).astype(np.uint8) * 255
        proc, address = start_server(Path(tmp) / "store", args.device)
        try:
            with ServiceClient(address, timeout=600) as c:
                caps = c.hello()
                t = time.perf_counter()
                msg_id, avatar, _ = c.start_fit(photo, pose, transl, inp.camera, mask=mask, preset=args.preset,
                                                fit_body=False)
                c.wait_fit(msg_id, timeout=7200)
                fit_s = time.perf_counter() - t
                rows = []
                for size in args.sizes:
                    cam = inp.camera.scaled(size / inp.camera.width)
                    views = turntable(cam, pose, transl, args.frames)
                    c.render(avatar, pose, transl, cam)   # warm the avatar cache
                    lat = []
                    for v in views[:5]:
                        s = time.perf_counter()
                        c.render(avatar, v["pose"], v["transl"], v["camera"])
                        lat.append(time.perf_counter() - s)
                    s = time.perf_counter()
                    n = sum(1 for _ in c.render_stream(avatar, views, window=4))
                    fps = n / (time.perf_counter() - s)
                    rows.append((size, fps, statistics.mean(lat) * 1000, max(lat) * 1000))
                # renders while a fit runs are answered between iterations
                cam = inp.camera.scaled(256 / inp.camera.width)
                idle = []
                for _ in range(3):
                    s = time.perf_counter()
                    c.render(avatar, pose, transl, cam)
                    idle.append(time.perf_counter() - s)
                msg_id, job, _ = c.start_fit(photo, pose, transl, inp.camera, mask=mask, preset=args.preset,
                                             fit_body=False)
                while c.receive(msg_id, timeout=600).fields.get("stage") != "B":
                    pass
                busy = []
                for _ in range(5):
                    s = time.perf_counter()
                    c.render(avatar, pose, transl, cam)
                    busy.append(time.perf_counter() - s)
                c.cancel(job)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"server device: {caps['device']}; avatar preset {args.preset} (fit {fit_s:.0f} s); loopback, "
          f"{args.frames}-frame turntable streams, window 4, uint8 RGBA")
    print()
    print("| size | stream FPS | latency mean (ms) | latency max (ms) |")
    print("|---|---|---|---|")
    for size, fps, mean, worst in rows:
        print(f"| {size}² | {fps:.2f} | {mean:.0f} | {worst:.0f} |")
    print()
    print(f"256² render latency: idle {statistics.mean(idle) * 1000:.0f} ms, while a {args.preset} fit runs "
          f"{statistics.mean(busy) * 1000:.0f} ms (max {max(busy) * 1000:.0f} ms): answered between fit iterations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
