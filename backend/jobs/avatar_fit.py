"""The avatar-fit job: photo [+ mask] + body parameters [+ prompt] -> an .avatar file.

Body fit (or the given parameters as they are) -> stage A (the field becomes the body) ->
stage B (the photo, with both priors) with periodic checkpoints into the output file itself;
running the same command again after a crash resumes from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from backend.avatar.avatar import Avatar
from backend.avatar.avatar_file import AvatarRecord, load_avatar, save_avatar
from backend.avatar.clothing import allowance_for, hang_for, photo_clothing, widened_for
from backend.avatar.config import AvatarFitConfig
from backend.avatar.config import preset as config_preset
from backend.avatar.optimiser import StageB, make_photo_target, new_state, run_stage_b
from backend.avatar.photo_colours import photo_vertex_colours
from backend.avatar.stage_a import run_stage_a
from backend.body.body_model import BodyModel, load_body_model
from backend.errors import AvatarError

NO_CLIP_WARNING = ("WARNING: fitted WITHOUT the CLIP semantic prior (no CLIP weights); unseen sides "
                   "are guided only by the body prior")


@dataclasses.dataclass
class AvatarFitResult:
    path: Path
    record: AvatarRecord
    report: dict
    body_fit: object = None   # BodyFitJobResult when the body was fitted in this run


def _digest(arrays, *texts: str, salt: bytes = b"") -> str:
    """A short hash of arrays (as float32; None allowed) and texts."""
    h = hashlib.sha256(salt)
    for a in arrays:
        h.update(b"-" if a is None else np.ascontiguousarray(np.asarray(a, dtype=np.float32)).tobytes())
    for text in texts:
        h.update(text.encode())
    return h.hexdigest()[:16]


def _input_key(photo: np.ndarray, mask: np.ndarray, pose, betas, transl, cfg: AvatarFitConfig, prompt) -> str:
    return _digest((photo, mask, pose, betas, transl), json.dumps(cfg.to_dict(), sort_keys=True), prompt or "")


def _job_key(given, body_spec: str, cfg: AvatarFitConfig, prompt) -> str:
    """What a fit with the body fit is made from: the user's inputs (not the fitted body, which
    GrabCut, the estimator or a GPU may not reproduce bit for bit)."""
    arrays = [given.image, given.mask, given.camera.K, given.camera.R, given.camera.t]
    if given.params is not None:
        arrays += [given.params.pose, given.params.betas, given.params.transl]
    return _digest(arrays, json.dumps([cfg.to_dict(), prompt or "", str(body_spec)], sort_keys=True, default=str),
                   salt=b"fit_body")


def _body_of_unfinished_fit(out: Path, body: BodyModel, key: str, given, work: Path, log):
    """(mask, pose, betas, transl) the interrupted (or finished) fit at `out` of these same
    inputs was using, or None (no such fit, or its derived mask is gone): a resume continues on
    that body instead of fitting it again."""
    from backend.inputs import load_mask

    if not out.is_file():
        return None
    try:
        old = load_avatar(out, body)
    except AvatarError:
        return None   # fit_avatar says why it does not resume
    if old.input_key != key:
        return None
    mask = given.mask
    if mask is None:
        if not (work / "mask.png").is_file():
            log(f"the mask derived by the interrupted fit ({work / 'mask.png'}) is gone: fitting the body again")
            return None
        mask = load_mask(work / "mask.png", given.image.shape[:2])
    log(f"resuming: the body fitted before the interruption is reused (stage {old.stage}, "
        f"iteration {old.iteration})")
    return mask, old.pose, old.avatar.betas[0].cpu().numpy().astype(np.float64), old.transl


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AvatarError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def load_priors(cfg: AvatarFitConfig, clip_spec, lpips_weights, device, log):
    """CLIP (or None, with the warning) and LPIPS (or None, falling back to SSIM)."""
    from backend.avatar.losses import load_lpips

    clip = None
    warnings = []
    if cfg.use_clip and clip_spec is not None:
        from backend.avatar.clip_prior import load_clip
        clip = load_clip(clip_spec, device=device)
        log(f"CLIP prior: {clip.describe()}")
    else:
        warnings.append(NO_CLIP_WARNING)
    lpips = load_lpips(lpips_weights, device=device)
    if not lpips:
        warnings.append(str(lpips))
        lpips = None
    for w in warnings:
        log(w)
    return clip, lpips, warnings


def fit_avatar(body: BodyModel, photo: np.ndarray, mask: np.ndarray, camera, pose, betas, transl,
               out_path: Path, cfg: AvatarFitConfig, *, body_spec: str = "open_body", clip=None, lpips=None,
               prompt: str | None = None, warnings=(), device="cpu", resume: bool = True,
               log: Callable[[str], None] = print, progress: Callable[[dict], None] | None = None,
               on_step: Callable[[StageB, dict], None] | None = None,
               stop_after: int | None = None, input_key: str | None = None) -> AvatarFitResult:
    """Stage A + stage B from prepared inputs (the body already fitted). `on_step(stage_b, record)`
    runs after every stage-B iteration (the server's previews, renders between iterations and
    cancel). `stop_after`: end stage B after this many iterations in this call (resume tests)."""
    out_path = Path(out_path)
    device = torch.device(device)
    key = input_key or _input_key(photo, mask, pose, betas, transl, cfg, prompt)
    body = body.to(device)
    rec = None
    if resume and out_path.is_file():
        try:
            old = load_avatar(out_path, body, device)
        except AvatarError as exc:
            log(f"not resuming from {out_path}: {exc}")
            old = None
        if old is not None and old.input_key == key and old.stage != "done":
            rec = old
            log(f"resuming from {out_path}: stage {rec.stage}, iteration {rec.iteration}")
        elif old is not None and old.stage == "done" and old.input_key == key:
            log(f"{out_path} is already a finished fit of these inputs; nothing to do")
            return AvatarFitResult(out_path, old, old.report or {})
    report = {"preset": cfg.name, "body_model": body.identity, "warnings": list(warnings),
              "prompt": prompt or "", "clip": clip.describe() if clip is not None else None,
              "lpips": lpips is not None, "device": str(device)}
    if prompt and clip is None:
        report["warnings"].append("the text prompt is ignored: text guidance needs the CLIP prior")
        log(report["warnings"][-1])
    if rec is None:
        measure = cfg.clothing_from_photo or 0 < cfg.stage_b.bare_margin < cfg.stage_b.clothing_margin
        clothing = photo_clothing(body.to("cpu"), photo, mask, camera, pose, betas, transl) if measure else None
        body = body.to(device)
        # the avatar file keeps the config chosen here: its renders have the same room
        if clothing is not None:
            report["clothing_reach_m"] = round(clothing.reach, 4)
        if not cfg.clothing_from_photo:
            cfg = allowance_for(cfg, clothing)
        elif clothing is not None:
            cfg = widened_for(cfg, clothing.reach)
            log(f"clothing or hair reaches {100 * clothing.reach:.0f} cm past the body in the photo: "
                "the fit makes room for it")
        report["clothing_allowance_m"] = round(cfg.stage_b.clothing_margin, 4)
        cfg = hang_for(cfg, clothing)
        report["hang_from_pelvis"] = cfg.render.hang_from_pelvis
        if not cfg.stage_a.clothing_fill:
            clothing = None   # it holds a float copy of the photo: not kept through the fit
        torch.manual_seed(cfg.stage_b.seed)  # the field's initial planes: a rerun gives the same avatar
        avatar = Avatar(body, betas, cfg.field, cfg.motion, cfg.render).to(device)
        colours = None
        if cfg.stage_a.photo_colour:   # the field starts with the photo's colours on the body
            colours, seen = photo_vertex_colours(body, photo, mask, camera, pose, betas, transl)
            report["photo_colour_seen"] = seen
        report["stage_a"] = run_stage_a(avatar, cfg.stage_a, progress=progress, vertex_colours=colours,
                                        clothing=clothing)
        log(f"stage A: the field is the body ({report['stage_a']['seconds']:.1f} s)")
        rec = AvatarRecord(avatar, cfg, camera, np.asarray(pose), np.asarray(transl), body_spec, "B", 0,
                           report=report, input_key=key)
        state = new_state(avatar, cfg)
        save_avatar(out_path, _with_state(rec, state))
    else:
        avatar, cfg = rec.avatar, rec.config   # (the config as the fit widened it)
        report = {**report, **{k: v for k, v in (rec.report or {}).items()
                                if k.startswith("stage_") or k == "clothing_reach_m"}}
        state = new_state(avatar, cfg)
        state.iteration = rec.iteration
        if rec.optimiser:
            state.optimiser.load_state_dict(rec.optimiser)
        if rec.rng:
            state.rng.bit_generator.state = rec.rng["numpy"]
            state.generator.set_state(rec.rng["torch"])
    target = make_photo_target(photo, mask, camera, pose, transl, cfg.render.background, device)
    stage = StageB(avatar, target, cfg, clip=clip, lpips=lpips, prompt=prompt)
    iterations = cfg.stage_b.iterations if stop_after is None else min(cfg.stage_b.iterations,
                                                                          state.iteration + stop_after)
    start = time.perf_counter()

    def checkpoint(st):
        save_avatar(out_path, _with_state(dataclasses.replace(rec, iteration=st.iteration, report=report), st))

    def step_done(rec):
        if progress is not None:
            progress(rec)
        if on_step is not None:
            on_step(stage, rec)

    run_stage_b(stage, state, iterations, progress=step_done, checkpoint=checkpoint,
                checkpoint_every=cfg.stage_b.checkpoint_every)
    seconds = time.perf_counter() - start
    last = state.history[-50:]
    report["stage_b"] = {"iterations": state.iteration, "seconds_this_run": seconds,
                         "seconds_per_iteration": seconds / max(1, len(state.history)),
                         "recent_losses": _mean_losses(last)}
    finished = state.iteration >= cfg.stage_b.iterations
    rec = dataclasses.replace(rec, iteration=state.iteration, report=report, stage="done" if finished else "B")
    save_avatar(out_path, rec if finished else _with_state(rec, state))
    return AvatarFitResult(out_path, rec, report)


def _with_state(rec: AvatarRecord, state) -> AvatarRecord:
    return dataclasses.replace(rec, iteration=state.iteration, optimiser=state.optimiser.state_dict(),
                               rng={"numpy": state.rng.bit_generator.state, "torch": state.generator.get_state()})


def _mean_losses(history: list[dict]) -> dict:
    sums, counts = {}, {}
    for rec in history:
        for k, v in rec.items():
            if isinstance(v, float) and k not in ("eta_s", "seconds_per_iteration"):
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def run_avatar_fit(photo=None, mask=None, params=None, elicit_dir=None, body_spec="open_body", preset="quick",
                   out=Path("out/avatar.avatar"), prompt=None, clip_spec=None, lpips_weights=None,
                   device=None, fit_body=True, resume=True, log=print, progress=None, on_step=None,
                   camera=None) -> AvatarFitResult:
    """The whole job from files. clip_spec None: no semantic prior (warned in every output)."""
    from backend.inputs import betas_for_body, load_fit_inputs
    from backend.jobs.body_fit import run_body_fit

    cfg = config_preset(preset)
    dev = resolve_device(device)
    out = Path(out)
    work = out.with_suffix("")  # beside the avatar: overlay, fitted params, reports
    body = load_body_model(body_spec)
    # the priors first: a missing weights file should stop the job before minutes of body fitting
    clip, lpips, warnings = load_priors(cfg, clip_spec, lpips_weights, dev, log)
    fitted = job_key = None
    if fit_body:
        given = load_fit_inputs(photo=photo, mask=mask, params=params, elicit_dir=elicit_dir, camera=camera)
        job_key = _job_key(given, body_spec, cfg, prompt)
        reused = _body_of_unfinished_fit(out, body, job_key, given, work, log) if resume else None
        if reused is not None:
            inputs, (mask_img, pose, betas, transl) = given, reused
        else:
            fitted = run_body_fit(photo=photo, mask=mask, params=params, elicit_dir=elicit_dir, body_spec=body_spec,
                                  preset="full" if preset == "full" else "quick", out_dir=work, log=log, body=body,
                                  camera=camera)
            inputs, mask_img = fitted.inputs, fitted.mask
            pose, betas, transl = fitted.fit.pose, fitted.fit.betas, fitted.fit.transl
    elif params is None and elicit_dir is None:   # photo only, unrefined: the landmarks' body and mask
        from backend.jobs.body_fit import start_body

        inputs = load_fit_inputs(photo=photo, mask=mask, camera=camera)
        start = start_body(inputs, body, log)
        mask_img = inputs.mask if inputs.mask is not None else start.estimated_mask
        pose, betas, transl = start.pose, start.betas, start.transl
    else:
        inputs = load_fit_inputs(photo=photo, mask=mask, params=params, elicit_dir=elicit_dir)
        if inputs.mask is None:
            raise AvatarError("--no-body-fit needs a mask (a mask file or the photo's alpha channel)")
        mask_img = inputs.mask
        pose, transl = inputs.params.pose, inputs.params.transl
        betas = betas_for_body(inputs.params, body.name)
        if betas is None:
            log(f"note: the given shape parameters are for {inputs.params.source_model}, not {body.name}: "
                f"using the average shape (run with the body fit to recover it)")
            betas = np.zeros(body.num_betas)
        betas = np.pad(np.asarray(betas, float), (0, max(0, body.num_betas - len(betas))))[: body.num_betas]
    result = fit_avatar(body, inputs.image, mask_img, inputs.camera, pose, betas, transl, out, cfg,
                        body_spec=body_spec, clip=clip, lpips=lpips, prompt=prompt, warnings=warnings,
                        device=dev, resume=resume, log=log, progress=progress, on_step=on_step, input_key=job_key)
    work.mkdir(parents=True, exist_ok=True)
    (work / "avatar_report.json").write_text(json.dumps(result.report, indent=2, default=str))
    return dataclasses.replace(result, body_fit=fitted)
