"""Synthetic benchmark subjects: dressed open-body people rendered by Blender Cycles.

Each subject is drawn from a seed: a phenotype (the open body's 6 shape values), a relaxed
standing pose turned a little away from the camera, and garments that differ front and back
(shirt with a checker print on the chest only, stripes across the back, trousers or shorts,
shoes, skin, hair over the top and back of the head). Views: the input photo (yaw 0), 9
held-out views turned about the body's own vertical axis (30..330 degrees, the exact back
included) and 3 novel poses seen from the input camera and from behind.

Two sets of the same people: v1 dresses them in colours on the body's own surface; v2 adds
clothing off that surface (a loose top, a hair volume, a skirt for some: backend/quality/garments.py),
which the body model cannot explain and projection onto it cannot copy.

Written per subject into a folder (docs/benchmark.md lists the files): the ELICIT input folder
(photo on a textured background, mask, rough body parameters as a pose estimator would give),
every view's RGBA render and mask with its true body parameters and camera in our JSON format and in
the ELICIT format (the body expressed in that camera's frame), and subject.json (everything).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from backend.avatar.photo_colours import vertex_normals
from backend.avatar.skinning import skin_points
from backend.body.body_model import BodyModel
from backend.inputs import BodyParams, write_params_json
from backend.jobs.demo import novel_poses
from backend.jobs.sample_subject import DISTANCE, FOCAL, frame_body, rough_estimate, subject_pose, textured_background
from backend.quality.garments import Garments, body_offsets, pose_offsets, skirt_mesh
from shared.camera import PinholeCamera
from shared.orbit import body_up, orbit_from_camera, view_bin
from shared.smpl import JOINT_INDEX, PART_INDEX

GENERATOR_VERSION = 1
SETS = ("v1", "v2")   # v2: the same people in clothing off the body surface
HELD_OUT_YAWS = (30, 60, 90, 135, 180, 225, 270, 300, 330)  # degrees from the input view
NOVEL_POSE_YAWS = {"front": 0, "back": 180}
LIGHT = np.array([-0.3, -0.5, -1.0]) / np.linalg.norm([-0.3, -0.5, -1.0])  # towards the light, camera frame

# Named colours (sRGB, 0..1) so that each subject has a text description for the CLIP prompt.
COLOURS = {
    "red": (0.78, 0.12, 0.12), "navy blue": (0.10, 0.14, 0.38), "white": (0.92, 0.92, 0.90),
    "black": (0.08, 0.08, 0.09), "green": (0.15, 0.55, 0.25), "yellow": (0.95, 0.80, 0.15),
    "grey": (0.50, 0.50, 0.52), "orange": (0.92, 0.48, 0.12), "purple": (0.45, 0.20, 0.55),
    "teal": (0.10, 0.50, 0.50), "beige": (0.80, 0.70, 0.55), "brown": (0.40, 0.25, 0.14),
    "light blue": (0.50, 0.70, 0.90), "pink": (0.90, 0.55, 0.65),
}
SKIN = ((0.95, 0.78, 0.66), (0.86, 0.65, 0.50), (0.62, 0.42, 0.30), (0.40, 0.26, 0.18))
HAIR = {"black": (0.05, 0.04, 0.04), "brown": (0.30, 0.18, 0.10), "blond": (0.85, 0.70, 0.40),
        "red": (0.55, 0.20, 0.08), "grey": (0.62, 0.62, 0.62)}
TOPS = ("red", "navy blue", "white", "green", "yellow", "grey", "orange", "purple", "teal", "pink")
BOTTOMS = ("navy blue", "black", "grey", "beige", "brown", "light blue")
SHOES = ("black", "white", "brown", "grey")


@dataclasses.dataclass(frozen=True)
class Look:
    top: str
    bottom: str
    shoes: str
    hair: str
    skin: tuple
    long_sleeves: bool
    long_trousers: bool
    long_hair: bool
    print_colours: tuple    # two colour names of the chest checker
    stripe_colours: tuple   # two colour names of the back stripes
    print_scale: float      # checker cells per metre (x2)
    stripe_scale: float

    def prompt(self, garments: "Garments | None" = None) -> str:
        """What a user would type: the garments as seen from the front and the back."""
        sleeves = "long-sleeved" if self.long_sleeves else "short-sleeved"
        legs = "trousers" if self.long_trousers else "shorts"
        if garments is not None and garments.skirt:
            legs = "skirt"
        if garments is not None:
            sleeves = f"loose {sleeves}"
        hair = f"long {self.hair} hair" if self.long_hair else f"short {self.hair} hair"
        return (f"a person in a {sleeves} {self.top} shirt with a {self.print_colours[0]} and "
                f"{self.print_colours[1]} checked print on the chest and {self.stripe_colours[0]} and "
                f"{self.stripe_colours[1]} stripes on the back, {self.bottom} {legs}, {self.shoes} shoes, "
                f"{hair}")


@dataclasses.dataclass
class SubjectSpec:
    name: str
    seed: int
    betas: np.ndarray        # (6,) open body phenotype
    pose: np.ndarray         # (72,) the photo's pose (ELICIT camera frame: identity camera)
    transl: np.ndarray       # (3,)
    rough_pose: np.ndarray   # what a pose estimator would give
    rough_transl: np.ndarray
    look: Look
    garments: Garments | None = None   # v2: clothing off the body surface


@dataclasses.dataclass(frozen=True)
class View:
    name: str
    pose_name: str   # "input" or one of jobs.demo.novel_poses
    yaw: float       # degrees about the body's axis from the input camera
    bin: str         # input / front / left / right / back / novel pose
    camera: PinholeCamera


def _turned(pose: np.ndarray, yaw_deg: float) -> np.ndarray:
    """The pose with its global orientation turned about the camera's vertical axis."""
    g = cv2.Rodrigues(np.asarray(pose[:3], np.float64))[0]
    turn = cv2.Rodrigues(np.array([0.0, np.radians(yaw_deg), 0.0]))[0]
    out = pose.copy()
    out[:3] = cv2.Rodrigues(turn @ g)[0].ravel()
    return out


def make_subject(body: BodyModel, index: int, seed: int = 0, subject_set: str = "v1") -> SubjectSpec:
    """Subject `index` of a seed: v2's is v1's person (body, pose, colours) with v2's garments."""
    if subject_set not in SETS:
        raise ValueError(f"unknown subject set {subject_set!r}; choose one of {', '.join(SETS)}")
    rng = np.random.default_rng([seed, index])
    betas = np.zeros(body.num_betas)
    betas[:] = rng.uniform(-1.0, 1.0, body.num_betas)
    betas[0] = 1.0 if index % 2 == 0 else -1.0        # alternate the two ends of the gender axis
    pose = subject_pose()
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_hip", "right_hip",
                 "left_knee", "right_knee", "spine1", "neck", "head"):
        j = JOINT_INDEX[name]
        pose[3 * j: 3 * j + 3] += rng.uniform(-0.15, 0.15, 3)
    pose = _turned(pose, rng.uniform(-20.0, 20.0))
    transl = frame_body(body, pose, betas, DISTANCE)
    top = str(rng.choice(TOPS))
    others = [c for c in COLOURS if c != top]
    look = Look(top=top, bottom=str(rng.choice(BOTTOMS)), shoes=str(rng.choice(SHOES)),
                hair=str(rng.choice(list(HAIR))), skin=SKIN[int(rng.integers(len(SKIN)))],
                long_sleeves=bool(rng.random() < 0.5), long_trousers=bool(rng.random() < 0.6),
                long_hair=bool(rng.random() < 0.4),
                print_colours=tuple(str(c) for c in rng.choice(others, 2, replace=False)),
                stripe_colours=tuple(str(c) for c in rng.choice(others, 2, replace=False)),
                print_scale=float(rng.uniform(10.0, 18.0)), stripe_scale=float(rng.uniform(5.0, 9.0)))
    rough_pose = rough_estimate(pose, rng, spread=0.25)
    rough_transl = transl + rng.uniform(-0.04, 0.04, 3)
    garments = Garments.draw(np.random.default_rng([seed, index, 2]), look.long_hair) if subject_set == "v2" else None
    return SubjectSpec(f"subject_{index:02d}", seed, betas, pose, transl, rough_pose, rough_transl, look, garments)


def subject_views(body: BodyModel, spec: SubjectSpec, size: int) -> list[View]:
    camera = PinholeCamera.from_focal(FOCAL * size / 512.0, size, size)
    with torch.no_grad():
        v = body(spec.pose, spec.betas, spec.transl).vertices[0].numpy()
    centre, up = (v.min(0) + v.max(0)) / 2.0, body_up(spec.pose[:3])
    views = [View("input", "input", 0.0, "input", camera)]
    views += [View(f"yaw_{y:03d}", "input", float(y), view_bin(y), orbit_from_camera(camera, centre, up, y))
              for y in HELD_OUT_YAWS]
    for pose_name in novel_poses(spec.pose):
        for side, y in NOVEL_POSE_YAWS.items():
            views.append(View(f"{pose_name}_{side}", pose_name, float(y), "novel pose",
                              orbit_from_camera(camera, centre, up, y)))
    return views


def subject_poses(spec: SubjectSpec) -> dict[str, np.ndarray]:
    return {"input": spec.pose, **novel_poses(spec.pose)}


# ---------------------------------------------------------------------------- appearance

def _linear(srgb) -> np.ndarray:
    c = np.asarray(srgb, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _regions(body: BodyModel, betas, look: Look) -> dict:
    """The rest body and where each garment sits on it (per-vertex bool masks)."""
    with torch.no_grad():
        rest, joints = body.rest(np.asarray(betas))
    rest = rest[0].numpy()
    x, y, z = rest.T
    J = joints[0].numpy()
    jy = {n: J[JOINT_INDEX[n], 1] for n in ("pelvis", "spine1", "spine3", "neck", "head", "left_knee", "left_ankle")}
    part = body.part_labels.numpy()
    in_parts = lambda *names: np.isin(part, [PART_INDEX[n] for n in names])  # noqa: E731
    # arms: sleeves reach the wrist or half way to the elbow (rest pose: arms along x)
    shoulder, elbow, wrist = abs(J[JOINT_INDEX["left_shoulder"], 0]), abs(J[JOINT_INDEX["left_elbow"], 0]), \
        abs(J[JOINT_INDEX["left_wrist"], 0])
    sleeve_end = wrist - 0.01 if look.long_sleeves else shoulder + 0.5 * (elbow - shoulder)
    arms = in_parts("left_arm", "right_arm", "left_hand_forearm", "right_hand_forearm")
    # trousers from the waist (between pelvis and spine1) down to the ankle or above the knee
    waist = 0.5 * (jy["pelvis"] + jy["spine1"]) + 0.03
    hem = jy["left_ankle"] + 0.06 if look.long_trousers else jy["left_knee"] + 0.08
    legs = in_parts("left_upper_leg", "right_upper_leg", "left_leg_foot", "right_leg_foot")
    trousers = (legs | in_parts("body")) & (y < waist) & (y > hem)
    # hair: the top and back of the head; long hair also covers the back of the neck
    head_z = J[JOINT_INDEX["head"], 2]
    hair = in_parts("head") & ((y > jy["head"] + 0.08) | ((z < head_z - 0.01) & (y > jy["head"] - 0.01)))
    if look.long_hair:
        hair |= in_parts("head", "neck", "body") & (z < head_z - 0.03) & (y > jy["neck"] - 0.12) & (np.abs(x) < 0.12)
    torso = in_parts("body") & ~trousers
    torso_z = J[JOINT_INDEX["spine3"], 2]
    return {
        "rest": rest, "weights": body.weights.detach().cpu().numpy(), "waist": waist, "knee": jy["left_knee"],
        "sleeves": arms & (np.abs(x) <= sleeve_end), "bare_arms": arms & (np.abs(x) > sleeve_end),
        "head_neck": in_parts("head", "neck"), "legs": legs, "trousers": trousers, "hair": hair, "torso": torso,
        "bare_legs": legs & (y <= hem), "shoes": legs & (y < jy["left_ankle"] + 0.04),
        "hips": (legs | in_parts("body")) & (y < waist + 0.02),
        "front": torso & (z > torso_z + 0.03) & (y > jy["spine1"] + 0.02) & (y < jy["neck"] - 0.08)
        & (np.abs(x) < 0.12),
        "back": torso & ~hair & (z < torso_z - 0.01) & (y > waist + 0.02) & (y < jy["neck"] - 0.03)
        & (np.abs(x) < 0.17),
    }


def appearance(body: BodyModel, betas, look: Look, garments: Garments | None = None) -> dict[str, np.ndarray]:
    """Per-vertex attributes in the rest pose: rest position, albedo (linear RGB) and the two
    print regions (1 inside). Under a skirt (v2) the legs are bare."""
    r = _regions(body, betas, look)
    skin = _linear(look.skin)
    albedo = np.tile(_linear(COLOURS[look.top]), (len(r["rest"]), 1))
    albedo[r["bare_arms"] | r["head_neck"]] = skin
    albedo[r["trousers"]] = _linear(COLOURS[look.bottom])
    albedo[r["bare_legs"]] = skin
    if garments is not None and garments.skirt:
        albedo[r["legs"] & r["trousers"]] = skin
    albedo[r["shoes"]] = _linear(COLOURS[look.shoes])
    albedo[r["hair"]] = _linear(HAIR[look.hair])
    return {"rest": r["rest"], "albedo": albedo, "front_print": r["front"].astype(np.float64),
            "back_print": r["back"].astype(np.float64)}


def dressed_meshes(body: BodyModel, spec: SubjectSpec) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """The subject as the Cycles job renders it: vertices per pose (P, N, 3), faces, per-vertex
    attributes and baked shade per pose (P, N). v1: the body; v2: the body with its top and hair
    pushed out, plus the skirt."""
    poses = subject_poses(spec)
    with torch.no_grad():
        outs = [body(p, spec.betas, spec.transl) for p in poses.values()]
    verts = [o.vertices[0].numpy() for o in outs]
    faces = body.faces.numpy()
    attrs = appearance(body, spec.betas, spec.look, spec.garments)
    if spec.garments is None:
        return np.stack(verts), faces, attrs, np.stack([baked_shade(v, faces) for v in verts])
    g = spec.garments
    r = _regions(body, spec.betas, spec.look)
    offsets = body_offsets(r["rest"], faces, g, r["torso"] & ~r["hair"], r["sleeves"], r["hair"])
    transforms = [o.transforms[0].numpy().astype(np.float64) for o in outs]
    verts = [pose_offsets(v, T, r["weights"], offsets) for v, T in zip(verts, transforms)]
    shade = [baked_shade(v, faces) for v in verts]
    if g.skirt:
        sk_v, sk_f, sk_w = skirt_mesh(r["rest"], r["weights"], r["hips"], r["waist"], r["knee"] + 0.04, g)
        n = len(verts[0])
        skirt = [skin_points(sk_v, sk_w, T) for T in transforms]
        shade = [np.concatenate([s, baked_shade(v, sk_f, flip=False)]) for s, v in zip(shade, skirt)]
        verts = [np.concatenate([v, sv]) for v, sv in zip(verts, skirt)]
        faces = np.concatenate([faces, sk_f + n])
        skirt_colour = np.tile(_linear(COLOURS[spec.look.bottom]), (len(sk_v), 1))
        attrs = {"rest": np.concatenate([attrs["rest"], sk_v]),
                 "albedo": np.concatenate([attrs["albedo"], skirt_colour]),
                 "front_print": np.concatenate([attrs["front_print"], np.zeros(len(sk_v))]),
                 "back_print": np.concatenate([attrs["back_print"], np.zeros(len(sk_v))])}
    return np.stack(verts), faces, attrs, np.stack(shade)


def baked_shade(vertices: np.ndarray, faces: np.ndarray, flip: bool = True) -> np.ndarray:
    """A diffuse surface under a fixed light from above-left of the camera plus ambient: the
    same from every view (wrapped Lambert, so the back is dim but not flat). flip=False for an
    open surface (the skirt) whose faces already wind outwards."""
    n = vertex_normals(vertices, faces, orient=flip)
    h = 0.5 + 0.5 * (n @ LIGHT)
    return 0.3 + 0.7 * h * h


def _cycles_look(look: Look) -> dict:
    lin = lambda name: [float(v) for v in _linear(COLOURS[name])]  # noqa: E731
    return {"print_colours": [lin(c) for c in look.print_colours], "print_scale": look.print_scale,
            "stripe_colours": [lin(c) for c in look.stripe_colours], "stripe_scale": look.stripe_scale}


def write_cycles_job(path: Path, body: BodyModel, spec: SubjectSpec, views: list[View], samples: int) -> None:
    names = list(subject_poses(spec))
    verts, faces, attrs, shade = dressed_meshes(body, spec)
    meta = {"views": [v.name for v in views], "width": views[0].camera.width, "height": views[0].camera.height,
            "samples": samples, "look": _cycles_look(spec.look)}
    np.savez(path, meta=json.dumps(meta), faces=faces, vertices=verts, shade=shade,
             K=np.stack([v.camera.K for v in views]), R=np.stack([v.camera.R for v in views]),
             t=np.stack([v.camera.t for v in views]), pose_index=np.array([names.index(v.pose_name) for v in views]),
             **attrs)


def render_with_cycles(job: Path, out_dir: Path, log=print) -> None:
    """Run the Cycles renderer in its own process (Blender's state and threads stay out of ours)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "backend.quality.cycles_render", str(job), str(out_dir)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        if "No module named 'bpy'" in tail:
            raise RuntimeError("the quality benchmark renders its ground truth with Blender's Cycles: "
                               "install the bpy module (pip install bpy==5.0.1, as in requirements.lock)")
        raise RuntimeError(f"Cycles rendering failed:\n{tail}")


# ---------------------------------------------------------------------------- formats

def elicit_params_in_camera(body: BodyModel, pose, betas, transl, camera: PinholeCamera) -> dict:
    """ELICIT's format has an identity camera: express the body in `camera`'s frame. SMPL turns
    the body about its root joint j0, so x_cam = R (G (X - j0) + j0 + T) + t becomes
    (R G)(X - j0) + j0 + T' with T' = R (j0 + T) + t - j0."""
    with torch.no_grad():
        j0 = body.rest(np.asarray(betas))[1][0, 0].numpy()
    G = cv2.Rodrigues(np.asarray(pose[:3], np.float64))[0]
    cam_pose = np.asarray(pose, np.float64).copy()
    cam_pose[:3] = cv2.Rodrigues(camera.R @ G)[0].ravel()
    cam_t = camera.R @ (j0 + np.asarray(transl)) + camera.t - j0
    return {"pose": cam_pose[None], "shape": np.asarray(betas, np.float64)[None], "global_t": cam_t[None],
            "focal_l": np.float64(camera.K[0, 0])}


def write_masks(folder: Path) -> None:
    """masks/<view>.png: each render's alpha >= 0.5 (the person), as 0/255."""
    out = Path(folder) / "masks"
    out.mkdir(exist_ok=True)
    for render in sorted((Path(folder) / "renders").glob("*.png")):
        alpha = np.asarray(Image.open(render))[..., 3]
        Image.fromarray(((alpha >= 128) * 255).astype(np.uint8)).save(out / render.name)


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)


def write_subject(body: BodyModel, spec: SubjectSpec, folder: Path, size: int = 512, samples: int = 32,
                  log=print) -> Path:
    """Render and write one subject; subject.json is written last and marks a complete folder."""
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=spec.name + "-", dir=folder.parent))
    try:
        views = subject_views(body, spec, size)
        job = tmp / "cycles_job.npz"
        write_cycles_job(job, body, spec, views, samples)
        renders = tmp / "renders"
        render_with_cycles(job, renders, log)
        job.unlink()
        write_masks(tmp)
        poses = subject_poses(spec)
        truth = tmp / "truth"
        truth.mkdir()
        for v in views:
            pose = poses[v.pose_name]
            write_params_json(truth / f"{v.name}.json",
                              BodyParams(pose, spec.betas, spec.transl, body.name), v.camera)
            np.savez(truth / f"{v.name}.npz", **elicit_params_in_camera(body, pose, spec.betas, spec.transl, v.camera))
        # the photo: the input render over a textured background, with its mask and rough parameters
        rgba = np.asarray(Image.open(renders / "input.png"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3:]
        bg = textured_background(size, np.random.default_rng([spec.seed, 7]))
        inp = tmp / "input"
        inp.mkdir()
        _save_rgb(inp / "gt_image.png", rgba[..., :3] * alpha + bg * (1 - alpha))
        shutil.copyfile(tmp / "masks" / "input.png", inp / "gt_mask.png")
        np.savez(inp / "gt_params.npz", pose=spec.rough_pose[None], shape=np.zeros((1, 10)),
                 global_t=spec.rough_transl[None], focal_l=np.float64(views[0].camera.K[0, 0]))
        write_params_json(inp / "params.json", BodyParams(spec.rough_pose, np.zeros(body.num_betas),
                                                           spec.rough_transl, body.name), views[0].camera)
        manifest = {
            "format": "avatar-benchmark-subject", "generator_version": GENERATOR_VERSION, "name": spec.name,
            "seed": spec.seed, "size": size, "samples": samples, "body_model": body.identity,
            "betas": dict(zip(body.shape_names, map(float, spec.betas))),
            "pose": spec.pose.tolist(), "transl": spec.transl.tolist(),
            "rough_pose": spec.rough_pose.tolist(), "rough_transl": spec.rough_transl.tolist(),
            "look": dataclasses.asdict(spec.look), "prompt": spec.look.prompt(spec.garments),
            "set": "v2" if spec.garments is not None else "v1",
            "garments": dataclasses.asdict(spec.garments) if spec.garments is not None else None,
            "poses": {k: np.asarray(p).tolist() for k, p in poses.items()},
            "views": [{"name": v.name, "pose": v.pose_name, "yaw": v.yaw, "bin": v.bin, "camera": v.camera.to_dict()}
                      for v in views],
        }
        (tmp / "subject.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def subjects_root(cache: Path | None, seed: int, size: int, samples: int, subject_set: str = "v1") -> Path:
    cache = Path(cache) if cache else Path(os.environ.get("AVATAR_CACHE_DIR", Path.home() / ".cache/one-shot-avatar"))
    # v1 keeps its original folder name, so subjects rendered before v2 existed are reused
    kind = f"v{GENERATOR_VERSION}" if subject_set == "v1" else f"{subject_set}-g{GENERATOR_VERSION}"
    return cache / "benchmark" / f"subjects-{kind}-{size}px-{samples}spp-seed{seed}"


def ensure_subjects(body: BodyModel, count: int, seed: int = 0, size: int = 512, samples: int = 32,
                    cache: Path | None = None, log=print, subject_set: str = "v1") -> list[Path]:
    """The first `count` subjects of this seed, rendered on first use into the cache."""
    root = subjects_root(cache, seed, size, samples, subject_set)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(count):
        spec = make_subject(body, i, seed, subject_set)
        folder = root / spec.name
        done = folder / "subject.json"
        if not (done.is_file() and json.loads(done.read_text()).get("body_model") == body.identity):
            log(f"rendering {spec.name} with Cycles ({size}x{size}, {samples} samples) into {folder}")
            write_subject(body, spec, folder, size, samples, log)
        elif not (folder / "masks").is_dir():   # folders rendered before masks were written
            write_masks(folder)
        folders.append(folder)
    return folders


# ---------------------------------------------------------------------------- reading back

@dataclasses.dataclass
class Subject:
    folder: Path
    manifest: dict

    @classmethod
    def load(cls, folder) -> "Subject":
        folder = Path(folder)
        return cls(folder, json.loads((folder / "subject.json").read_text()))

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def betas(self) -> np.ndarray:
        return np.array(list(self.manifest["betas"].values()))

    def pose(self, name: str = "input") -> np.ndarray:
        return np.array(self.manifest["poses"][name])

    @property
    def transl(self) -> np.ndarray:
        return np.array(self.manifest["transl"])

    @property
    def views(self) -> list[View]:
        return [View(v["name"], v["pose"], v["yaw"], v["bin"], PinholeCamera.from_dict(v["camera"]))
                for v in self.manifest["views"]]

    def ground_truth(self, view: str, scale: float = 1.0, background=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
        """(rgb over `background`, alpha), area-resampled by `scale`."""
        rgba = np.asarray(Image.open(self.folder / "renders" / f"{view}.png"), dtype=np.float32) / 255.0
        a = rgba[..., 3:]
        rgb = rgba[..., :3] * a + np.asarray(background, np.float32) * (1 - a)
        if scale != 1.0:
            h, w = a.shape[:2]
            size = (int(round(w * scale)), int(round(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)[..., None]
        return rgb, a[..., 0]
