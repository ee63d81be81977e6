"""A person mask for a photo that has none: OpenCV GrabCut seeded by the projected body.

The body model's silhouette says roughly where the person is: deep inside it is surely the
person, far outside surely background, and a band around its edge is for GrabCut's colour
models to decide (clothes and hair extend past the naked body).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from backend.errors import InputError

WORK_SIDE = 768          # GrabCut is O(pixels x iterations): run it at most this large
UNRELIABLE_IOU = 0.45    # below this agreement with the (possibly rough) body the mask is unreliable


@dataclasses.dataclass
class MaskResult:
    mask: np.ndarray        # (H, W) float32 in {0, 1}
    iou_with_body: float
    reliable: bool
    warnings: list[str]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _grabcut(rgb8: np.ndarray, seed: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut from a seed of GC_* labels (changed in place) -> (h, w) uint8 {0, 1} foreground."""
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation is random: keep masks reproducible
    cv2.grabCut(cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR), seed, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def grabcut_mask(image: np.ndarray, body_silhouette: np.ndarray, iterations: int = 5) -> MaskResult:
    """image (H, W, 3) float in [0, 1]; body_silhouette (H, W) bool from the initial parameters."""
    H, W = body_silhouette.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"image {image.shape[:2]} and silhouette {(H, W)} differ in size")
    if body_silhouette.sum() < 16:
        raise InputError("cannot derive a person mask: the body parameters place the body outside the "
                         "photo (its silhouette covers < 16 pixels); check the camera and global_t, "
                         "or give a mask image")
    scale = min(1.0, WORK_SIDE / max(H, W))
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    img = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    sil = cv2.resize(body_silhouette.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)

    ys, xs = np.nonzero(sil)
    extent = max(ys.ptp(), xs.ptp()) + 1  # body size in working pixels
    def disk(radius):
        r = max(1, int(round(radius)))
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    # Only the core of the body is surely the person: the initial pose may be well off.
    sure_fg = cv2.erode(sil, disk(0.08 * extent))
    maybe_bg = cv2.dilate(sil, disk(0.20 * extent))
    seed = np.full(sil.shape, cv2.GC_BGD, np.uint8)
    seed[maybe_bg > 0] = cv2.GC_PR_BGD
    seed[sil > 0] = cv2.GC_PR_FGD
    seed[sure_fg > 0] = cv2.GC_FGD

    small = _grabcut(img, seed, iterations)
    # Keep the component(s) touching the sure foreground: drop background specks.
    n, labels = cv2.connectedComponents(small)
    keep = np.unique(labels[(sure_fg > 0) & (small > 0)])
    small = np.isin(labels, keep[keep > 0]).astype(np.uint8)
    mask = cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)

    iou = _iou(mask, body_silhouette)
    warnings = []
    area_ratio = mask.sum() / body_silhouette.sum()
    if iou < UNRELIABLE_IOU:
        warnings.append(f"the GrabCut mask agrees poorly with the body (IoU {iou:.2f} < {UNRELIABLE_IOU}); "
                        "the background may resemble the person, or the body parameters are off: "
                        "give a mask image for a reliable result")
    if not 0.5 <= area_ratio <= 2.5:
        warnings.append(f"the GrabCut mask covers {area_ratio:.1f}x the body's area; check it before fitting")
    return MaskResult(mask.astype(np.float32), iou, not warnings, warnings)


def sharpen_person_mask(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """A segmentation network's soft person mask (H, W) in [0, 1] -> a sharper {0, 1} mask.

    Such masks come from a low-resolution model and are blurry at the outline; GrabCut decides
    a thin band around the outline from the photo's own colours. Measured against true masks of
    the benchmark's 6 subjects and the sample (MediaPipe's mask): IoU 0.967-0.978 -> 0.975-0.999
    (benchmarks/photo_only.py lists the estimate per subject)."""
    H, W = soft.shape
    scale = min(1.0, WORK_SIDE / max(H, W))
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    img = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    person = (cv2.resize(soft.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    if person.sum() < 16:
        return (soft > 0.5).astype(np.float32)
    k = max(3, round(0.01 * max(size))) | 1
    seed = np.full(person.shape, cv2.GC_PR_BGD, np.uint8)
    seed[person > 0] = cv2.GC_PR_FGD
    seed[cv2.erode(person, np.ones((k, k), np.uint8)) > 0] = cv2.GC_FGD
    seed[cv2.dilate(person, np.ones((3 * k, 3 * k), np.uint8)) == 0] = cv2.GC_BGD
    small = _grabcut(img, seed, 5)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST).astype(np.float32)
