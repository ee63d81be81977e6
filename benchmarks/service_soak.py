"""Soak the service on loopback: hostile input, then load. Prints Markdown tables (docs/speed.md).

    bash scripts/env.sh python benchmarks/service_soak.py [--fuzz 10000] [--clients 8] [--renders 200]
                                                       [--stream 200] [--json out.json]

Starts a real server process on 127.0.0.1 (temporary store, CPU), fits the sample subject at
128 px with the `tiny` preset, then:

* fuzz: `--fuzz` messages from one client (corrupted headers, random bytes, truncated and
  many-part messages, wrong types, out-of-order and future acks, huge view lists), reading
  replies as it goes; counts replies, the server's RSS before and after, and checks that the
  server and its worker still answer.
* load: `--clients` clients each asking for `--renders` single renders (of a few distinct
  poses, in random order) while one more client streams `--stream` frames. Every reply is
  compared with a reference render of its pose: a lost, duplicated, misrouted or misordered
  frame is counted as an error. Reports throughput and request -> frame latency (p50, p99).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service import start_server  # noqa: E402

from shared import protocol as P  # noqa: E402
from shared.client import ServiceClient  # noqa: E402

SIZE = 128


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def views(subject, n: int = 4) -> list[dict]:
    """n distinct poses (the left arm raised step by step) at half the photo's size."""
    out = []
    for k in range(n):
        pose = subject["pose"].copy()
        pose[3 * 16 + 2] = 0.25 * k
        out.append({"pose": pose, "transl": subject["transl"], "camera": subject["camera"].scaled(0.5)})
    return out


def fuzz(address: str, pid: int, subject, avatar: str, count: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cam = subject["camera"].to_dict()
    view = {"pose": [0.0] * 72, "transl": [0.0, 0.0, 3.0], "camera": cam}
    seeds = [P.encode("ping"), P.encode("list"),
             P.encode("render", {"avatar": "a" * 16, "view": view}),
             P.encode("fit", {"pose": [0.0] * 72, "transl": [0, 0, 3], "camera": cam, "preset": "tiny"},
                      {"photo": np.zeros((64, 64, 3), np.uint8)}),   # photo != camera size: always refused
             P.encode("ack", {"stream": "0123456789ab", "index": 5}),
             P.encode("stream_cancel", {"request": 12345})]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    sock.connect(address)
    replies = 0

    def drain(quiet_ms=0):
        """Read what has arrived; with quiet_ms, until nothing more comes for that long."""
        nonlocal replies
        while sock.poll(quiet_ms):
            if P.decode(sock.recv_multipart()).type != "heartbeat":
                replies += 1
    with ServiceClient(address, timeout=30) as c:
        c.ping()
        before = rss_kb(pid)
        start = time.perf_counter()
        for i in range(count):
            kind = i % 8
            parts = [bytearray(p) for p in seeds[i % len(seeds)]]
            if kind in (0, 1):              # flipped header bytes
                for _ in range(int(rng.integers(1, 8))):
                    parts[0][int(rng.integers(0, len(parts[0])))] = int(rng.integers(0, 256))
            elif kind == 2:                 # random bytes
                parts = [bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))]
            elif kind == 3:                 # truncated, or parts dropped
                parts = parts[: max(1, int(rng.integers(0, len(parts) + 1)))]
                parts[-1] = parts[-1][: int(rng.integers(0, len(parts[-1]) + 1))]
            elif kind == 4:                 # many parts
                parts = parts + [b"\0" * 16] * int(rng.integers(2, 40))
            elif kind == 5:                 # a field of the wrong type
                header = msgpack.unpackb(bytes(parts[0]))
                key = [k for k in header if k not in ("v", "type", "id", "frames")] or ["type"]
                header[key[int(rng.integers(0, len(key)))]] = [None, "x", -1, 1e308, {"a": 1}][int(rng.integers(0, 5))]
                parts[0] = msgpack.packb(header)
            elif kind == 6:                 # acks from the future, for streams that do not exist
                parts = P.encode("ack", {"stream": f"{int(rng.integers(0, 1 << 40)):012x}",
                                         "index": int(rng.integers(0, P.MAX_SEQUENCE))})
            else:                           # a stream request with too many views (over the limit)
                header = {"v": 1, "type": "render_stream", "id": i, "avatar": avatar,
                          "views": [view] * (P.MAX_SEQUENCE + 1 if i % 512 == 7 else int(rng.integers(0, 3)))}
                parts = [msgpack.packb(header)]
            sock.send_multipart([bytes(p) for p in parts])
            drain()
        drain(5000)
        seconds = time.perf_counter() - start
        # every stream the fuzz started (short valid ones) is cancelled by dropping this client
        alive = c.ping() < 5 and c.list() is not None
        health = c.health()
        after = rss_kb(pid)
    sock.close()
    return {"messages": count, "replies": replies, "seconds": seconds, "rss_before_mb": before / 1024,
            "rss_after_mb": after / 1024, "rss_growth_mb": (after - before) / 1024, "server_answers": alive,
            "worker": health}


def load(address: str, avatar: str, subject, clients: int, renders: int, stream: int, seed: int = 0) -> dict:
    vs = views(subject)
    with ServiceClient(address, timeout=60) as c:
        reference = [c.render(avatar, v["pose"], v["transl"], v["camera"]) for v in vs]
    latencies, errors = [], []
    lock = threading.Lock()

    def renderer(k: int):
        rng = np.random.default_rng(seed + k)
        mine = []
        try:
            with ServiceClient(address, timeout=120) as c:
                for _ in range(renders):
                    j = int(rng.integers(0, len(vs)))
                    t = time.perf_counter()
                    rgba = c.render(avatar, vs[j]["pose"], vs[j]["transl"], vs[j]["camera"])
                    mine.append(time.perf_counter() - t)
                    if not np.array_equal(rgba, reference[j]):
                        with lock:
                            errors.append(f"client {k}: a frame that is not the asked pose's")
        except Exception as exc:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"client {k}: {type(exc).__name__}: {exc}")
        with lock:
            latencies.extend(mine)

    stream_result = {}

    def streamer():
        order = [i % len(vs) for i in range(stream)]
        try:
            with ServiceClient(address, timeout=120) as c:
                t = time.perf_counter()
                got = [(i, np.array_equal(rgba, reference[order[i]])) for i, rgba in
                       c.render_stream(avatar, [vs[j] for j in order], window=4)]
                stream_result.update(seconds=time.perf_counter() - t, frames=len(got),
                                     in_order=[i for i, _ in got] == list(range(stream)),
                                     identical=all(ok for _, ok in got))
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"stream: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=renderer, args=(k,)) for k in range(clients)]
    threads.append(threading.Thread(target=streamer))
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = sorted(latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    if stream_result and not (stream_result["in_order"] and stream_result["identical"]):
        errors.append("stream: frames missing, out of order or wrong")
    return {"clients": clients, "renders_per_client": renders, "renders": len(lat), "stream_frames": stream,
            "seconds": seconds, "renders_per_s": len(lat) / seconds, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"), "stream": stream_result,
            "errors": errors, "frame_px": vs[0]["camera"].width}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--stream", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from backend.body.body_model import load_open_body
    from backend.jobs.sample_subject import small_subject

    subject = small_subject(load_open_body(), SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        proc, address = start_server(store, "cpu")
        try:
            with ServiceClient(address, timeout=60) as c:
                msg_id, avatar, _ = c.start_fit(subject["photo"], subject["pose"], subject["transl"],
                                                subject["camera"], mask=subject["mask"], preset="tiny", fit_body=False)
                if c.wait_fit(msg_id, timeout=600).type != "done":
                    raise SystemExit("the tiny fit failed")
            f = fuzz(address, proc.pid, subject, avatar, args.fuzz)
            ld = load(address, avatar, subject, args.clients, args.renders, args.stream)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print("| fuzz messages | replies | seconds | server RSS before → after (MB) | growth (MB) | server and worker alive | worker failures |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    print(f"| {f['messages']} | {f['replies']} | {f['seconds']:.1f} | {f['rss_before_mb']:.0f} → {f['rss_after_mb']:.0f} "
          f"| {f['rss_growth_mb']:+.1f} | {f['server_answers'] and f['worker']['alive']} | {f['worker']['failures']} |")
    print()
    s = ld["stream"]
    print(f"| clients × renders ({ld['frame_px']}² tiny avatar, CPU) | renders/s | p50 (ms) | p99 (ms) | stream frames "
          f"(in order, identical) | stream FPS | errors |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    print(f"| {ld['clients']} × {ld['renders_per_client']} + 1 stream | {ld['renders_per_s']:.1f} | {ld['p50_ms']:.0f} "
          f"| {ld['p99_ms']:.0f} | {s.get('frames', 0)}/{ld['stream_frames']} ({s.get('in_order')}, {s.get('identical')}) "
          f"| {s.get('frames', 0) / s['seconds'] if s.get('seconds') else float('nan'):.1f} | {len(ld['errors'])} |")
    for e in ld["errors"][:10]:
        print(f"error: {e}")
    if args.json:
        args.json.write_text(json.dumps({"fuzz": f, "load": ld}, indent=2, default=str))
    return 1 if ld["errors"] or not f["server_answers"] else 0


if __name__ == "__main__":
    sys.exit(main())
