"""The image losses of ELICIT's one-image optimisation, all differentiable torch.

Input view: LPIPS-VGG (1.0) + MSE (0.2). Novel views: CLIP (elsewhere), a silhouette L2 and a
distance-transform-weighted edge loss against the body model's mask (0.01 each).

LPIPS needs two sets of weights: its linear heads ship inside the `lpips` wheel, but the VGG16
ImageNet backbone is normally downloaded by torchvision, which cannot happen here. We build
LPIPS with a random backbone (no download) and load torchvision's `vgg16-397923af.pth` from a
local file (found by pretrained.py). Without that file the optimiser falls back to 1 - SSIM
and says why.

Images are float in [0, 1]: colour (B, 3, H, W), masks and alpha (B, 1, H, W) or (B, H, W).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar.pretrained import LpipsUnavailable, find_vgg16, load_vgg16_backbone, read_vgg16_features

SSIM_C1 = 0.01 ** 2                    # Wang et al.'s constants for a data range of 1
SSIM_C2 = 0.03 ** 2
EDGE_TRUNCATE = 0.2                    # edge distances are capped at this fraction of the image side


# --------------------------------------------------------------------------- helpers

def _as_4d(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, H, W) -> (B, 1, H, W); (B, C, H, W) unchanged."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W) or (B, H, W), got shape {tuple(x.shape)}")
    return x


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


# --------------------------------------------------------------------------- pixel losses

def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error; with a mask (B, 1, H, W) or (B, H, W), the mean over masked pixels
    and all channels (a soft mask weights pixels). 0 when the mask is empty."""
    _same_shape(pred, target, "pred and target")
    err = (pred - target) ** 2
    if mask is None:
        return err.mean()
    err = _as_4d(err, "pred")
    mask = _as_4d(mask, "mask").to(err.dtype)
    if mask.shape[0] != err.shape[0] or mask.shape[2:] != err.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(err.shape)}")
    weight = mask.expand_as(err)
    return (err * weight).sum() / weight.sum().clamp(min=1e-12)


def _gaussian_window(window: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(window, dtype=like.dtype, device=like.device) - (window - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' (no padding: border values stay unbiased)."""
    C = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) with a Gaussian window, for images in [0, 1].

    Local statistics use the window only where it fits inside the image (like the reference
    implementation), so constant images give the closed form exactly. An image smaller than
    the window uses the largest odd window that fits."""
    _same_shape(pred, target, "pred and target")
    pred, target = _as_4d(pred, "pred"), _as_4d(target, "target")
    window = min(window, pred.shape[-1], pred.shape[-2])
    window -= (window + 1) % 2  # odd, so the window has a centre pixel
    g = _gaussian_window(window, sigma, pred)
    mu_x, mu_y = _blur(pred, g), _blur(target, g)
    var_x = _blur(pred * pred, g) - mu_x ** 2
    var_y = _blur(target * target, g) - mu_y ** 2
    cov = _blur(pred * target, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """1 - SSIM: the fallback for LPIPS when the VGG16 weights are unavailable."""
    return 1.0 - ssim(pred, target, **kwargs)


# --------------------------------------------------------------------------- LPIPS-VGG

class LpipsLoss(torch.nn.Module):
    """Frozen LPIPS-VGG: images in [0, 1] (B, 3, H, W) -> scalar mean distance. Gradients flow
    to the inputs only; the network stays in eval mode (its heads contain dropout)."""

    def __init__(self, net: torch.nn.Module, weights_file: Path):
        super().__init__()
        self.net = net
        self.weights_file = weights_file
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "LpipsLoss":
        # a parent module's .train() must not switch on the heads' dropout
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _same_shape(pred, target, "pred and target")
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS takes (B, 3, H, W) images, got {tuple(pred.shape)}")
        return self.net(pred, target, normalize=True).mean()  # normalize: [0, 1] -> [-1, 1]


def load_lpips(weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
               ) -> "LpipsLoss | LpipsUnavailable":
    """LPIPS-VGG with the backbone from a local torchvision VGG16 file (pretrained.find_vgg16).

    A missing file gives an LpipsUnavailable (falsy, with the reason) so the caller can fall
    back to SSIM and say why; a file that is present but unreadable or not VGG16 raises
    AvatarError naming it."""
    path = find_vgg16(weights_path)
    if not path:
        return path
    features = read_vgg16_features(path)  # before building: an unreadable file fails fast
    import lpips  # deferred: pulls in torchvision

    with warnings.catch_warnings():
        # pnet_rand=True: torchvision builds VGG16 with weights=None (no download); it warns
        # that lpips still uses the deprecated `pretrained` argument. The linear heads load
        # from the wheel (lpips/weights/v0.1/vgg.pth).
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    load_vgg16_backbone(model.net, features, path)
    return LpipsLoss(model, path).to(device)


# --------------------------------------------------------------------------- body-mask losses

def silhouette_loss(alpha: torch.Tensor, body_mask: torch.Tensor) -> torch.Tensor:
    """ELICIT's silhouette L2 on novel views: the rendered alpha should cover the body model's
    silhouette, mean of (1 - alpha)^2 over the pixels inside the mask, per image, then over
    the batch (an empty mask contributes 0).

    Only inside: clothes and hair legitimately extend past the naked body, so alpha outside
    the body mask is not penalised here; the edge loss keeps stray outlines near the body."""
    alpha = _as_4d(alpha, "alpha")
    mask = _as_4d(body_mask, "body_mask").to(alpha.dtype)
    _same_shape(alpha, mask, "alpha and body_mask")
    area = mask.sum(dim=(1, 2, 3))
    per_image = (mask * (1.0 - alpha) ** 2).sum(dim=(1, 2, 3)) / area.clamp(min=1.0)
    return per_image.mean()


def outside_loss(alpha: torch.Tensor, body_mask: torch.Tensor, grow_px: int) -> torch.Tensor:
    """Ours, the counterpart of silhouette_loss: mean alpha^2 over the pixels farther than
    `grow_px` from the body's silhouette (the clothing allowance). From one photo, density
    can slide along the photo's rays without changing the photo; seen from the side that
    shows as a body several times too thick, which this term forbids."""
    alpha = _as_4d(alpha, "alpha")
    mask = _as_4d(body_mask, "body_mask").to(alpha.dtype)
    _same_shape(alpha, mask, "alpha and body_mask")
    if grow_px > 0:
        mask = F.max_pool2d(mask, 2 * grow_px + 1, stride=1, padding=grow_px)
    outside = 1.0 - mask
    per_image = (outside * alpha ** 2).sum(dim=(1, 2, 3)) / outside.sum(dim=(1, 2, 3)).clamp(min=1.0)
    return per_image.mean()


def edge_distance_map(body_mask: torch.Tensor | np.ndarray, truncate: float | None = EDGE_TRUNCATE
                      ) -> torch.Tensor:
    """(B, 1, H, W) float: each pixel centre's distance to the body silhouette's outline,
    divided by the image's larger side (resolution independent: crops of any size compare)
    and capped at `truncate` (None: no cap). Pixels either side of the outline are 0.5 px
    from it. A mask with no outline (empty or full) gives zeros: nothing to pull towards.

    The cap keeps far edges from dominating: a long skirt or loose hair far from the naked
    body costs a bounded amount per edge pixel, while floaters still cost the most."""
    t = torch.as_tensor(body_mask)
    m = _as_4d(t.detach(), "body_mask")[:, 0].cpu().numpy() > 0.5
    B, H, W = m.shape
    out = np.zeros((B, H, W), np.float32)
    for b in range(B):
        inside = m[b].astype(np.uint8)
        if inside.all() or not inside.any():
            continue
        d_in = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)        # to nearest outside px
        d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)   # to nearest inside px
        out[b] = np.maximum(d_in, d_out) - 0.5  # the outline lies half a pixel past the last pixel centre
    out /= max(H, W)
    if truncate is not None:
        np.minimum(out, truncate, out=out)
    return torch.from_numpy(out)[:, None].to(t.device)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0  # d/dx per pixel


def edge_strength(alpha: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Sobel gradient magnitude of alpha (B, 1, H, W), smoothed at 0 so it is exactly 0 on flat
    regions with finite gradients: sqrt(g^2 + eps^2) - eps. Borders are replicated, so alpha
    running off the image is no edge. A unit step scores 0.5 on the pixel either side."""
    alpha = _as_4d(alpha, "alpha")
    kx = _SOBEL_X.to(alpha)
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(alpha, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt((g ** 2).sum(1, keepdim=True) + eps ** 2) - eps


def edge_loss(alpha: torch.Tensor, dist_map: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """ELICIT's edge loss: the rendered alpha's edges weighted by their distance from the body
    outline (edge_distance_map), as an edge-strength-weighted mean distance per image, then
    over the batch. Normalising by the total edge strength makes the loss an average distance
    (fractions of the image side), so it cannot be lowered by blurring edges away, only by
    moving them towards the body; an alpha with no edges costs 0."""
    e = edge_strength(alpha)
    d = _as_4d(dist_map, "dist_map").to(e)
    _same_shape(e, d, "alpha and dist_map")
    per_image = (e * d).sum(dim=(1, 2, 3)) / (e.sum(dim=(1, 2, 3)) + eps)
    return per_image.mean()


def inside_distance_px(body_mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, 1, H, W): each pixel's distance in pixels to the nearest pixel outside the body mask
    (0 outside the mask)."""
    t = torch.as_tensor(body_mask)
    m = _as_4d(t.detach(), "body_mask")[:, 0].cpu().numpy() > 0.5
    out = np.zeros(m.shape, np.float32)
    for b in range(m.shape[0]):
        if m[b].any():
            out[b] = cv2.distanceTransform(np.pad(m[b], 1).astype(np.uint8), cv2.DIST_L2,
                                           cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]   # (the image border is outside)
    return torch.from_numpy(out)[:, None].to(t.device)


def hole_loss(alpha: torch.Tensor, body_mask: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """ELICIT's edge term, inside-only: the rendered alpha's dips below its neighbourhood's
    maximum (max-pooled alpha minus alpha), counted inside the body mask and weighted by the
    square root of the distance (pixels) to the body's outline, as a mean over the mask's pixels
    per image, then over the batch. A hole or a see-through patch in the body costs more the
    deeper inside the body it lies; the outline itself (where alpha may fall off) costs little."""
    alpha = _as_4d(alpha, "alpha")
    mask = _as_4d(body_mask, "body_mask").to(alpha.dtype)
    _same_shape(alpha, mask, "alpha and body_mask")
    dip = F.max_pool2d(alpha, kernel, stride=1, padding=kernel // 2) - alpha
    weight = inside_distance_px(mask).to(alpha).sqrt() * mask
    per_image = (dip * weight).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
    return per_image.mean()


def opacity_entropy(alpha: torch.Tensor, region: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Ours: the binary entropy of alpha, mean over `region` (B, 1, H, W; the body and its
    clothing allowance) per image, then over the batch: 0 where alpha is 0 or 1, ln 2 at 0.5.
    It lets a pixel be empty or solid, never see-through; where alpha goes is for the other
    terms to say."""
    alpha = _as_4d(alpha, "alpha")
    region = _as_4d(region, "region").to(alpha.dtype)
    _same_shape(alpha, region, "alpha and region")
    a = alpha.clamp(eps, 1.0 - eps)
    h = -(a * a.log() + (1.0 - a) * (1.0 - a).log())
    return ((h * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp(min=1.0)).mean()
