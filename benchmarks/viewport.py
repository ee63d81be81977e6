"""Viewport latency: from a pose change to the frame in the add-on, at quarter and full size.
Prints a Markdown table (docs/speed.md).

    bash scripts/env.sh python benchmarks/viewport.py [--avatar out/demo/avatar.avatar]
        [--region 1280x720] [--changes 20] [--device cpu|cuda]

A real backend process serves the avatar on 127.0.0.1; the add-on's own connection thread (from
its built zip) carries the requests, as the viewport's draw handler makes them: each change of
pose asks for the region's frame with depth, and the time is taken until that frame is in the
add-on's result queue (what the result timer then hands to the draw handler). The camera is the
avatar's photo camera scaled to the region's size; each change turns the body a little.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
AVATAR_ID = "viewport00000001"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avatar", type=Path, default=ROOT / "out" / "demo" / "avatar.avatar")
    ap.add_argument("--region", default="1280x720", help="the viewport region's size, WxH")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if not args.avatar.is_file():
        print(f"error: {args.avatar} does not exist (run bash scripts/demo.sh, or pass --avatar)", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.region.lower().split("x"))

    from shared.client import ServiceClient
    from tests.backend_process import ServerProcess
    from tests.installed_addon import load_built_addon

    tmp = Path(tempfile.mkdtemp(prefix="viewport-bench-"))
    folder = tmp / "store" / AVATAR_ID
    folder.mkdir(parents=True)
    shutil.copy(args.avatar, folder / "avatar.avatar")
    (folder / "job.json").write_text(json.dumps({"preset": "quick", "prompt": "", "name": "bench",
                                                 "body": "open_body", "fit_body": True, "created": time.time()}))
    server = ServerProcess(tmp / "store", "--device", args.device)   # (the last --device wins)
    addon = load_built_addon()
    vv = __import__(f"{addon.__name__}.viewport_view", fromlist=["viewport_view"])
    conn = addon.connection.Connection(server.address, timeout=120)
    rows = []
    try:
        with ServiceClient(server.address, timeout=120) as c:
            body = c.load(AVATAR_ID)
        cam = dict(body["camera"])
        scale = min(width / cam["width"], height / cam["height"])
        K = np.asarray(cam["K"], dtype=np.float64)
        K[:2] *= scale
        K[0, 2] += (width - cam["width"] * scale) / 2
        K[1, 2] += (height - cam["height"] * scale) / 2
        region_cam = {**cam, "K": K.tolist(), "width": width, "height": height}
        for label, frac in (("quarter (moving)", 0.25), ("full (at rest)", 1.0)):
            sched = vv.ViewportScheduler(moving_scale=frac, idle_s=0.0)
            times = []
            for i in range(args.changes + 2):           # the first two warm up
                pose = np.array(body["pose"], dtype=np.float64)
                pose[5] += 0.02 * (i + 1)                # the left hip turns a little each time
                req = sched.on_view("region", i, {"pose": pose, "transl": body["transl"], "camera": region_cam},
                                    np.eye(4))
                start = time.perf_counter()
                conn.request_render(req.seq, AVATAR_ID, req.view, slot="region", depth=True)
                got = None
                while got is None:
                    for kind, payload in conn.drain():
                        if kind == "frame" and payload["key"] == req.seq:
                            got = payload
                        elif kind in ("error", "lost"):
                            raise RuntimeError(payload)
                    time.sleep(0.001)
                if i >= 2:
                    times.append(time.perf_counter() - start)
            w, h = req.view["camera"]["width"], req.view["camera"]["height"]
            times_ms = sorted(t * 1000 for t in times)
            rows.append((label, f"{w}x{h}", statistics.median(times_ms), times_ms[int(0.95 * (len(times_ms) - 1))]))
    finally:
        conn.close()
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nViewport {width}x{height}, device {args.device}, {args.changes} pose changes each "
          f"(pose change -> frame with depth in the add-on)\n")
    print("| frame | size | p50 (ms) | p95 (ms) |\n|---|---|---|---|")
    for label, size, p50, p95 in rows:
        print(f"| {label} | {size} | {p50:.0f} | {p95:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
