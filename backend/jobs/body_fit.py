"""The body-fit job: inputs -> (GrabCut mask if needed) -> fit -> overlay PNG + fitted params."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from backend.body.body_model import BodyModel, load_body_model
from backend.body.fitting import BodyFitConfig, FitResult, fit_body_to_mask, silhouette_iou, wrap_angles
from backend.body.grabcut import grabcut_mask, sharpen_person_mask
from backend.inputs import BodyParams, FitInputs, betas_for_body, load_fit_inputs, write_params_json
from backend.render.raster import camera_tensors, hard_silhouette
from shared.camera import PinholeCamera


@dataclasses.dataclass
class BodyFitJobResult:
    fit: FitResult
    initial_pose: np.ndarray
    initial_betas: np.ndarray
    initial_transl: np.ndarray
    mask_source: str
    out_dir: Path
    inputs: FitInputs          # the validated photo, camera and given parameters
    mask: np.ndarray           # (H, W) the person mask used (file, alpha or GrabCut)
    body: BodyModel


def body_silhouette(body: BodyModel, pose, betas, transl, camera: PinholeCamera) -> np.ndarray:
    with torch.no_grad():
        verts = body(pose, betas, transl).vertices
        K, R, t = camera_tensors(camera, verts.device, verts.dtype)
        return hard_silhouette(verts, body.faces, K, R, t, camera.height, camera.width)[0].cpu().numpy()


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
    """The photo with the fitted silhouette tinted green, its outline in green, the initial
    body's outline in red and the person mask's outline in white."""
    rgb = (np.clip(image, 0, 1) * 255).astype(np.uint8).copy()
    tint = np.array([40, 220, 80], np.float32)
    rgb[after] = (0.55 * rgb[after] + 0.45 * tint).astype(np.uint8)
    width = max(1, round(max(rgb.shape[:2]) / 300))
    for region, colour in ((mask > 0.5, (255, 255, 255)), (before, (230, 40, 40)), (after, (40, 220, 80))):
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, colour, width)
    Image.fromarray(rgb).save(path)


def _grabcut(image, seed, log) -> np.ndarray:
    derived = grabcut_mask(image, seed)
    for w in derived.warnings:
        log(f"warning: {w}")
    return derived.mask


@dataclasses.dataclass
class Start:
    """Where the body fit starts: given parameters or the photo's own estimate."""
    pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    guides: object = None              # backend.estimate.body_init.PoseGuides, when landmarks were found
    estimated_mask: np.ndarray | None = None   # only when no mask or alpha was given
    source: str = "params"             # "params" or "photo"


def _given_betas(inputs: FitInputs, body: BodyModel) -> np.ndarray:
    betas0 = betas_for_body(inputs.params, body.name)
    betas0 = np.zeros(body.num_betas) if betas0 is None else np.asarray(betas0)[: body.num_betas]
    if betas0.shape[0] < body.num_betas:
        betas0 = np.pad(betas0, (0, body.num_betas - betas0.shape[0]))
    return betas0


def _person_mask(inputs: FitInputs, est) -> np.ndarray | None:
    """The estimator's mask, sharpened (a GrabCut pass), only where no mask or alpha was given."""
    return sharpen_person_mask(inputs.image, est.mask) if inputs.mask is None else None


def start_body(inputs: FitInputs, body: BodyModel, log=print) -> Start:
    """Photo only: landmarks -> body (an error if no person is found). With given parameters:
    those, plus the landmarks as guides when the estimator is installed and finds the person."""
    from backend.estimate.person import EstimatorUnavailable, NoPersonError, estimate_person

    photo8 = (np.clip(inputs.image, 0, 1) * 255).round().astype(np.uint8)
    where = str(inputs.photo_path)
    if inputs.params is None:
        from backend.estimate.body_init import init_body

        log(f"estimating the person's pose and mask from the photo (lens: {inputs.lens_source}, "
            f"focal {inputs.camera.K[0, 0]:.0f} px)")
        est = estimate_person(photo8, where)
        for w in est.warnings:
            log(f"warning: {w}")
        init = init_body(body, est, inputs.camera)
        return Start(init.pose, init.betas, init.transl, init.guides, _person_mask(inputs, est), "photo")
    start = Start(np.asarray(inputs.params.pose), _given_betas(inputs, body), np.asarray(inputs.params.transl))
    try:
        from backend.estimate.body_init import pose_guides

        est = estimate_person(photo8, where)
    except EstimatorUnavailable as exc:
        log(f"note: refining without landmarks ({exc})")
        return start
    except NoPersonError:
        log("note: the pose estimator found no person; refining the given parameters by the silhouette alone")
        return start
    return dataclasses.replace(start, guides=pose_guides(est, inputs.camera), estimated_mask=_person_mask(inputs, est))


def run_body_fit(photo=None, mask=None, params=None, elicit_dir=None, body_spec="open_body",
                 preset="quick", out_dir=Path("out/fit"), log=print, body: BodyModel | None = None,
                 camera: PinholeCamera | None = None) -> BodyFitJobResult:
    inputs = load_fit_inputs(photo=photo, mask=mask, params=params, elicit_dir=elicit_dir, camera=camera)
    body = load_body_model(body_spec) if body is None else body
    for note in list(inputs.warnings) + (list(inputs.params.notes) if inputs.params is not None else []):
        log(f"note: {note}")
    start = start_body(inputs, body, log)
    pose0, betas0, transl0 = start.pose, start.betas, start.transl
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    before = body_silhouette(body, pose0, betas0, transl0, inputs.camera)
    config = BodyFitConfig.preset(preset)
    total = sum(s.iterations for s in config.stages)

    def progress(rec):
        n = sum(s.iterations for s in config.stages[: rec["stage"]]) + rec["iteration"] + 1
        log(f"  fit {n:4d}/{total}  stage {rec['stage']}  loss {rec['loss']:.4f}  soft IoU {rec['soft_iou']:.3f}")

    mask_img, mask_source = inputs.mask, inputs.mask_source
    if mask_img is None and start.estimated_mask is not None:
        mask_img, mask_source = start.estimated_mask, "estimator"
    if mask_img is None:
        log("no mask and no alpha channel: deriving one with GrabCut seeded by the body silhouette")
        mask_img, mask_source = _grabcut(inputs.image, before, log), "grabcut"
    fit = fit_body_to_mask(body, mask_img, inputs.camera, pose0, betas0, transl0, config, progress=progress,
                           guides=start.guides)
    if mask_source == "grabcut":
        # The initial pose may be far off; the fitted body is a much better GrabCut seed.
        log("refining the GrabCut mask with the fitted body, then the fit")
        mask_img = _grabcut(inputs.image, body_silhouette(body, fit.pose, fit.betas, fit.transl, inputs.camera), log)
        refine = dataclasses.replace(config, stages=config.stages[-1:])
        refined = fit_body_to_mask(body, mask_img, inputs.camera, fit.pose, fit.betas, fit.transl, refine,
                                   guides=start.guides)
        fit = dataclasses.replace(refined, iou_before=silhouette_iou(body, pose0, betas0, transl0, mask_img, inputs.camera),
                                  history=fit.history + refined.history)
    if mask_source in ("grabcut", "estimator"):
        # the mask as saved is the mask used from here on: a resumed fit reads back exactly it
        mask8 = (np.clip(mask_img, 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(mask8).save(out_dir / "mask.png")
        mask_img = mask8.astype(np.float32) / 255.0
    after = body_silhouette(body, fit.pose, fit.betas, fit.transl, inputs.camera)

    write_overlay(out_dir / "overlay.png", inputs.image, mask_img, before, after)
    fitted = BodyParams(pose=wrap_angles(fit.pose), betas=fit.betas, transl=fit.transl,
                        source_model=body.name, notes=[])
    write_params_json(out_dir / "fitted_params.json", fitted, inputs.camera)
    report = {"body_model": body.identity, "shape_names": body.shape_names, "preset": preset,
              "mask_source": mask_source, "start": start.source, "lens": inputs.lens_source,
              "landmark_guides": start.guides is not None,
              "silhouette_iou_before": fit.iou_before, "silhouette_iou_after": fit.iou_after}
    (out_dir / "fit_report.json").write_text(json.dumps(report, indent=2))
    log(f"silhouette IoU before {fit.iou_before:.3f} -> after {fit.iou_after:.3f}")
    log(f"wrote {out_dir / 'overlay.png'}, {out_dir / 'fitted_params.json'}, {out_dir / 'fit_report.json'}")
    return BodyFitJobResult(fit, np.asarray(pose0), betas0, np.asarray(transl0), mask_source, out_dir,
                            inputs, mask_img, body)
