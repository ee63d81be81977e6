"""Image metrics inside the person's bounding box (the ZJU-MoCap protocol): PSNR, SSIM and,
when its VGG16 weights are on the machine, LPIPS; and how see-through a render is."""
from __future__ import annotations

import math

import numpy as np
import torch

from backend.avatar.losses import ssim


def person_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the mask's bounding box (grown by pad pixels, clipped)."""
    ys, xs = np.nonzero(np.asarray(mask) > 0.5)
    if len(ys) == 0:
        raise ValueError("empty mask: no person to measure")
    h, w = mask.shape[:2]
    return (slice(max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)),
            slice(max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)))


def semi_transparent_fraction(alpha: np.ndarray, low: float = 0.1, high: float = 0.9, erode_px: int = 2
                              ) -> float:
    """The fraction of the rendered silhouette's pixels (alpha > low, shrunk by erode_px so the
    outline's own soft edge does not count) whose alpha is below `high`: a person one can see
    through. 0 for a solid render; nan when nothing is rendered."""
    import cv2

    a = np.asarray(alpha, np.float32)
    inside = (a > low).astype(np.uint8)
    if erode_px > 0:
        inside = cv2.erode(inside, np.ones((2 * erode_px + 1,) * 2, np.uint8))
    n = int(inside.sum())
    return float("nan") if n == 0 else float(((a < high) & (inside > 0)).sum()) / n


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB) of images in [0, 1]."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim_image(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM of (H, W, 3) images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    as_t = lambda a: torch.as_tensor(np.asarray(a, np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    return float(ssim(as_t(pred), as_t(target)))


def boxed_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, lpips=None) -> dict:
    """PSNR and SSIM (and LPIPS when an LpipsLoss is given) inside the person's box of `mask`
    (the ground truth's)."""
    rows, cols = person_box(mask)
    p, t = pred[rows, cols], target[rows, cols]
    out = {"psnr": psnr(p, t), "ssim": ssim_image(p, t)}
    if lpips:
        # run on the LPIPS network's device (a plain callable without parameters runs on the CPU)
        params = getattr(lpips, "parameters", None)
        dev = next(params()).device if params else torch.device("cpu")
        as_t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev).permute(2, 0, 1)[None]  # noqa: E731
        with torch.no_grad():
            out["lpips"] = float(lpips(as_t(p), as_t(t)))
    return out
