"""The quality benchmark in one run: subjects -> body fit -> every method -> metrics, table, grids.

`python -m backend benchmark --size quick` (this 2-core CPU, ~1 h 40 min) or `--size full` (a GPU).
Per subject the body is fitted once from the rough parameters (as a user's pose estimate
would be); methods start from the true body parameters (ELICIT's protocol, where the datasets
provide body fits) or from that fit (`--body fitted`), and the full method runs on both. Each
method is then rendered at every held-out view and novel pose and compared with Cycles'
ground truth inside the person's box. Held-out views turn about each body's own vertical
axis (the method's body for the method, the true one for the truth), so a body fitted deeper
or shallower than the truth is not counted as a sideways shift.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from backend.avatar.config import preset as fit_preset
from backend.avatar.metrics import boxed_metrics, semi_transparent_fraction
from backend.body.body_model import BodyModel, load_body_model
from backend.body.fitting import joint_error_mm
from backend.quality import report
from backend.quality.measure import PeakMemory, Stopwatch, machine
from backend.quality.methods import Method, body_source, select
from backend.quality.projection import ProjectionBaseline
from backend.quality.subjects import HELD_OUT_YAWS, NOVEL_POSE_YAWS, Subject, ensure_subjects
from shared.orbit import body_up, orbit_from_camera

WHITE = (1.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class BenchmarkSize:
    name: str
    subjects: int
    render_size: int = 512        # Cycles ground truth and the photo
    samples: int = 32             # Cycles samples per pixel
    eval_scale: float = 1.0       # metrics at render_size * eval_scale
    preset: str = "quick"         # the avatar fit preset every method starts from
    iterations: int | None = None  # stage-B iterations (None: the preset's)
    body_preset: str = "quick"
    export_preset: str = "default"  # the "exported mesh" row's bake (backend export --preset)


SIZES = {
    # this 2-core CPU: 6 subjects x 7 rows in ~1 h 40 min (~140 s per fit); metrics at 256 px
    "quick": BenchmarkSize("quick", 6, eval_scale=0.5, preset="quick", iterations=150),
    # a GPU: paper-like fits at full resolution
    "full": BenchmarkSize("full", 6, preset="full", iterations=1000, body_preset="full"),
    # tests: one small subject in about a minute
    "tiny": BenchmarkSize("tiny", 1, render_size=128, samples=8, preset="tiny", export_preset="tiny"),
}


@dataclasses.dataclass
class StartBody:
    """The body parameters a method starts from (true or fitted)."""
    pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray


def fit_config(size: BenchmarkSize, method: Method):
    cfg = fit_preset(size.preset)
    if size.iterations is not None:
        cfg = dataclasses.replace(cfg, stage_b=dataclasses.replace(cfg.stage_b, iterations=size.iterations,
                                                                   checkpoint_every=0))
    return method.change(cfg)


def view_setups(subject: Subject, start: StartBody, body: BodyModel, scale: float):
    """(view, camera for the method, pose for the method) for every view: cameras turn about
    the method's body's axis; novel poses keep its global orientation."""
    cam0 = subject.views[0].camera.scaled(scale)
    with torch.no_grad():
        v = body(start.pose, start.betas, start.transl).vertices[0].cpu().numpy()
    centre, up = (v.min(0) + v.max(0)) / 2.0, body_up(start.pose[:3])
    for view in subject.views:
        cam = orbit_from_camera(cam0, centre, up, view.yaw)
        pose = start.pose if view.pose_name == "input" else \
            np.concatenate([start.pose[:3], subject.pose(view.pose_name)[3:]])
        yield view, cam, pose


def evaluate(render, subject: Subject, start: StartBody, body: BodyModel, scale: float, lpips=None):
    """Metrics per view and the renders (for the grid)."""
    rows, images = [], {}
    setups = list(view_setups(subject, start, body, scale))
    if hasattr(render, "prepare"):   # renders every view at once (the exported mesh, by Cycles)
        render.prepare(setups, start.transl)
    for view, cam, pose in setups:
        pred, pred_alpha = render(cam, pose, start.transl)
        truth, alpha = subject.ground_truth(view.name, scale)
        row = {"view": view.name, "bin": view.bin, **boxed_metrics(pred, truth, alpha, lpips)}
        if pred_alpha is not None:   # (the projection baseline is a mesh: solid by construction)
            row["semi_transparent"] = semi_transparent_fraction(pred_alpha)
        rows.append(row)
        images[view.name] = pred
    return rows, images


def _avatar_renderer(avatar):
    def render(cam, pose, transl):
        with torch.no_grad():
            out = avatar.render(cam, pose, transl, background=WHITE)
            return out.rgb.float().cpu().numpy(), out.alpha.float().cpu().numpy()
    return render


def fit_subject_body(subject: Subject, body: BodyModel, size: BenchmarkSize, work: Path, source: str = "fitted"):
    """The body fit a method starts from: "fitted" from the rough parameters and the true mask
    (ELICIT's inputs), or "photo" from the photo alone (landmarks and the estimated mask; the
    subject's true lens, as a photo's EXIF would give it)."""
    from backend.inputs import load_elicit_folder
    from backend.jobs.body_fit import run_body_fit

    with Stopwatch() as sw:
        if source == "photo":
            given = load_elicit_folder(subject.folder / "input")
            res = run_body_fit(photo=given.photo_path, camera=given.camera, body_spec="open_body",
                               preset=size.body_preset, out_dir=work / "body_fit_photo", log=lambda m: None, body=body)
        else:
            res = run_body_fit(elicit_dir=subject.folder / "input", body_spec="open_body", preset=size.body_preset,
                               out_dir=work / "body_fit", log=lambda m: None, body=body)
    fitted = StartBody(np.asarray(res.fit.pose), np.asarray(res.fit.betas), np.asarray(res.fit.transl))
    truth = (subject.pose(), subject.betas, subject.transl)
    info = {"iou_before": res.fit.iou_before, "iou_after": res.fit.iou_after, "seconds": sw.seconds,
            "mpjpe_before_mm": joint_error_mm(body, res.initial_pose, res.initial_betas, res.initial_transl, *truth),
            "mpjpe_after_mm": joint_error_mm(body, fitted.pose, fitted.betas, fitted.transl, *truth)}
    return res, fitted, info


def run_method(method: Method, subject: Subject, body_fit, start: StartBody, body: BodyModel, size: BenchmarkSize,
               work: Path, device: torch.device, clip, lpips_fit, lpips_metric, keep_avatar: bool = False,
               fitted_avatars: dict | None = None):
    """One method on one subject: {'status', 'fit_seconds', 'eval_seconds', 'peak_memory_mb',
    'views'} and the renders. `fitted_avatars`: this subject's avatars by method name, filled
    here (the exported-mesh row bakes the full method's rather than fitting it again)."""
    from backend.jobs.avatar_fit import fit_avatar

    if method.needs_clip and clip is None:
        return {"status": "skipped: no CLIP weights on this machine (docs/clip.md)"}, {}
    inputs = body_fit.inputs
    fitted_avatars = {} if fitted_avatars is None else fitted_avatars
    extra = {}
    with PeakMemory(device) as mem:
        with Stopwatch() as fit_time:
            if method.kind == "projection":
                model = ProjectionBaseline(body, inputs.image, body_fit.mask, inputs.camera,
                                           start.pose, start.betas, start.transl)
                renderer = lambda cam, pose, transl: (model.render(cam, pose, transl), None)  # noqa: E731
            elif method.kind == "export":
                from backend.jobs.avatar_export import ExportConfig
                from backend.quality.exported import ExportedMeshRenderer
                from backend.quality.methods import BY_NAME

                source = fitted_avatars.get(method.source)
                if source is None:
                    run_method(BY_NAME[method.source], subject, body_fit, start, body, size, work, device, clip,
                               lpips_fit, lpips_metric, keep_avatar, fitted_avatars)
                    source = fitted_avatars[method.source]
                renderer = ExportedMeshRenderer(source, ExportConfig.preset(size.export_preset),
                                                photo_view=(inputs.camera, start.pose, start.transl))
                extra["export"] = renderer.stats
            else:
                cfg = fit_config(size, method)
                out = work / method.name / "avatar.avatar"
                if out.parent.exists():
                    shutil.rmtree(out.parent)
                result = fit_avatar(body, inputs.image, body_fit.mask, inputs.camera, start.pose, start.betas,
                                    start.transl, out, cfg, clip=clip if cfg.use_clip else None, lpips=lpips_fit,
                                    prompt=subject.manifest["prompt"] if method.use_prompt else None,
                                    device=device, resume=False, log=lambda m: None)
                fitted_avatars[method.name] = result.record.avatar.eval()
                renderer = _avatar_renderer(fitted_avatars[method.name])
        with Stopwatch() as eval_time:
            rows, images = evaluate(renderer, subject, start, body, size.eval_scale, lpips_metric)
    if method.kind == "avatar" and not keep_avatar:
        shutil.rmtree(out.parent)   # full-size avatars are tens of MB each
    return {"status": "ok", "fit_seconds": fit_time.seconds, "eval_seconds": eval_time.seconds,
            "peak_memory_mb": mem.peak_mb, "views": rows, **extra}, images


def run_benchmark(size_name: str = "quick", out_dir: Path = Path("out/benchmark"), methods: list[str] | None = None,
                  subjects: int | None = None, seed: int = 0, clip_spec=None, lpips_weights=None, device=None,
                  cache: Path | None = None, body_source_name: str = "true", resume: bool = False,
                  keep_avatars: bool = False, command: str = "", log=print, subject_set: str = "v1") -> dict:
    """Writes results.json, results.md and grids/<subject>.png into out_dir (after every
    subject). `body_source_name`: the body parameters the methods start from, "true" (ELICIT's
    protocol: the dataset's body fits) or "fitted" (ours, from the photo and a rough estimate);
    the full method also runs on the other one. `resume`: keep the subjects an earlier run with
    the same settings already finished in out_dir. `keep_avatars`: keep each method's .avatar
    file under out_dir/work (else deleted once measured). `subject_set`: "v1" (clothing as colours
    on the body) or "v2" (the same people in clothing off the body surface, subjects.py)."""
    from backend.jobs.avatar_fit import load_priors, resolve_device

    t0 = time.perf_counter()
    size = SIZES[size_name]
    chosen = select(methods, body_source_name)
    device = resolve_device(device)
    out_dir = Path(out_dir)
    (out_dir / "grids").mkdir(parents=True, exist_ok=True)
    body = load_body_model("open_body").to(device)
    cpu_body = load_body_model("open_body")   # the body fit and the generator run on the CPU
    notes = []
    clip, lpips, _ = load_priors(fit_preset(size.preset), clip_spec, lpips_weights, device, log=lambda m: None)
    if clip is None:
        notes.append("CLIP: no weights on this machine (docs/clip.md), so every method runs without the semantic "
                     "prior and the CLIP rows are skipped")
    if lpips is None:
        notes.append("LPIPS: not measured, and fits use 1 - SSIM instead of LPIPS: no VGG16 weights on this machine "
                     "(docs/clip.md names the file)")
    with Stopwatch() as gen_time:
        folders = ensure_subjects(cpu_body, subjects or size.subjects, seed, size.render_size, size.samples,
                                  cache, log, subject_set)
    results = {"size": dataclasses.asdict(size), "set": subject_set, "command": command or " ".join(sys.argv),
               "seed": seed,
               "machine": machine(device), "memory_kind": PeakMemory(device).kind,
               "methods": {m.name: m.label for m in chosen},
               "descriptions": {m.name: m.description for m in chosen},
               "held_out_views": len(HELD_OUT_YAWS), "novel_pose_views": len(NOVEL_POSE_YAWS) * 3,
               "eval_size": int(round(size.render_size * size.eval_scale)), "body_source": body_source_name,
               "generation_seconds": gen_time.seconds, "notes": notes, "subjects": []}
    done = _finished_subjects(out_dir, results) if resume else {}
    for folder in folders:
        subject = Subject.load(folder)
        if subject.name in done:
            log(f"{subject.name}: kept from the earlier run in {out_dir}")
            results["subjects"].append(done[subject.name])
            continue
        work = out_dir / "work" / subject.name
        log(f"{subject.name}: fitting the body")
        body_fit, fitted, fit_info = fit_subject_body(subject, cpu_body, size, work)
        entry = {"name": subject.name, "prompt": subject.manifest["prompt"], "body_fit": fit_info, "methods": {}}
        truth = StartBody(subject.pose(), subject.betas, subject.transl)
        starts = {"true": (body_fit, truth), "fitted": (body_fit, fitted)}
        if any(body_source(m, body_source_name) == "photo" for m in chosen):
            log(f"{subject.name}: estimating the body from the photo alone")
            photo_fit, photo_body, entry["photo_body_fit"] = fit_subject_body(subject, cpu_body, size, work, "photo")
            starts["photo"] = (photo_fit, photo_body)
        renders, fitted_avatars = {}, {}
        for method in chosen:
            method_fit, start = starts[body_source(method, body_source_name)]
            try:
                run, images = run_method(method, subject, method_fit, start, body, size, work, device, clip,
                                         lpips, lpips, keep_avatars, fitted_avatars)
            except Exception as exc:  # one broken row must not lose the others' hours of work
                traceback.print_exc()
                run, images = {"status": f"failed: {type(exc).__name__}: {exc}"}, {}
            entry["methods"][method.name] = run
            renders[method.label] = images
            if run["status"] == "ok":
                mean = np.mean([r["psnr"] for r in run["views"] if r["bin"] != "input"])
                log(f"  {method.label}: held-out PSNR {mean:.2f} dB, fit {run['fit_seconds']:.1f} s, "
                    f"eval {run['eval_seconds']:.1f} s")
            else:
                log(f"  {method.label}: {run['status']}")
        results["subjects"].append(entry)
        _write_subject_grid(out_dir / "grids" / f"{subject.name}.png", subject, body_fit, size, renders)
        _write_outputs(out_dir, results, t0)   # after each subject: a long run's partial results survive
    return _write_outputs(out_dir, results, t0)


def _finished_subjects(out_dir: Path, results: dict) -> dict:
    """Subjects of an earlier results.json in out_dir made with the same size, seed, body
    source, methods, machine device and priors."""
    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = all(old.get(k) == results[k] for k in ("size", "set", "seed", "body_source", "methods", "notes")) and \
        old.get("machine", {}).get("device") == results["machine"]["device"]
    return {s["name"]: s for s in old.get("subjects", [])} if same else {}


def _write_subject_grid(path: Path, subject: Subject, body_fit, size: BenchmarkSize, renders: dict) -> None:
    import cv2

    photo, mask = body_fit.inputs.image, body_fit.mask
    if size.eval_scale != 1.0:
        hw = (int(round(photo.shape[1] * size.eval_scale)), int(round(photo.shape[0] * size.eval_scale)))
        photo = cv2.resize(photo, hw, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.float32), hw, interpolation=cv2.INTER_AREA)
    views = []
    for view in subject.views:
        truth, alpha = subject.ground_truth(view.name, size.eval_scale)
        views.append({"name": view.name, "truth": truth, "mask": alpha,
                      "images": {label: imgs[view.name] for label, imgs in renders.items() if view.name in imgs}})
    report.write_grid(path, photo, mask, views, [label for label, imgs in renders.items() if imgs])


def _write_outputs(out_dir: Path, results: dict, t0: float) -> dict:
    results["total_seconds"] = time.perf_counter() - t0
    summary = report.summarise(results)
    results["summary"] = summary
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "results.md").write_text(report.write_markdown(results, summary))
    return results
