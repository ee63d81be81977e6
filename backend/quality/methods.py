"""The methods the quality benchmark compares: the full method, its ablations and two baselines.

Each is a change to the fit configuration of the chosen size (or, for the projection baseline,
no avatar at all). Rows that need CLIP are run only where its weights are on the machine;
without them the full method itself runs without its semantic prior, and the report says so.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from backend.avatar.config import AvatarFitConfig, LossWeights, StageBConfig
from backend.errors import AvatarError


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    label: str
    description: str
    kind: str = "avatar"            # "avatar" (fit_avatar), "projection" or "export" (a baked mesh)
    source: str = "full"            # "export": the method whose avatar is baked
    needs_clip: bool = False        # skipped, with the reason, where no CLIP weights exist
    use_prompt: bool = True         # CLIP text guidance with the subject's description
    body: str | None = None         # "true" / "fitted" / "photo" body parameters; None: the run's choice
    default: bool = True            # in a run that names no methods
    change: Callable[[AvatarFitConfig], AvatarFitConfig] = lambda cfg: cfg


def _set(cfg: AvatarFitConfig, section: str, **fields) -> AvatarFitConfig:
    """`cfg` with `fields` changed in one of its sections ("losses", "stage_a", "render", ...)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})


def _losses(cfg: AvatarFitConfig, **weights) -> AvatarFitConfig:
    return _set(cfg, "losses", **weights)


def _photo_colour(cfg: AvatarFitConfig, on: bool) -> AvatarFitConfig:
    return _set(cfg, "stage_a", photo_colour=on)


def _reconstruction_only(cfg: AvatarFitConfig) -> AvatarFitConfig:
    """HumanNeRF on one image: the body model still poses and bounds the field (as HumanNeRF's
    SMPL does), but the field starts blank (no stage A) and only the photo supervises it."""
    stage_b: StageBConfig = dataclasses.replace(cfg.stage_b, input_view_prob=1.0)
    no_priors = LossWeights(clip_image=0.0, clip_text=0.0, silhouette=0.0, outside=0.0, edge=0.0)
    return dataclasses.replace(cfg, stage_a=dataclasses.replace(cfg.stage_a, iterations=0), stage_b=stage_b,
                               losses=dataclasses.replace(no_priors, lpips=cfg.losses.lpips, mse=cfg.losses.mse,
                                                          ssim=cfg.losses.ssim, input_alpha=cfg.losses.input_alpha,
                                                          smoothness=cfg.losses.smoothness),
                               parts=dataclasses.replace(cfg.parts, enabled=False),
                               rotations=dataclasses.replace(cfg.rotations, enabled=False), use_clip=False)


METHODS = (
    Method("full", "Full method", "both priors, part- and rotation-aware sampling, CLIP image + text, stage A "
           "from the photo's colours, a clothing allowance as wide as the photo shows"),
    Method("full_fitted_body", "Full, fitted body (end to end)",
           "the full method on the body fitted to the photo from a rough pose estimate", body="fitted"),
    Method("full_true_body", "Full, true body",
           "the full method on the true body parameters: the avatar's own share of the error", body="true"),
    Method("no_photo_colour", "w/o photo colours", "stage A starts grey, not from the photo's colours on the body",
           change=lambda c: _photo_colour(c, False)),
    Method("clothing_room", "+ room for clothing from the photo", "the marched margin and the novel-view clothing "
           "allowance widened to how far the photo's person reaches past the body", default=False,
           change=lambda c: dataclasses.replace(c, clothing_from_photo=True)),
    Method("clothing_fill", "+ room and stage-A fill for clothing", "and stage A fills what the photo shows beyond "
           "the body (within that reach, in the photo's colour)", default=False,
           change=lambda c: _set(dataclasses.replace(c, clothing_from_photo=True), "stage_a", clothing_fill=True)),
    Method("no_silhouette", "w/o silhouette loss", "the SMPL soft-silhouette loss off (edge and outside losses kept)",
           change=lambda c: _losses(c, silhouette=0.0)),
    Method("no_part_sampling", "w/o part-aware sampling", "novel views always of the whole body",
           change=lambda c: _set(c, "parts", enabled=False)),
    Method("parts_ignore_occlusion", "part crops ignore occlusion", "a part's crop box counts its hidden vertices "
           "too (before issue 14; ELICIT crops where the part is seen)", default=False,
           change=lambda c: _set(c, "parts", occlusion=False)),
    Method("no_rotation_sampling", "w/o rotation-aware sampling", "novel-view directions uniform around the body",
           change=lambda c: _set(c, "rotations", enabled=False)),
    Method("no_clip", "w/o CLIP", "no semantic prior", needs_clip=True,
           change=lambda c: dataclasses.replace(c, use_clip=False)),
    Method("no_clip_text", "w/o CLIP text", "CLIP image loss only, no prompt", needs_clip=True, use_prompt=False),
    Method("recon_only", "Reconstruction-only NeRF", "no priors: no stage A, only the photo's losses",
           change=_reconstruction_only),
    Method("exported_mesh", "Exported mesh (of the full method)",
           "the full method's avatar baked by `backend export` (marching cubes, decimated, UV texture, top-4 "
           "skinning) and rendered by Cycles: emission, no lighting, the same cameras", kind="export"),
    Method("projection", "Body-texture projection", "the photo projected on the body, mirrored to the back",
           kind="projection"),
    Method("projection_fitted_body", "Body-texture projection, fitted body",
           "the photo projected on the body fitted from a rough pose estimate", kind="projection", body="fitted"),
    Method("projection_true_body", "Body-texture projection, true body",
           "the photo projected on the true body", kind="projection", body="true"),
    # the photo alone (issue 11): body, mask and pose from the photo; run when named
    Method("full_photo_body", "Full, body from the photo alone",
           "the full method on the body estimated from the photo alone (landmarks, estimated mask, "
           "guided silhouette fit)", body="photo", default=False),
    Method("projection_photo_body", "Body-texture projection, body from the photo alone",
           "the photo projected on the body estimated from the photo alone", kind="projection", body="photo",
           default=False),
    # the run-to-run noise every other row's difference is judged against
    Method("full_seed1", "Full method, another seed", "the full method with seed 1 for the field's start, stage A's "
           "samples and stage B's draws: how much two fits of the same inputs differ", default=False,
           change=lambda c: _set(_set(c, "stage_a", seed=1), "stage_b", seed=1)),
    # the issue-14 sweep; run when named
    Method("before_issue14", "Before issue 14", "grey stage A, no inside edge, no opacity term",
           default=False, change=lambda c: _photo_colour(_losses(c, holes=0.0, opacity=0.0), False)),
    Method("nearest_bone", "+ nearest-bone skinning behind the surface",
           "samples over 2 cm behind their ray's first surface start inverse skinning from their nearest bone, "
           "not from that surface's weights (issue 14: skinning along a ray)", default=False,
           change=lambda c: _set(c, "render", nearest_bone_behind=0.02)),
    Method("back_plane", "+ a back plane", "the tri-plane's XY plane split at the body's mid-surface (blended over "
           "2 cm): the back no longer starts as a faded copy of the front (issue 14: field)", default=False,
           change=lambda c: _set(c, "field", back_plane=0.02)),
    Method("stage_a_300", "stage A 300 iterations", "stage A fitted for 300 iterations, as before 2026-12-03 "
           "(issue 14: the quick fit started from an under-fitted body)", default=False,
           change=lambda c: _set(c, "stage_a", iterations=300)),
    Method("input_96", "input crops 96 px", "the input view's person crop rendered at 96 px, as before 2026-12-03 "
           "(issue 14: the quick fit saw the photo at a third of the benchmark's resolution)", default=False,
           change=lambda c: _set(c, "stage_b", input_size=96)),
    Method("photo_views", "+ the photo on novel views", "novel views' colours pulled towards the photo's where the "
           "photo sees the body, weighted by how squarely (photo_views.py; issue 14: use the photo where valid)",
           default=False, change=lambda c: _losses(c, photo_views=0.2)),
    Method("photo_views_1", "+ the photo on novel views (1.0)", "the same at weight 1.0", default=False,
           change=lambda c: _losses(c, photo_views=1.0)),
    Method("loose_allowance", "w/o a tight clothing allowance", "novel-view alpha is free within 4 cm of the "
           "body everywhere, as before issue 14's tight allowance (1.0 cm where the photo shows nothing past the "
           "body)", default=False, change=lambda c: _set(c, "stage_b", bare_margin=0.0)),
    Method("bare_margin_015", "tight allowance 1.5 cm", "the allowance where the photo shows nothing past the "
           "body: 1.5 cm (default 1.0)", default=False,
           change=lambda c: _set(c, "stage_b", bare_margin=0.015)),
    Method("bare_margin_025", "tight allowance 2.5 cm", "the same at 2.5 cm", default=False,
           change=lambda c: _set(c, "stage_b", bare_margin=0.025)),
    Method("one_band", "w/o the second band behind faint surfaces",
           "rays are marched in one band around their first body surface only, as before issue 14's second band "
           "(a faint hand then shows the background through the thigh behind it)", default=False,
           change=lambda c: _set(c, "render", behind_samples=0)),
    Method("no_pose_correction", "w/o pose correction", "the learned joint-rotation correction off (HumanNeRF's "
           "pose refinement; issue 14: it drifts on one photo)", default=False,
           change=lambda c: _set(c, "motion", pose_correction=False)),
    Method("pose_correction_free", "pose correction unregularised", "the pose corrector's offset free "
           "(LossWeights.pose_correction = 0), as before 2026-12-03", default=False,
           change=lambda c: _losses(c, pose_correction=0.0)),
    Method("pose_correction_1", "pose correction held harder (1.0)", "the squared pose-corrector offset at the "
           "photo's pose weighted 1.0 (default 0.1)", default=False,
           change=lambda c: _losses(c, pose_correction=1.0)),
    Method("no_skin_consistency", "w/o the skinning round trip", "no round trip: every sample keeps the "
           "canonical point its ray's surface weights give, as before 2026-12-04 (a ghost between spread legs)",
           default=False, change=lambda c: _set(c, "render", skin_consistency=0.0)),
    Method("sweep_photo_colour", "+ photo colours", "stage A from the photo's colours", default=False,
           change=lambda c: _photo_colour(_losses(c, holes=0.0, opacity=0.0), True)),
    Method("sweep_photo_holes", "+ photo colours + inside edge", "and ELICIT's inside edge (0.1)", default=False,
           change=lambda c: _photo_colour(_losses(c, holes=0.1, opacity=0.0), True)),
    Method("sweep_photo_holes_001", "+ photo colours + inside edge 0.01", "and ELICIT's inside edge (0.01)",
           default=False, change=lambda c: _photo_colour(_losses(c, holes=0.01, opacity=0.0), True)),
    Method("sweep_photo_holes_003", "+ photo colours + inside edge 0.03", "and ELICIT's inside edge (0.03)",
           default=False, change=lambda c: _photo_colour(_losses(c, holes=0.03, opacity=0.0), True)),
    Method("sweep_photo_entropy_0005", "+ photo colours + entropy 0.005", "and the opacity entropy (0.005)",
           default=False, change=lambda c: _photo_colour(_losses(c, holes=0.0, opacity=0.005), True)),
    Method("sweep_photo_holes_entropy", "+ photo colours + inside edge + entropy",
           "and the opacity entropy (0.05)", default=False,
           change=lambda c: _photo_colour(_losses(c, holes=0.1, opacity=0.05), True)),
)
BY_NAME = {m.name: m for m in METHODS}


BODY_SOURCES = ("true", "fitted", "photo")


def select(names: list[str] | None, body: str = "true") -> list[Method]:
    """The named methods (default: all but the photo-only rows), without the rows that would
    repeat "full" or "projection" on the run's own body source."""
    if body not in BODY_SOURCES:
        raise AvatarError(f"unknown body source {body!r}; choose from {', '.join(BODY_SOURCES)}")
    unknown = [n for n in names or () if n not in BY_NAME]
    if unknown:
        raise AvatarError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in names] if names else [m for m in METHODS if m.default]
    return [m for m in chosen if m.body is None or m.body != body]


def body_source(method: Method, run_body: str) -> str:
    return method.body or run_body
