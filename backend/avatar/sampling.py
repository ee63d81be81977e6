"""ELICIT's hybrid sampling of novel views: which body part to crop, and from where to look.

Body-part-aware sampling: CLIP compares an input-image crop with a rendered crop, and a whole
body at 224 px leaves the face a few pixels wide, so each iteration draws a part (head most
often) and crops the same part in both images. Rotation-aware sampling: the novel camera's
direction is drawn per part (mostly in front of the head, where the photo tells the most);
for views the photo cannot supervise (the back and sides of the head, the back of the legs)
the CLIP target is the model's own detached render from a supervised view, which avoids a
second face on the back of the head. Each half can be switched off for ablations.

Angles are degrees, yaws relative to the body's facing direction (shared/orbit.py).
Crop boxes are (x0, y0, x1, y1) in pixels, pixel centres at +0.5 (shared/camera.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shared.orbit import BIN_CENTRES, BIN_WIDTH, BINS, view_bin, wrap_yaw
from shared.smpl import PART_INDEX, PART_NAMES

FULL_BODY = "full_body"   # config key for "no part": the whole body is cropped
MAX_SUPERSAMPLE = 4       # crop_resize: at most 4x4 samples per output pixel


# --------------------------------------------------------------------------- body-part sampling

def _default_part_probs() -> dict[str, float]:
    # ELICIT: full body 0.1, head 0.3, torso 0.2, each of the 8 limb segments 0.05, neck never
    probs = {FULL_BODY: 0.1, "head": 0.3, "body": 0.2, "neck": 0.0}
    probs.update({p: 0.05 for p in PART_NAMES if p not in probs})
    return probs


@dataclasses.dataclass(frozen=True)
class PartSamplingConfig:
    enabled: bool = True                         # False: always the full body
    probs: dict[str, float] = dataclasses.field(default_factory=_default_part_probs)  # normalised when drawn
    padding: float = 0.05                        # per side, as a fraction of the box's size
    part_padding: dict[str, float] = dataclasses.field(default_factory=lambda: {"head": 0.5})
    min_part_size: float = 12.0                  # pixels; a smaller (or invisible) part -> full body
    # ELICIT crops a part where it is seen: only vertices no other surface hides count towards
    # its box (tested against a z-buffer this many pixels a side); False: every vertex in front
    # of the camera counts, hidden or not
    occlusion: bool = True
    visibility_size: int = 128

    def __post_init__(self):
        _check_part_keys(self.probs, "probs")
        _check_part_keys(self.part_padding, "part_padding")

    def padding_for(self, part: str | None) -> float:
        return self.part_padding.get(part or FULL_BODY, self.padding)


def _check_part_keys(table: Mapping[str, object], what: str) -> None:
    unknown = set(table) - set(PART_NAMES) - {FULL_BODY}
    if unknown:
        raise ValueError(f"{what}: unknown parts {sorted(unknown)}; known: {FULL_BODY}, {', '.join(PART_NAMES)}")


def draw_part(cfg: PartSamplingConfig, rng: np.random.Generator) -> str | None:
    """A part name from PART_NAMES, or None for the full body."""
    if not cfg.enabled:
        return None
    _check_part_keys(cfg.probs, "probs")
    names = list(cfg.probs)
    p = np.asarray([cfg.probs[n] for n in names], dtype=np.float64)
    if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"part probabilities must be finite, >= 0 and not all 0: {cfg.probs}")
    name = names[rng.choice(len(names), p=p / p.sum())]
    return None if name == FULL_BODY else name


def part_usable(box, valid: bool, min_size: float) -> bool:
    """A part box (x0, y0, x1, y1) can be cropped: valid and at least min_size on both sides."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return bool(valid) and x1 - x0 >= min_size and y1 - y0 >= min_size


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def resolve_part(cfg: PartSamplingConfig, part: str | None, views: Sequence[tuple]) -> str | None:
    """The part to crop in every view, or None (full body) when it is too small or invalid in
    any of them. views: (boxes (NUM_PARTS, 4), valid (NUM_PARTS,)) per view, as from
    backend.render.raster.part_boxes for one image."""
    if part is None or not cfg.enabled:
        return None
    i = PART_INDEX[part]
    for boxes, valid in views:
        if not part_usable(_np(boxes)[i], _np(valid)[i], cfg.min_part_size):
            return None
    return part


def body_box(boxes) -> np.ndarray:
    """The full body's box: the union of the parts' boxes that are not empty, (4,) float.
    All empty -> zeros."""
    b = _np(boxes).astype(np.float64).reshape(-1, 4)
    present = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if not present.any():
        return np.zeros(4)
    b = b[present]
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def crop_box(box_xyxy, padding: float, width: int, height: int, square: bool = True
             ) -> tuple[float, float, float, float]:
    """The crop around a box: each side grown by padding x the box's size, then (square=True)
    widened to a square about the box's centre. It may extend past the image; crop_resize
    fills that part with the background. An empty box gives the whole image."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if not (x1 > x0 and y1 > y0):
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * (1 + 2 * padding), (y1 - y0) * (1 + 2 * padding)
    if square:
        w = h = max(w, h)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int = 224,
                fill: float | Sequence[float] | torch.Tensor = 1.0, antialias: bool = True) -> torch.Tensor:
    """Crop boxes (B, 4) (x0, y0, x1, y1 in pixels, float) out of images (B, C, H, W) and resize
    them to (B, C, size, size), differentiably in the images.

    Output pixel k samples the box at x0 + (k + 0.5) (x1 - x0) / size, bilinearly, with image
    pixel j's centre at j + 0.5 (F.grid_sample, align_corners=False). Outside the image the
    value is `fill` (a float or one per channel: the background the renders use), blended
    smoothly across the image border. antialias: when shrinking, average s x s samples per
    output pixel (s = ceil(crop side / size), at most 4), as roi_align does; an integer
    shrink then equals area averaging."""
    # boxes given as numbers size the supersampling without reading a device tensor back
    host_boxes = None if torch.is_tensor(boxes) else np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = torch.as_tensor(boxes, dtype=images.dtype, device=images.device)
    if images.ndim != 4 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"crop_resize takes images (B, C, H, W) and boxes (B, 4), got "
                         f"{tuple(images.shape)} and {tuple(boxes.shape)}")
    B, C, H, W = images.shape
    s = 1
    if antialias:
        b = host_boxes if host_boxes is not None else boxes.detach().double().cpu().numpy()
        side = float(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).max())
        s = int(min(MAX_SUPERSAMPLE, max(1, math.ceil(side / size - 1e-6))))
    n = size * s
    k = (torch.arange(n, dtype=images.dtype, device=images.device) + 0.5) / n  # (n,) in (0, 1)
    xs = boxes[:, 0:1] + k[None] * (boxes[:, 2:3] - boxes[:, 0:1])           # (B, n) pixels
    ys = boxes[:, 1:2] + k[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    gx = (2 * xs / W - 1)[:, None, :].expand(B, n, n)                         # normalised, centres at +0.5
    gy = (2 * ys / H - 1)[:, :, None].expand(B, n, n)
    grid = torch.stack([gx, gy], -1)
    ones = torch.ones(B, 1, H, W, dtype=images.dtype, device=images.device)
    sampled = F.grid_sample(torch.cat([images, ones], 1), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    if s > 1:
        sampled = F.avg_pool2d(sampled, s)
    colour, coverage = sampled[:, :C], sampled[:, C:]
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1)
    if fill_t.numel() not in (1, C):
        raise ValueError(f"fill must be one value or {C} (one per channel), got {fill_t.numel()}")
    return colour + (1 - coverage) * fill_t.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- rotation sampling

def _uniform_dirs() -> dict[str, float]:
    return {b: 0.25 for b in BINS}


def _default_direction_weights() -> dict[str, dict[str, float]]:
    # ELICIT gives the head's; for the torso, limbs and full body every side is equally
    # informative to CLIP (ours: uniform)
    return {"head": {"front": 0.7, "back": 0.2, "left": 0.05, "right": 0.05}}


# (part, bin) pairs whose CLIP target is the model's own render from a supervised view: the
# back and sides of the head, the backs of the legs (a tuple, so a config file can hold it)
DEFAULT_SELF_TARGETS = tuple(sorted(
    {("head", "back"), ("head", "left"), ("head", "right")}
    | {(leg, "back") for leg in ("left_upper_leg", "right_upper_leg", "left_leg_foot", "right_leg_foot")}))


@dataclasses.dataclass(frozen=True)
class RotationSamplingConfig:
    enabled: bool = True          # False: yaw uniform in [-180, 180), never a self target
    direction_weights: dict[str, dict[str, float]] = dataclasses.field(default_factory=_default_direction_weights)
    default_weights: dict[str, float] = dataclasses.field(default_factory=_uniform_dirs)  # parts not listed
    self_targets: tuple = DEFAULT_SELF_TARGETS       # (part, bin) pairs; part may be FULL_BODY
    max_pitch: float = 15.0       # degrees, pitch uniform in [-max, max]
    distance_jitter: float = 0.0  # distance scale uniform in [1 - j, 1 + j]

    def __post_init__(self):
        _check_part_keys(self.direction_weights, "direction_weights")
        for part, weights in {**self.direction_weights, "default": self.default_weights}.items():
            if set(weights) - set(BINS):
                raise ValueError(f"direction weights of {part}: unknown bins {sorted(set(weights) - set(BINS))}")
            if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
                raise ValueError(f"direction weights of {part} must be finite, >= 0 and not all 0: {weights}")
        for part, b in self.self_targets:
            if b not in BINS or (part not in PART_INDEX and part != FULL_BODY):
                raise ValueError(f"self target ({part!r}, {b!r}): unknown part or bin")

    def weights_for(self, part: str | None) -> dict[str, float]:
        return self.direction_weights.get(part or FULL_BODY, self.default_weights)


@dataclasses.dataclass(frozen=True)
class NovelView:
    rel_yaw: float                   # degrees, relative to the body's facing direction, in [-180, 180)
    pitch: float                     # degrees, > 0: camera above the centre, looking down
    bin: str                         # view_bin(rel_yaw)
    self_target: bool                # CLIP target: the model's own detached render, not the photo
    target_rel_yaw: float | None     # where that render is taken from (same pitch); None: photo target
    distance_scale: float = 1.0


def _yaw_distance(a: float, b: float) -> float:
    return abs(wrap_yaw(a - b))


def nearest_supervised_yaw(part: str | None, rel_yaw_deg: float, cfg: RotationSamplingConfig) -> float | None:
    """For a self-target view: the centre of the nearest bin the photo supervises for this
    part (front 0, left +90, right -90, back 180). For the head that is the front view, i.e.
    the input view's direction for a frontal photo; for the back of a leg, the nearer side.
    None when every bin is a self target (then there is nothing to copy from)."""
    key = part or FULL_BODY
    allowed = [b for b in BINS if (key, b) not in cfg.self_targets]
    if not allowed:
        return None
    # ties (exactly between two bins) go to the first in BINS order
    best = min(allowed, key=lambda b: _yaw_distance(rel_yaw_deg, BIN_CENTRES[b]))
    return BIN_CENTRES[best]


def sample_novel_view(part: str | None, cfg: RotationSamplingConfig, rng: np.random.Generator) -> NovelView:
    """A novel view for a part (None: full body): a direction bin by the part's weights, a yaw
    uniform inside it, a small random pitch; self target per cfg.self_targets."""
    pitch = float(rng.uniform(-cfg.max_pitch, cfg.max_pitch))
    scale = float(rng.uniform(1 - cfg.distance_jitter, 1 + cfg.distance_jitter)) if cfg.distance_jitter else 1.0
    if not cfg.enabled:
        yaw = wrap_yaw(float(rng.uniform(-180.0, 180.0)))
        return NovelView(yaw, pitch, view_bin(yaw), False, None, scale)
    weights = cfg.weights_for(part)
    names = [b for b in BINS if weights.get(b, 0.0) > 0]
    if not names:
        raise ValueError(f"direction weights of {part or FULL_BODY} are all zero: {weights}")
    p = np.asarray([weights[b] for b in names], dtype=np.float64)
    b = names[rng.choice(len(names), p=p / p.sum())]
    yaw = wrap_yaw(BIN_CENTRES[b] + float(rng.uniform(-BIN_WIDTH / 2, BIN_WIDTH / 2)))
    if view_bin(yaw) != b:  # float rounding at the upper bound of a half-open bin
        yaw = wrap_yaw(BIN_CENTRES[b] - BIN_WIDTH / 2)
    self_target = ((part or FULL_BODY), b) in cfg.self_targets
    target = nearest_supervised_yaw(part, yaw, cfg) if self_target else None
    if self_target and target is None:
        self_target = False
    return NovelView(yaw, pitch, b, self_target, target, scale)
