"""Command line of the backend: `avatar-backend <command>` (or `python -m backend <command>`).

  demo      the main job on the built-in default subject (generated on first use): fit an
            avatar, render a turntable and novel poses, measure held-out views
  fit       photo [+ mask] + params (or an ELICIT folder) [+ prompt] -> an .avatar file
  render    an .avatar file + turntable / pose sequence / camera path -> PNG frames (+ MP4)
  export    an .avatar file -> a rigged, textured mesh (.glb, .fbx, .obj) for Blender and engines
  fit-body  fit the body to a photo + mask + params (ELICIT folder or JSON) and write an
            overlay PNG and the fitted parameters, printing silhouette IoU before/after
  sample    write the built-in sample subject (ELICIT format) into a folder
  benchmark the quality benchmark: Cycles-rendered synthetic people, every method and
            ablation, PSNR/SSIM/LPIPS per view bin (docs/benchmark.md)
  serve     run the backend service (ZeroMQ, docs/protocol.md)
  keys      make CurveZMQ key pairs for remote use of the service
  client    talk to a running service: ping, list, fit, render
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from backend.errors import AvatarError

DEFAULT_CACHE = Path(os.environ.get("AVATAR_CACHE_DIR", Path.home() / ".cache" / "one-shot-avatar"))


def _cmd_fit_body(args) -> int:
    from backend.jobs.body_fit import run_body_fit

    run_body_fit(photo=args.photo, mask=args.mask, params=args.params, elicit_dir=args.elicit,
                 body_spec=args.body, preset=args.preset, out_dir=args.out)
    return 0


def clip_spec_from_args(args):
    """None when the semantic prior is switched off, else the ClipSpec to load."""
    if args.no_clip:
        return None
    from backend.avatar.pretrained import ClipSpec

    return ClipSpec(model=args.clip_model, pretrained=args.clip_pretrained)


def _cmd_fit(args) -> int:
    from backend.jobs.avatar_fit import run_avatar_fit
    from backend.progress import ProgressPrinter

    progress = ProgressPrinter()
    try:
        result = run_avatar_fit(photo=args.photo, mask=args.mask, params=args.params, elicit_dir=args.elicit,
                                body_spec=args.body, preset=args.preset, out=args.out, prompt=args.prompt,
                                clip_spec=clip_spec_from_args(args), lpips_weights=args.lpips_weights,
                                device=args.device, fit_body=not args.no_body_fit, resume=not args.no_resume,
                                progress=progress)
    finally:
        progress.close()
    for w in result.report.get("warnings", []):
        print(w)
    print(f"wrote {result.path}")
    return 0


def _cmd_render(args) -> int:
    from backend.jobs.avatar_fit import resolve_device
    from backend.jobs.avatar_render import render_avatar

    files = render_avatar(args.avatar, args.out, turntable=args.turntable, poses=args.poses, cameras=args.cameras,
                          scale=args.scale, device=resolve_device(args.device), fps=args.fps,
                          frame_format=args.format)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def _cmd_export(args) -> int:
    from backend.jobs.avatar_export import ExportConfig, run_export
    from backend.jobs.avatar_fit import resolve_device
    from backend.progress import ProgressPrinter

    cfg = ExportConfig.preset(args.preset, triangles=args.triangles, texture=args.texture)
    progress = ProgressPrinter()
    try:
        result = run_export(args.avatar, args.out, fmt=args.format, cfg=cfg, device=resolve_device(args.device),
                            overwrite=args.overwrite, progress=progress)
    finally:
        progress.close()
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"{result.triangles} triangles, {result.vertices} vertices, {result.texture}² texture, "
          f"{result.bytes / 1e6:.1f} MB ({steps})")
    for f in result.files:
        print(f"wrote {f}")
    return 0


def _server_config(args):
    """The front's settings, the same for `serve` and `farm`."""
    from backend.service.limits import WorkerLimits
    from backend.service.server import CurveKeys, ServerConfig

    curve = None
    if args.curve is not None:
        curve = CurveKeys(args.curve / "server.key_secret", args.curve / "clients")
    limits = WorkerLimits(max_queued_fits=args.max_queued_fits, stream_ack_timeout_s=args.stream_ack_timeout)
    return ServerConfig(store=args.store, bind=args.bind, port=args.port, device=args.device, curve=curve,
                        preview_every=args.preview_every, limits=limits)


def _run_server(args, make) -> int:
    import logging

    from backend.service.store import StoreInUse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = _server_config(args)
    try:
        server = make(cfg)
    except (ValueError, StoreInUse) as exc:
        raise AvatarError(str(exc)) from None
    print(f"serving on tcp://{args.bind}:{server.port} (store {args.store}, device {server.worker.device}"
          f"{', CurveZMQ' if cfg.curve else ''})", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_serve(args) -> int:
    from backend.service.server import Server

    return _run_server(args, Server)


def _cmd_farm(args) -> int:
    import signal

    from backend.farm.cluster import start_farm, stop_farm
    from backend.farm.config import FarmConfig

    cfg = FarmConfig(workers=args.workers, address=args.address, cpus_per_worker=args.cpus_per_worker,
                     chunk_frames=args.chunk_frames)

    def terminate(*_):   # SIGTERM stops like Ctrl-C: fits keep their checkpoints, Ray's processes end
        raise KeyboardInterrupt

    def make(server_cfg):
        server = start_farm(server_cfg, cfg, say=lambda m: print(m, flush=True))
        signal.signal(signal.SIGTERM, terminate)   # after ray.init, which installs its own
        return server
    try:
        return _run_server(args, make)
    finally:
        stop_farm()


def _cmd_keys(args) -> int:
    import zmq.auth

    folder = args.folder
    names = ["server", *args.client]
    existing = [str(f) for n in names for f in (folder / f"{n}.key_secret", folder / f"{n}.key",
                                                   folder / "clients" / f"{n}.key") if f.exists()]
    if existing:   # a key in use is never overwritten: its clients would be locked out
        raise AvatarError(f"keys exist already: {', '.join(existing)}; remove them first or choose another folder")
    # secret keys are readable by their owner only (0600, folder 0700), from the moment they exist
    old_umask = os.umask(0o077)
    try:
        (folder / "clients").mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for name in names:
            zmq.auth.create_certificates(str(folder), name)
            if name != "server":
                (folder / f"{name}.key").replace(folder / "clients" / f"{name}.key")  # the server allows these
    finally:
        os.umask(old_umask)
    print(f"wrote {folder}/server.key_secret (keep on the server), {folder}/server.key (give to clients) and, "
          f"per client, <name>.key_secret (keep on the client) with its public key in {folder}/clients/")
    return 0


def _cmd_client(args) -> int:
    from shared.client import ServiceClient, ServiceError

    keys = {}
    if args.server_key:
        keys = {"server_key": args.server_key, "client_key": args.client_key}
    try:
        with ServiceClient(args.address, timeout=args.timeout, **keys) as c:
            return _client_action(c, args)
    except (ServiceError, TimeoutError) as exc:
        raise AvatarError(str(exc)) from None


def _client_action(c, args) -> int:
    if args.action == "ping":
        caps = c.hello()
        print(f"pong in {c.ping() * 1000:.1f} ms; server: {caps}")
    elif args.action == "list":
        for a in c.list():
            print(f"{a['id']}  {a['stage']:9s}  iteration {a['iteration']:5d}  {a['preset']}  {a.get('name') or ''}")
    elif args.action == "fit":
        from backend.inputs import load_fit_inputs

        if args.elicit is None and args.photo is None:
            raise AvatarError("client fit needs --photo (with optional --params) or --elicit FOLDER")

        inp = load_fit_inputs(photo=args.photo, mask=args.mask, params=args.params, elicit_dir=args.elicit)
        photo = (np.clip(inp.image, 0, 1) * 255).round().astype(np.uint8)
        mask = None if inp.mask is None else (inp.mask > 0.5).astype(np.uint8) * 255
        given = inp.params is not None   # else photo only: the server estimates the body in this camera
        msg_id, job, warnings = c.start_fit(photo, inp.params.pose if given else None,
                                            inp.params.transl if given else None, inp.camera, mask=mask,
                                            prompt=args.prompt, preset=args.preset, name=args.name,
                                            fit_body=not args.no_body_fit)
        print(f"job {job} accepted")
        for w in warnings:
            print(w)

        def show(msg):
            f = msg.fields
            if "preview" not in msg.frames:
                print(f"  stage {f['stage']} {f['iteration']}/{f['total']}  ETA {f.get('eta_s') or 0:.0f} s", flush=True)
        try:
            done = c.wait_fit(msg_id, show)
        except KeyboardInterrupt:
            c.cancel(job)
            print(f"cancelled {job}")
            return 1
        print(f"avatar {done.fields['avatar']} done")
    elif args.action == "render":
        from PIL import Image

        if not (args.avatar and args.poses and args.cameras):
            raise AvatarError("client render needs --avatar ID, --poses FILE and --cameras FILE")

        from backend.jobs.avatar_render import load_camera_path, load_pose_sequence

        poses, transl = load_pose_sequence(args.poses)
        cams = load_camera_path(args.cameras)
        views = [{"pose": p, "transl": transl[i] if transl is not None else args.transl,
                  "camera": cams[min(i, len(cams) - 1)]} for i, p in enumerate(poses)]
        args.out.mkdir(parents=True, exist_ok=True)
        for i, rgba in c.render_stream(args.avatar, views):
            Image.fromarray(rgba, "RGBA").save(args.out / f"frame_{i:04d}.png")
        print(f"wrote {len(views)} frames to {args.out}")
    return 0


def _cmd_sample(args) -> int:
    from backend.body.body_model import load_body_model
    from backend.jobs.sample_subject import write_sample_subject

    folder = write_sample_subject(load_body_model("open_body"), args.out, seed=args.seed)
    print(f"wrote the sample subject to {folder}")
    return 0


def _cmd_demo(args) -> int:
    from backend.body.body_model import load_body_model
    from backend.jobs.demo import format_table, run_demo
    from backend.jobs.sample_subject import write_sample_subject

    body = load_body_model("open_body")
    sample = DEFAULT_CACHE / "samples" / f"default-v2-{body.identity}"   # v2: the photo carries EXIF
    if not (sample / "gt_params.npz").is_file():
        print(f"generating the built-in sample subject in {sample}")
        write_sample_subject(body, sample)
    start = time.perf_counter()
    clip_spec = None if args.no_clip else _available_clip(args)
    metrics, result = run_demo(sample, args.out, body, preset=args.preset, clip_spec=clip_spec,
                               lpips_weights=args.lpips_weights, device=args.device)
    if result.body_fit is not None:
        err = _joint_error_mm(body, result.body_fit, np.load(sample / "true_params.npz"))
        print(f"body fit: 3D joint error (MPJPE, pelvis-aligned) {err['before']:.1f} mm before, "
              f"{err['after']:.1f} mm after")
    print("held-out views and novel poses (inside the person's box):")
    print(format_table(metrics))
    for w in metrics["warnings"]:
        print(w)
    print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {args.out}")
    return 0


def _cmd_benchmark(args) -> int:
    from backend.quality.run import run_benchmark

    clip_spec = None if args.no_clip else _available_clip(args)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    command = "python -m backend " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else ""
    results = run_benchmark(args.size, args.out, methods=methods, subjects=args.subjects, seed=args.seed,
                            clip_spec=clip_spec, lpips_weights=args.lpips_weights, device=args.device,
                            cache=args.cache, body_source_name=args.body, resume=args.resume,
                            keep_avatars=args.keep_avatars, command=command, subject_set=args.set)
    print((args.out / "results.md").read_text())
    print(f"benchmark finished in {results['total_seconds'] / 60:.1f} min; outputs in {args.out}")
    return 0


def _available_clip(args):
    """The CLIP spec when its weights are on this machine; else None (the demo still runs,
    without the semantic prior, and says so)."""
    from backend.avatar.pretrained import ClipSpec, ClipWeightsMissing, resolve_weights

    spec = ClipSpec(model=args.clip_model, pretrained=args.clip_pretrained)
    try:
        resolve_weights(spec)
    except ClipWeightsMissing as exc:
        print(f"note: {exc}")
        return None
    return spec


def _joint_error_mm(body, result, truth) -> dict:
    from backend.body.fitting import joint_error_mm

    true = (truth["pose"][0], truth["betas"][0], truth["global_t"][0])
    return {"before": joint_error_mm(body, result.initial_pose, result.initial_betas, result.initial_transl, *true),
            "after": joint_error_mm(body, result.fit.pose, result.fit.betas, result.fit.transl, *true)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-backend", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fit_body = sub.add_parser("fit-body", help="fit the body model to a photo's person mask")
    _add_input_args(fit_body)
    fit_body.add_argument("--preset", default="quick", choices=["quick", "full"])
    fit_body.add_argument("--out", type=Path, default=Path("out/fit"))
    fit_body.set_defaults(func=_cmd_fit_body)

    fit = sub.add_parser("fit", help="fit an avatar to one photo")
    _add_input_args(fit)
    fit.add_argument("--prompt", help="text describing the person (CLIP text guidance), e.g. 'red hoodie, black jeans'")
    fit.add_argument("--preset", default="quick", choices=["quick", "full", "tiny"])
    fit.add_argument("--out", type=Path, default=Path("out/avatar.avatar"),
                     help="the avatar file; also the checkpoint a rerun resumes from")
    fit.add_argument("--no-body-fit", action="store_true", help="use the given body parameters as they are")
    fit.add_argument("--no-resume", action="store_true", help="start over even if --out holds an unfinished fit")
    _add_prior_args(fit)
    fit.set_defaults(func=_cmd_fit)

    render = sub.add_parser("render", help="render an avatar file")
    render.add_argument("avatar", type=Path)
    what = render.add_mutually_exclusive_group(required=True)
    what.add_argument("--turntable", type=int, default=0, metavar="N", help="N frames around the body")
    what.add_argument("--poses", type=Path, help="pose sequence: .npz (poses (N,72) [, transl (N,3)]) or .json")
    what.add_argument("--cameras", type=Path, help="camera path JSON: {cameras: [{K, R, t, width, height}]}")
    render.add_argument("--scale", type=float, default=1.0, help="image size relative to the photo")
    render.add_argument("--fps", type=int, default=24)
    render.add_argument("--format", default="png", choices=["png", "exr"],
                        help="png: RGBA, sRGB colour, straight alpha; exr: OpenEXR with linear premultiplied "
                             "RGBA and depth Z in metres (1e10 where empty), for compositing")
    render.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    render.add_argument("--out", type=Path, default=Path("out/render"))
    render.set_defaults(func=_cmd_render)

    export = sub.add_parser("export", help="bake an avatar file into a rigged, textured mesh")
    export.add_argument("avatar", type=Path)
    export.add_argument("--out", type=Path, required=True, help="the file: .glb, .fbx or .obj")
    export.add_argument("--format", choices=["glb", "fbx", "obj"], help="default: from --out's suffix")
    export.add_argument("--preset", default="default", choices=["default", "tiny"])
    export.add_argument("--triangles", type=int, help="at most this many triangles (default 100000)")
    export.add_argument("--texture", type=int, help="texture size in texels per side (default 2048)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    export.set_defaults(func=_cmd_export)

    demo = sub.add_parser("demo", help="run the main job on the built-in sample subject")
    demo.add_argument("--preset", default="quick", choices=["quick", "full", "tiny"])
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    _add_prior_args(demo)
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser("serve", help="run the backend service")
    _add_service_args(serve)
    serve.set_defaults(func=_cmd_serve)

    from backend.farm.config import FarmConfig

    farm = sub.add_parser("farm", help="run the backend service on a Ray cluster: workers behind one address "
                                       "(docs/farm.md)")
    _add_service_args(farm)
    farm.add_argument("--address", help="join this running Ray cluster ('auto': the one on this machine); "
                                         "default: start a local one")
    farm.add_argument("--workers", type=int, default=FarmConfig.workers,
                      help="backend workers (default: one per GPU; without GPUs one per --cpus-per-worker CPUs)")
    farm.add_argument("--cpus-per-worker", type=int, default=FarmConfig.cpus_per_worker,
                      help="CPU workers: threads each")
    farm.add_argument("--chunk-frames", type=int, default=FarmConfig.chunk_frames,
                      help="frames of a render stream a worker renders at a time")
    farm.set_defaults(func=_cmd_farm)

    keys = sub.add_parser("keys", help="make CurveZMQ certificates for remote use")
    keys.add_argument("folder", type=Path)
    keys.add_argument("--client", action="append", default=[], help="a client name (repeatable)")
    keys.set_defaults(func=_cmd_keys)

    client = sub.add_parser("client", help="talk to a running service")
    client.add_argument("action", choices=["ping", "list", "fit", "render"])
    client.add_argument("--address", default="tcp://127.0.0.1:5557")
    client.add_argument("--timeout", type=float, default=60.0)
    client.add_argument("--server-key", type=Path, help="the server's public certificate (server.key)")
    client.add_argument("--client-key", type=Path, help="this client's secret certificate (<name>.key_secret)")
    client.add_argument("--elicit", type=Path)
    client.add_argument("--photo", type=Path)
    client.add_argument("--mask", type=Path)
    client.add_argument("--params", type=Path)
    client.add_argument("--prompt")
    client.add_argument("--preset", default="quick")
    client.add_argument("--name")
    client.add_argument("--no-body-fit", action="store_true", help="use the given body parameters as they are")
    client.add_argument("--avatar", help="avatar id (render)")
    client.add_argument("--poses", type=Path, help="pose sequence (render)")
    client.add_argument("--cameras", type=Path, help="camera path JSON (render; the last camera repeats)")
    client.add_argument("--transl", type=float, nargs=3, default=[0.0, 0.0, 0.0])
    client.add_argument("--out", type=Path, default=Path("out/stream"))
    client.set_defaults(func=_cmd_client)

    sample = sub.add_parser("sample", help="write the built-in sample subject (ELICIT format)")
    sample.add_argument("out", type=Path)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_cmd_sample)
    bench = sub.add_parser("benchmark", help="the quality benchmark (docs/benchmark.md)")
    bench.add_argument("--size", default="quick", choices=["quick", "full", "tiny"],
                       help="quick: this CPU in < 30 min; full: a GPU; tiny: a smoke test")
    bench.add_argument("--out", type=Path, default=Path("out/benchmark"))
    bench.add_argument("--methods", help="comma-separated subset (default: all; see docs/benchmark.md)")
    bench.add_argument("--subjects", type=int, help="number of subjects (default: the size's)")
    bench.add_argument("--seed", type=int, default=0, help="subject generator seed")
    bench.add_argument("--set", default="v1", choices=["v1", "v2"],
                       help="v1: clothing as colours on the body surface; v2: the same people in a loose top, "
                            "a hair volume and (some) a skirt, off the body surface")
    bench.add_argument("--cache", type=Path, help="where rendered subjects are kept (default: the cache dir)")
    bench.add_argument("--body", default="true", choices=["true", "fitted"],
                       help="body parameters the methods start from: the true ones (ELICIT's protocol) or "
                            "ours fitted to the photo; the full method runs on both either way (the rows "
                            "on the body from the photo alone, full_photo_body and projection_photo_body, "
                            "run when named in --methods)")
    bench.add_argument("--resume", action="store_true",
                       help="keep the subjects a previous run with the same settings finished in --out")
    bench.add_argument("--keep-avatars", action="store_true", help="keep every fitted .avatar under --out/work")
    _add_prior_args(bench)
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def _add_service_args(p) -> None:
    from backend.service.limits import WorkerLimits

    p.add_argument("--store", type=Path, default=DEFAULT_CACHE / "avatars", help="where avatars are kept")
    p.add_argument("--bind", default="127.0.0.1", help="interface; anything but localhost needs --curve")
    p.add_argument("--port", type=int, default=5557)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--curve", type=Path, help="folder made by 'keys': server.key_secret + clients/")
    p.add_argument("--preview-every", type=int, default=25, help="fit iterations between preview images")
    p.add_argument("--max-queued-fits", type=int, default=WorkerLimits.max_queued_fits,
                   help="fits waiting beyond this are refused with 'busy'")
    p.add_argument("--stream-ack-timeout", type=float, default=WorkerLimits.stream_ack_timeout_s,
                   help="seconds a render stream waits for its client's ack before it is stopped")


def _add_input_args(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--elicit", type=Path, help="ELICIT folder: gt_image.png, gt_mask.png, gt_params.npz")
    src.add_argument("--photo", type=Path, help="photo (PNG/JPG; alpha is used as the mask)")
    p.add_argument("--mask", type=Path, help="person mask image (with --photo)")
    p.add_argument("--params", type=Path, help="body parameters: gt_params.npz or our JSON (with --photo); without "
                   "them the pose, mask and camera are estimated from the photo")
    p.add_argument("--body", default="open_body", help="'open_body' (built in) or an SMPL .pkl/.npz file")


def _add_prior_args(p) -> None:
    p.add_argument("--no-clip", action="store_true", help="fit without the CLIP semantic prior (warned in outputs)")
    p.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name (paper: ViT-L-14)")
    p.add_argument("--clip-pretrained", default="openai",
                   help="pretrained tag found locally (see docs/clip.md), or a weights file / folder")
    p.add_argument("--lpips-weights", type=Path, help="torchvision VGG16 weights for LPIPS (else looked up; "
                                                        "without them 1 - SSIM is used)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvatarError as exc:  # user-facing: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
