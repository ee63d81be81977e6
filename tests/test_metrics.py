"""Image metrics against values computed by hand."""
import math

import numpy as np
import pytest
import torch

from backend.avatar.metrics import boxed_metrics, person_box, psnr, ssim_image


def test_psnr_known_values():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)          # MSE 0.01 -> 20 dB
    b = a.copy()
    b[0, 0, 0] = 1.0                                        # one wrong value out of 192
    assert psnr(a, b) == pytest.approx(10 * math.log10(192))


def test_ssim_known_values():
    a = np.full((16, 16, 3), 0.3)
    assert ssim_image(a, a) == pytest.approx(1.0)
    # two constant images: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    c1 = 0.01 ** 2
    expected = (2 * 0.3 * 0.6 + c1) / (0.3 ** 2 + 0.6 ** 2 + c1)
    assert ssim_image(a, np.full_like(a, 0.6)) == pytest.approx(expected, rel=1e-5)
    noise = np.clip(a + np.random.default_rng(0).normal(0, 0.1, a.shape), 0, 1)
    assert ssim_image(a, noise) < 0.9


def test_metrics_only_see_the_persons_box():
    mask = np.zeros((20, 30))
    mask[5:12, 10:18] = 1
    assert person_box(mask) == (slice(5, 12), slice(10, 18))
    truth = np.zeros((20, 30, 3))
    pred = truth.copy()
    pred[0:3, 0:3] = 1.0                                   # outside the box: does not count
    pred[5:12, 10:18] += 0.1                               # inside: MSE 0.01
    m = boxed_metrics(pred, truth, mask)
    assert m["psnr"] == pytest.approx(20.0) and "lpips" not in m
    with pytest.raises(ValueError, match="empty mask"):
        person_box(np.zeros((4, 4)))


def test_lpips_is_reported_when_available():
    calls = []

    def fake_lpips(p, t):      # a stand-in with LPIPS's call signature: (1, 3, H, W) tensors
        calls.append(p.shape)
        return torch.tensor(0.25)
    mask = np.ones((12, 12))
    m = boxed_metrics(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)), mask, lpips=fake_lpips)
    assert m["lpips"] == 0.25 and calls == [(1, 3, 12, 12)]


def test_semi_transparent_fraction_counts_see_through_pixels_inside_the_silhouette():
    from backend.avatar.metrics import semi_transparent_fraction

    alpha = np.zeros((40, 40), np.float32)
    alpha[5:35, 5:35] = 1.0
    alpha[4, 5:35] = alpha[35, 5:35] = 0.5          # a soft outline is no fault
    assert semi_transparent_fraction(alpha) == 0.0
    alpha[10:20, 10:20] = 0.5                        # a see-through patch
    inside = (32 - 4) * (30 - 4)                     # the silhouette (rows 4-35, columns 5-34) shrunk by 2 px
    assert abs(semi_transparent_fraction(alpha) - 100 / inside) < 1e-6
    assert np.isnan(semi_transparent_fraction(np.zeros((8, 8))))
