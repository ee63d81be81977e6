"""Typed configuration of a fit, with named presets.

`quick`: this 2-core CPU in minutes (small renders, few samples, no LPIPS). `full`: GPU quality,
close to the paper's settings (224-pixel crops, 20k iterations were the paper's; we need fewer
because stage A starts from the body in 3D and the field is a fast tri-plane).
"""
from __future__ import annotations

import dataclasses
import math

from backend.avatar.field import FieldConfig
from backend.avatar.sampling import PartSamplingConfig, RotationSamplingConfig
from backend.avatar.skinning import MotionConfig
from backend.avatar.stage_a import StageAConfig
from backend.render.ray_marching import RenderConfig


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Paper weights (ELICIT) unless marked ours."""
    lpips: float = 1.0
    mse: float = 0.2
    ssim: float = 1.0          # ours: 1 - SSIM replaces LPIPS when its VGG weights are absent
    input_alpha: float = 0.1   # ours: rendered alpha vs. the person mask on the input view
    clip_image: float = 0.1
    clip_text: float = 0.1     # ours: the released code never used text
    silhouette: float = 0.01
    outside: float = 1.0       # ours: alpha beyond the body + clothing allowance on novel views
    edge: float = 0.01
    holes: float = 0.0         # ELICIT's inside-only edge term (losses.hole_loss)
    opacity: float = 0.0       # ours: binary entropy of novel-view alpha near the body (losses.opacity_entropy)
    photo_views: float = 0.0   # ours: novel views' colour vs the photo's where it sees the body (photo_views.py)
    smoothness: float = 1e-3   # ours: tri-plane total variation
    # ours: the squared pose-corrector offset at the photo's pose (rad^2, summed over joints). Free (0),
    # the correction drifted by ~1 degree on a true body over 400 iterations, widening the person off
    # the input view; 0.1 measured best of 0 / 0.1 / 1 / 10 (docs/benchmark.md, "Pose correction held")
    pose_correction: float = 0.1


@dataclasses.dataclass(frozen=True)
class StageBConfig:
    iterations: int = 400
    lr_canonical: float = 5e-3     # tri-planes learn faster than the paper's MLP (5e-4)
    lr_motion: float = 5e-5        # skinning volume, pose correction (paper)
    # both rates decay exponentially to this fraction at the last iteration. 1.0 (constant, before
    # 2026-12-03) let Adam's steps grow as the photo's loss neared zero: past ~350 iterations each run
    # of novel views knocked the input view down by up to 12 dB and the final state was a lottery
    # (docs/benchmark.md, "A decaying learning rate")
    lr_final: float = 0.1
    input_view_prob: float = 0.5   # else a novel view (paper)
    # pixels: the input view's person crop is rendered at this size. 96 (before 2026-12-03) saw the photo
    # at a third of the quick benchmark's resolution: 192 gained 1.4 dB front, 0.75 side, 1.6 on novel
    # poses for ~1.75x the fit time (docs/benchmark.md, "Stage A fitted longer, the photo at a useful
    # resolution")
    input_size: int = 192
    novel_size: int = 64           # pixels: novel-view crops (the CLIP model's own size when used)
    clothing_margin: float = 0.04  # metres past the body surface where novel-view alpha is free
    # ours: the allowance where the photo shows no person past the body (skin-tight clothes); between
    # this and clothing_margin as far as the photo's person reaches past it (clothing.allowance_for).
    # 0: clothing_margin everywhere. A loose allowance let the fit grow fins along the photo's rays at
    # the silhouette, seen from 30 degrees on as a body ~8 % too wide; 1.0 cm measured best of 1.0 / 1.5 / 2.5 / 4
    # (docs/benchmark.md, "A tight clothing allowance")
    bare_margin: float = 0.010
    checkpoint_every: int = 100    # iterations between checkpoints (0: only at the end)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class AvatarFitConfig:
    name: str
    field: FieldConfig = FieldConfig()
    motion: MotionConfig = MotionConfig()
    render: RenderConfig = RenderConfig()
    stage_a: StageAConfig = StageAConfig()
    stage_b: StageBConfig = StageBConfig()
    losses: LossWeights = LossWeights()
    # ELICIT's hybrid sampling of novel views (backend/avatar/sampling.py); `enabled=False`
    # switches each half off for ablations
    parts: PartSamplingConfig = dataclasses.field(default_factory=PartSamplingConfig)
    rotations: RotationSamplingConfig = dataclasses.field(default_factory=RotationSamplingConfig)
    use_clip: bool = True
    # ours: clothing and hair beyond the body as the photo shows them widen the marched margin
    # and the clothing allowance (clothing.py). Off: on the benchmark's v2 subjects it gained
    # nothing and made the avatar more see-through (docs/benchmark.md, "Benchmark v2")
    clothing_from_photo: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AvatarFitConfig":
        """A config read back from a file: every value type-checked, and the ones that size
        tensors range-checked (SIZE_LIMITS), before anything is allocated. ValueError if not."""
        def build(default, value, where):
            if dataclasses.is_dataclass(default):
                if not isinstance(value, dict):
                    raise ValueError(f"config {where}: expected a map")
                names = {f.name for f in dataclasses.fields(default)}
                return dataclasses.replace(default, **{k: build(getattr(default, k), v, f"{where}.{k}")
                                                       for k, v in value.items() if k in names})
            return _checked_value(default, value, where)
        if not isinstance(d, dict) or d.get("name", "quick") not in PRESETS:
            raise ValueError(f"config: unknown preset {d.get('name') if isinstance(d, dict) else d!r}")
        defaults = PRESETS[d.get("name", "quick")]
        cfg = build(defaults, _upgraded(d), "")
        for (section, name), (lo, hi) in SIZE_LIMITS.items():
            value = getattr(getattr(cfg, section), name)
            if not lo <= value <= hi:
                raise ValueError(f"config {section}.{name} = {value} is outside [{lo}, {hi}]")
        return cfg


def _upgraded(d: dict) -> dict:
    """A config from a file written before the sampling settings were config sections
    (two booleans and stage_b.pitch_range) or before the skinning round trip, in today's layout."""
    d = dict(d)
    stage_b = dict(d.get("stage_b") or {}) if isinstance(d.get("stage_b"), dict) else d.get("stage_b")
    for old, section in (("part_sampling", "parts"), ("rotation_sampling", "rotations")):
        if old in d and section not in d:
            d[section] = {"enabled": d.pop(old)}
    if isinstance(stage_b, dict) and "pitch_range" in stage_b:
        pitch = stage_b.pop("pitch_range")
        if isinstance(d.get("rotations"), dict):
            d["rotations"] = {**d["rotations"], "max_pitch": pitch}
        d["stage_b"] = stage_b
    render = d.get("render")
    if isinstance(render, dict) and "skin_consistency" not in render:
        # fitted before the skinning round trip (2026-12-04): rendered as it was fitted, not
        # with the round trip's emptied samples (which would cut an old skirt between the legs)
        d["render"] = {**render, "skin_consistency": 0.0}
    return d


def _checked_value(default, value, where: str):
    if isinstance(default, dict):
        return _checked_table(value, where)
    if isinstance(default, tuple) and not all(isinstance(v, (int, float)) for v in default):
        return _checked_pairs(value, where)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, str):
        ok = isinstance(value, str) and len(value) <= 200
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = False
    if not ok:
        raise ValueError(f"config {where.lstrip('.')}: {value!r:.60} is not a valid {type(default).__name__}")
    return value


MAX_TABLE = 64   # entries in a config table (parts x bins is 48)


def _checked_table(value, where: str, depth: int = 0):
    """A table of finite numbers (or of such tables, one level down) keyed by short names;
    which names are valid is the config class's own check."""
    if not isinstance(value, dict) or len(value) > MAX_TABLE:
        raise ValueError(f"config {where.lstrip('.')}: expected a table of at most {MAX_TABLE} entries")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or len(k) > 64:
            raise ValueError(f"config {where.lstrip('.')}: {k!r:.60} is not a valid name")
        if isinstance(v, dict) and depth == 0:
            out[k] = _checked_table(v, f"{where}.{k}", 1)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
        else:
            raise ValueError(f"config {where.lstrip('.')}.{k}: {v!r:.60} is not a finite number")
    return out


def _checked_pairs(value, where: str) -> tuple:
    """A list of (name, name) pairs, e.g. rotation sampling's self targets."""
    ok = isinstance(value, (list, tuple)) and len(value) <= MAX_TABLE and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(n, str) and len(n) <= 64 for n in p)
        for p in value)
    if not ok:
        raise ValueError(f"config {where.lstrip('.')}: expected a list of at most {MAX_TABLE} (name, name) pairs")
    return tuple(tuple(p) for p in value)


# Values in a config file that size tensors or loops: a file outside these cannot make a
# process allocate or run without bound (the presets sit well inside). lr_final: a fraction
# (a negative one would raise inside the optimiser mid-fit, not on reading the file).
SIZE_LIMITS = {
    ("field", "voxel"): (0.004, 1.0), ("field", "channels"): (1, 64), ("field", "hidden"): (1, 512),
    ("field", "layers"): (0, 8),
    ("motion", "weight_voxel"): (0.01, 1.0), ("motion", "pose_hidden"): (1, 1024),
    ("motion", "nonrigid_hidden"): (1, 1024),
    ("render", "samples"): (1, 512), ("render", "chunk_rays"): (1, 1 << 20), ("render", "box_padding"): (0.0, 1.0),
    ("render", "band_front"): (0.0, 1.0), ("render", "band_back"): (0.0, 1.0), ("render", "margin"): (0.0, 1.0),
    ("render", "behind_samples"): (0, 512), ("render", "behind_front"): (0.0, 1.0),
    ("stage_a", "iterations"): (0, 1_000_000), ("stage_a", "batch"): (1, 1 << 20), ("stage_a", "table"): (1, 10_000_000),
    ("stage_b", "iterations"): (0, 1_000_000), ("stage_b", "input_size"): (8, 2048),
    ("stage_b", "novel_size"): (8, 2048), ("stage_b", "lr_final"): (0.0, 1.0),
}


def quick() -> AvatarFitConfig:
    return AvatarFitConfig(name="quick")


def full() -> AvatarFitConfig:
    return AvatarFitConfig(
        name="full",
        field=FieldConfig(voxel=0.008, channels=24, hidden=64, layers=2),
        render=RenderConfig(samples=64),
        stage_a=StageAConfig(iterations=1500, batch=65536, table=1_000_000),
        stage_b=StageBConfig(iterations=6000, input_size=256, novel_size=224, checkpoint_every=500),
    )


def tiny() -> AvatarFitConfig:
    """For tests: seconds on a CPU."""
    return AvatarFitConfig(
        name="tiny",
        field=FieldConfig(voxel=0.04, channels=8, hidden=32, layers=1),
        render=RenderConfig(samples=12),
        # a 4 cm, 8-channel field cannot hold the photo's colours and the body's shape at once:
        # with them its rendered silhouette IoU after stage A fell from 0.57 to 0.11 (grey here)
        stage_a=StageAConfig(iterations=60, batch=4096, table=30_000, photo_colour=False),
        # bare_margin 0: a 1 cm clothing allowance is a quarter of this field's texel
        # lr_final 1.0: twenty iterations never reach the late oscillation the decay is for, and decayed
        # they leave the tests' exported meshes grey and without forearms (the decay has its own test)
        stage_b=StageBConfig(iterations=20, input_size=40, novel_size=32, checkpoint_every=10, bare_margin=0.0,
                             lr_final=1.0),
    )


PRESETS = {"quick": quick(), "full": full(), "tiny": tiny()}


def preset(name: str) -> AvatarFitConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
