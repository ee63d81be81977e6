"""Farm scaling on this machine: streamed frames/s through one backend (`serve`) and through farms
of 1 and 2 Ray workers (`farm`), the per-frame render cost and the farm's dispatch overhead,
and an estimate for N workers. Prints Markdown tables (docs/speed.md).

    bash scripts/env.sh python benchmarks/farm.py [--frames 48] [--sizes 64 128 256] [--device cpu]

Fits a `tiny` avatar of the sample subject once (a `serve` process, ~30 s on a 2-core CPU),
then streams the same turntable (window 8) through each configuration. With --device cuda on a
machine with GPUs the farm places one worker per GPU (`--workers` up to the GPU count).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.service import turntable  # noqa: E402
from shared.client import ServiceClient  # noqa: E402

AVATAR = "bench00000000001"


def start(command: str, store: Path, device: str, *extra: str) -> tuple[subprocess.Popen, str]:
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))
    errors = open(store.parent / f"{command}.stderr", "w+")   # a file, not a pipe: nobody has to drain it
    proc = subprocess.Popen([sys.executable, "-m", "backend", command, "--port", "0", "--store", str(store),
                             "--device", device, *extra], stdout=subprocess.PIPE, stderr=errors, text=True,
                            env=env, cwd=ROOT)
    while True:
        line = proc.stdout.readline()
        m = re.search(r"serving on tcp://127\.0\.0\.1:(\d+)", line)
        if m or not line:
            break
    if not m:
        proc.kill()
        proc.wait()
        errors.seek(0)
        raise SystemExit(f"{command} did not start:\n" + "\n".join(errors.read().splitlines()[-15:]))
    return proc, f"tcp://127.0.0.1:{m.group(1)}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream(address: str, views: list, front_pid: int, window: int = 8) -> dict:
    """One render_stream, acked as frames arrive: wall seconds, the workers' seconds per frame and
    the CPU seconds the front process spent (for `serve` that includes the rendering)."""
    with ServiceClient(address, timeout=300) as c:
        c.hello()
        list(c.render_stream(AVATAR, views[:4]))   # warm: the avatar is loaded by every worker it reaches
        start_s, cpu0 = time.perf_counter(), cpu_seconds(front_pid)
        msg_id = c.send("render_stream", {"avatar": AVATAR, "views": [_wire(v) for v in views], "format": "uint8",
                                          "window": window})
        seconds, count = [], 0
        while True:
            msg = c.receive(msg_id)
            if msg.type == "stream_done":
                break
            c.send("ack", {"stream": msg.fields["stream"], "index": msg.fields["index"]})
            seconds.append(msg.fields["seconds"])
            count += 1
        wall, cpu = time.perf_counter() - start_s, cpu_seconds(front_pid) - cpu0
    assert count == len(views)
    return {"wall": wall, "fps": count / wall, "render_s": statistics.fmean(seconds), "front_cpu_s": cpu / count}


def _wire(v: dict) -> dict:
    cam = v["camera"].to_dict()
    return {"pose": np.asarray(v["pose"], float).tolist(), "transl": np.asarray(v["transl"], float).tolist(),
            "camera": {k: (np.asarray(x, float).tolist() if k in ("K", "R", "t") else int(x)) for k, x in cam.items()}}


def fit_tiny(store: Path, device: str) -> dict:
    from backend.body.body_model import load_open_body
    from backend.jobs.sample_subject import small_subject

    s = small_subject(load_open_body(), 128)
    proc, address = start("serve", store, device)
    try:
        with ServiceClient(address, timeout=120) as c:
            msg_id, job, _ = c.start_fit(s["photo"], s["pose"], s["transl"], s["camera"], mask=s["mask"],
                                         preset="tiny", fit_body=False)
            assert c.wait_fit(msg_id, timeout=600).type == "done"
    finally:
        stop(proc)
    os.replace(store / job, store / AVATAR)
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=["serve", "farm:1x1", "farm:1x2", "farm:2x1"],
                    help="serve, farm:WORKERSxCPUS_PER_WORKER, or farm:auto (one worker per GPU)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    try:
        store = work / "store"
        s = fit_tiny(store, args.device)
        rows = []
        for config in args.configs:
            if config == "serve":
                proc, address = start("serve", store, args.device)
            elif config == "farm:auto":
                proc, address = start("farm", store, args.device)
            else:
                workers, cpus = config.split(":")[1].split("x")
                proc, address = start("farm", store, args.device, "--workers", workers, "--cpus-per-worker", cpus)
            try:
                for size in args.sizes:
                    views = turntable(s["camera"].scaled(size / 128), s["pose"], s["transl"], args.frames)
                    r = stream(address, views, proc.pid)
                    rows.append((config, size, r))
                    print(f"  {config} {size}²: {r['fps']:.2f} frames/s (render {1000 * r['render_s']:.0f} ms)",
                          flush=True)
            finally:
                stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.frames}-frame turntable of a `tiny` avatar, window 8, uint8 RGBA, device {args.device}:\n")
    print("| backend | size | frames/s | render ms / frame (worker) | wall ms / frame | overhead ms / frame "
          "| front CPU ms / frame |")
    print("|---|---|---|---|---|---|---|")
    for config, size, r in rows:
        workers = 1 if config in ("serve", "farm:auto") else int(config.split(":")[1].split("x")[0])
        wall_ms = 1000 * r["wall"] / args.frames
        overhead = wall_ms - 1000 * r["render_s"] / workers   # what the workers' own render time does not explain
        front = "(renders too)" if config == "serve" else f"{1000 * r['front_cpu_s']:.1f}"
        print(f"| {config} | {size}² | {r['fps']:.2f} | {1000 * r['render_s']:.1f} | {wall_ms:.1f} | {overhead:.1f} "
              f"| {front} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
