"""The built-in default subject: a synthetic person the project generates by itself.

The open body with a non-average shape, in a natural pose, dressed in flat part colours
(shirt, trousers, skin, hair-dark head top) that differ front and back, rendered by our
rasteriser from one view onto a textured background. It is written in ELICIT's
single-image format with deliberately rough parameters (pose off by up to ~0.35 rad per
joint, translation a few cm off, average shape), as a pose estimator would give, so the demo
has something real to fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.body.body_model import BodyModel
from backend.render.raster import camera_tensors, rasterize
from shared.camera import PinholeCamera
from shared.smpl import JOINT_INDEX, PART_INDEX

SIZE = 512
FOCAL = 1200.0    # pixels at 512²: a ~115 mm lens on a full-frame sensor
DISTANCE = 4.8    # metres from the camera: the body fills ~80% of the frame height

# Part colours (RGB 0..1): front / back differ on the torso (a print on the front).
PART_COLOURS = {
    "body": (0.80, 0.15, 0.15), "left_arm": (0.80, 0.15, 0.15), "right_arm": (0.80, 0.15, 0.15),
    "left_hand_forearm": (0.90, 0.72, 0.60), "right_hand_forearm": (0.90, 0.72, 0.60),
    "left_upper_leg": (0.12, 0.18, 0.40), "right_upper_leg": (0.12, 0.18, 0.40),
    "left_leg_foot": (0.12, 0.18, 0.40), "right_leg_foot": (0.12, 0.18, 0.40),
    "head": (0.90, 0.72, 0.60), "neck": (0.90, 0.72, 0.60),
}


def subject_pose() -> np.ndarray:
    """A relaxed standing pose facing the camera (ELICIT camera: identity, +Y down)."""
    pose = np.zeros(72)
    pose[0:3] = [np.pi, 0.0, 0.0]            # SMPL Y-up body -> OpenCV camera (Y down), facing it
    def set_joint(name, xyz):
        pose[3 * JOINT_INDEX[name]: 3 * JOINT_INDEX[name] + 3] = xyz
    set_joint("left_shoulder", (0.0, 0.0, -1.0))   # arms lowered ~57 degrees
    set_joint("right_shoulder", (0.0, 0.0, 1.0))
    set_joint("left_elbow", (0.0, -0.5, 0.0))
    set_joint("right_elbow", (0.0, 0.3, 0.0))
    set_joint("left_hip", (-0.2, 0.0, 0.08))
    set_joint("right_hip", (0.15, 0.0, -0.05))
    set_joint("left_knee", (0.35, 0.0, 0.0))
    set_joint("head", (0.1, 0.2, 0.0))
    return pose


def rough_estimate(pose: np.ndarray, rng: np.random.Generator, spread: float = 0.35) -> np.ndarray:
    """What a monocular pose estimator might return: every limb joint off by up to `spread` rad."""
    noisy = pose.copy()
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_hip",
                 "right_hip", "left_knee", "right_knee", "spine1", "neck"):
        j = JOINT_INDEX[name]
        noisy[3 * j: 3 * j + 3] += rng.uniform(-spread, spread, 3)
    noisy[0:3] += rng.uniform(-0.08, 0.08, 3)
    return noisy


def render_flat(body: BodyModel, pose, betas, transl, camera: PinholeCamera, background: np.ndarray,
                back_colour_scale: float = 0.6, light_from: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Part colours with Lambert shading from a light at `light_from` (world position; default:
    the camera); returns (rgb (H,W,3) float, mask (H,W) float). Held-out views of one subject
    pass the input camera's position so that its shading stays the same from every view."""
    with torch.no_grad():
        verts = body(pose, betas, transl).vertices
        K, R, t = camera_tensors(camera, verts.device, verts.dtype)
        face_index, _, _ = rasterize(verts, body.faces, K, R, t, camera.height, camera.width)
    face_index = face_index[0].numpy()
    v = verts[0].numpy()
    f = body.faces.numpy()
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    centres = v[f].mean(1)
    light = camera.center if light_from is None else np.asarray(light_from, dtype=np.float64)
    to_cam = light - centres
    to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True)
    shade = 0.35 + 0.65 * np.abs((normals * to_cam).sum(1))
    palette = np.array([PART_COLOURS[name] for name in sorted(PART_INDEX, key=PART_INDEX.get)])
    colours = palette[body.face_parts.numpy()]
    # A chest print only on the front of the torso: front-facing torso faces above the waist.
    rest = body.rest(betas)[0][0].numpy()
    rest_centres = rest[f].mean(1)
    torso = body.face_parts.numpy() == PART_INDEX["body"]
    front = rest_centres[:, 2] > 0.05
    stripe = (np.sin(rest_centres[:, 1] * 60.0) > 0.3) & torso & front
    colours[stripe] = (0.95, 0.85, 0.20)
    back = torso & ~front
    colours[back] *= back_colour_scale
    face_rgb = np.clip(colours * shade[:, None], 0, 1)
    covered = face_index >= 0
    rgb = background.copy()
    rgb[covered] = face_rgb[face_index[covered]]
    return rgb.astype(np.float32), covered.astype(np.float32)


def frame_body(body: BodyModel, pose, betas, distance: float) -> np.ndarray:
    """The translation that centres the posed body in an identity camera at `distance` metres."""
    with torch.no_grad():
        v = body(pose, betas, None).vertices[0].numpy()
    centre = (v.min(0) + v.max(0)) / 2.0
    return np.array([-centre[0], -centre[1], distance - centre[2]])


def textured_background(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.55 + 0.2 * xx, 0.62 + 0.1 * yy, 0.58 - 0.1 * xx], -1)
    return np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1)


def camera_exif(focal_px: float, side: int, focal_mm: int = 50) -> Image.Exif:
    """EXIF as a camera writes it (focal length + sensor resolution), saying that the photo was
    taken with a focal length of `focal_px` pixels: the photo-only path reads it back
    (backend.estimate.exif), as it would from a real camera's file."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "One-Shot Avatar", "sample subject renderer"   # Make, Model
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A] = IFDRational(focal_mm, 1)                                    # FocalLength, mm
    ifd[0xA20E] = ifd[0xA20F] = IFDRational(round(focal_px * 1000), focal_mm * 1000)  # pixels per mm
    ifd[0xA210] = 4                                                           # unit: mm
    ifd[0xA002] = ifd[0xA003] = side                                          # PixelX/YDimension
    return exif


def small_subject(body: BodyModel, size: int = 128) -> dict:
    """The sample person on white at `size` px with its true parameters, as a rig would give
    them (photo and mask uint8): for tests and service benchmarks."""
    pose = subject_pose()
    betas = np.zeros(body.num_betas)
    transl = frame_body(body, pose, betas, DISTANCE)
    cam = PinholeCamera.from_focal(FOCAL * size / SIZE, size, size)
    rgb, mask = render_flat(body, pose, betas, transl, cam, np.ones((size, size, 3)))
    return {"photo": (rgb * 255).round().astype(np.uint8), "mask": (mask * 255).astype(np.uint8),
            "pose": pose, "transl": transl, "camera": cam}


def write_sample_subject(body: BodyModel, folder: Path, seed: int = 0) -> Path:
    """Write gt_image.png (with the camera's EXIF), gt_mask.png, gt_params.npz (rough) and
    true_params.npz into folder."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pose = subject_pose()
    betas = np.zeros(body.num_betas)
    betas[: min(4, body.num_betas)] = [0.8, -0.5, 0.6, 0.4][: min(4, body.num_betas)]
    transl = frame_body(body, pose, betas, DISTANCE)
    camera = PinholeCamera.from_focal(FOCAL, SIZE, SIZE)
    rgb, mask = render_flat(body, pose, betas, transl, camera, textured_background(SIZE, rng))
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(folder / "gt_image.png", exif=camera_exif(FOCAL, SIZE))
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "gt_mask.png")
    np.savez(folder / "gt_params.npz", pose=rough_estimate(pose, rng)[None], shape=np.zeros((1, 10)),
             global_t=(transl + rng.uniform(-0.04, 0.04, 3))[None], focal_l=np.float64(FOCAL))
    np.savez(folder / "true_params.npz", pose=pose[None], betas=betas[None], global_t=transl[None],
             focal_l=np.float64(FOCAL), body=np.array(body.identity))
    return folder
