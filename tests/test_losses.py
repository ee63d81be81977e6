"""Image losses of the one-image optimisation: MSE, SSIM, LPIPS loading, silhouette and edge."""
from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.avatar import losses, pretrained
from backend.avatar.config import LossWeights
from backend.avatar.losses import (
    LpipsUnavailable,
    edge_distance_map,
    edge_loss,
    load_lpips,
    mse,
    silhouette_loss,
    ssim,
    ssim_loss,
)
from backend.errors import AvatarError


def _images(seed=0, shape=(2, 3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


# --------------------------------------------------------------------------- MSE, SSIM

def test_mse_plain_masked_and_empty_mask():
    a, b = _images()
    assert torch.allclose(mse(a, b), F.mse_loss(a, b))
    mask = torch.zeros(2, 32, 32)
    mask[:, 4:10, 5:20] = 1
    sel = mask.bool()[:, None].expand_as(a)
    assert torch.allclose(mse(a, b, mask), ((a - b) ** 2)[sel].mean())
    assert torch.allclose(mse(a, b, mask[:, None]), ((a - b) ** 2)[sel].mean())
    assert mse(a, b, torch.zeros(2, 32, 32)).item() == 0.0


def _ssim_reference(x: np.ndarray, y: np.ndarray, window=11, sigma=1.5) -> float:
    """Direct float64 SSIM over every window position that fits (one channel)."""
    r = np.arange(window) - (window - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            px, py = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_known_values():
    a, b = _images(shape=(1, 3, 20, 24))
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    # two constant images: no variance, so SSIM is the luminance term exactly
    mx, my = 0.3, 0.7
    c1 = 0.01 ** 2
    expected = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    got = ssim(torch.full((1, 3, 16, 16), mx, dtype=torch.float64), torch.full((1, 3, 16, 16), my, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # against a direct computation, per channel
    b_similar = (0.7 * a + 0.3 * b).double()
    ref = np.mean([_ssim_reference(a[0, c].double().numpy(), b_similar[0, c].numpy()) for c in range(3)])
    assert ssim(a.double(), b_similar).item() == pytest.approx(ref, rel=1e-9)
    # symmetric, < 1 for noise, and the loss is its complement
    assert ssim(a, b).item() == pytest.approx(ssim(b, a).item(), abs=1e-6)
    assert ssim(a, b).item() < 0.2
    assert ssim_loss(a, b).item() == pytest.approx(1 - ssim(a, b).item(), abs=1e-7)
    # (B, H, W) accepted; images smaller than the window still work
    assert ssim(a[:, 0], a[:, 0]).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(a[..., :6, :6], b[..., :6, :6]).item() < 1.0


def test_ssim_loss_gradient_improves_prediction():
    target, _ = _images(shape=(1, 3, 24, 24))
    pred = torch.full_like(target, 0.5, requires_grad=True)
    loss = ssim_loss(pred, target)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with torch.no_grad():
        assert ssim_loss(pred - 0.5 * pred.grad / pred.grad.abs().max(), target) < loss


# --------------------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def vgg_features(tmp_path_factory):
    """A random torchvision VGG16's feature weights, saved as torchvision's file is keyed
    (features.N.*), once in the legacy (non-zip) format of the real file and once zipped
    with an extra classifier key that must be ignored."""
    import torchvision

    torch.manual_seed(0)
    feats = {f"features.{k}": v.clone() for k, v in torchvision.models.vgg16().features.state_dict().items()}
    d = tmp_path_factory.mktemp("vgg")
    legacy = d / "vgg16-397923af.pth"
    torch.save(feats, legacy, _use_new_zipfile_serialization=False)
    zipped = d / "vgg16_with_classifier.pth"
    torch.save({**feats, "classifier.6.bias": torch.zeros(1000)}, zipped)
    return feats, legacy, zipped


@pytest.fixture(scope="module")
def lpips_model(vgg_features):
    return load_lpips(vgg_features[1])


def test_lpips_missing_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(AvatarError, match="nope.pth.*does not exist"):
        load_lpips(missing)  # named explicitly: an error, not a silent fallback
    # default search: $AVATAR_VGG16_WEIGHTS, then torch hub's checkpoint folder under $TORCH_HOME
    monkeypatch.setenv("AVATAR_VGG16_WEIGHTS", str(missing))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    res = load_lpips()
    assert isinstance(res, LpipsUnavailable) and not res
    assert str(missing) in res.reason and "SSIM" in res.reason
    assert res.searched == (str(missing), str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"))


def test_lpips_weights_found_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.delenv("AVATAR_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert pretrained.vgg16_candidates() == [tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"]
    assert pretrained.vgg16_candidates("~/w.pth") == [Path.home() / "w.pth"]  # an explicit path wins


def test_lpips_broken_files_raise_naming_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(AvatarError, match="junk.pth"):
        load_lpips(junk)
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(AvatarError, match=r"partial\.pth.*missing features\.0\.bias"):
        load_lpips(partial)
    wrong = tmp_path / "wrong.pth"
    torch.save([1, 2, 3], wrong)
    with pytest.raises(AvatarError, match="wrong.pth"):
        load_lpips(wrong)


def test_lpips_loads_backbone_and_heads_without_network(vgg_features, lpips_model, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    feats, _, zipped = vgg_features  # lpips_model: the legacy-format file
    import lpips

    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    for model in (lpips_model, load_lpips(zipped)):
        backbone = dict(model.net.net.named_parameters())
        assert len(backbone) == len(feats) == 26  # 13 convolutions
        for name, p in backbone.items():
            assert torch.equal(p, feats["features." + name.split(".", 1)[1]]), name
            assert not p.requires_grad
        for name, p in model.net.named_parameters():
            if name.startswith("lin"):
                assert torch.equal(p, heads[name]), name
        assert all(not p.requires_grad for p in model.parameters())


def test_lpips_values_and_gradient(lpips_model):
    a, b = _images(shape=(1, 3, 32, 32))
    assert lpips_model(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips_model(a, b).item() > 1e-4
    pred = a.clone().requires_grad_(True)
    lpips_model(pred, b).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # a parent's .train() must not enable the heads' dropout: the value stays deterministic
    lpips_model.train()
    assert not lpips_model.net.training
    assert lpips_model(a, b).item() == pytest.approx(lpips_model(a, b).item(), rel=1e-6)


def test_loss_weights_defaults():
    w = LossWeights()
    assert (w.lpips, w.mse, w.clip_image, w.clip_text, w.silhouette, w.edge, w.ssim) == \
        (1.0, 0.2, 0.1, 0.1, 0.01, 0.01, 1.0)


# --------------------------------------------------------------------------- silhouette, edges

def _disk_mask(h=48, w=48, cx=24.0, cy=24.0, r=12.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r ** 2).float()[None]


def test_silhouette_loss_counts_only_inside_the_body():
    mask = _disk_mask()
    assert silhouette_loss(mask, mask).item() == 0.0
    assert silhouette_loss(torch.ones_like(mask), mask).item() == 0.0  # clothes outside: free
    assert silhouette_loss(torch.zeros_like(mask), mask).item() == pytest.approx(1.0)
    assert silhouette_loss(torch.full_like(mask, 0.5), mask[:, None]).item() == pytest.approx(0.25)
    assert silhouette_loss(torch.zeros_like(mask), torch.zeros_like(mask)).item() == 0.0
    alpha = torch.full_like(mask, 0.3, requires_grad=True)
    silhouette_loss(alpha, mask).backward()
    assert (alpha.grad[mask.bool()] < 0).all() and (alpha.grad[~mask.bool()] == 0).all()


def test_edge_distance_map_values():
    mask = torch.zeros(1, 40, 40)
    mask[:, :, :20] = 1  # outline between columns 19 and 20
    d = edge_distance_map(mask, truncate=None)
    assert d.shape == (1, 1, 40, 40)
    assert d[0, 0, 7, 19].item() == pytest.approx(0.5 / 40)
    assert d[0, 0, 7, 20].item() == pytest.approx(0.5 / 40)
    assert d[0, 0, 7, 26].item() == pytest.approx(6.5 / 40)
    assert d[0, 0, 7, 10].item() == pytest.approx(9.5 / 40)
    assert edge_distance_map(mask, truncate=0.1).max().item() == pytest.approx(0.1)
    assert torch.allclose(edge_distance_map(mask.numpy() > 0, truncate=None), d, atol=1e-6)  # numpy bool too
    assert edge_distance_map(torch.zeros(1, 8, 8)).abs().sum() == 0
    assert edge_distance_map(torch.ones(1, 8, 8)).abs().sum() == 0


def test_edge_loss_prefers_edges_on_the_body_outline():
    mask = _disk_mask()
    dist = edge_distance_map(mask)
    aligned = edge_loss(mask, dist).item()
    shifted = edge_loss(torch.roll(mask, shifts=6, dims=-1), dist).item()
    far = edge_loss(torch.roll(mask, shifts=12, dims=-1), dist).item()
    assert aligned < 1.0 / 48  # edges within a pixel of the outline
    assert aligned < shifted < far
    # an alpha without edges costs nothing; a fainter copy of the same edges costs the same
    assert edge_loss(torch.zeros_like(mask), dist).item() == 0.0
    assert edge_loss(0.5 * torch.roll(mask, 6, -1), dist).item() == pytest.approx(shifted, rel=0.02)


def test_edge_loss_gradient_moves_edges_towards_the_outline():
    mask = _disk_mask()
    dist = edge_distance_map(mask)
    logits = (torch.roll(mask, 3, -1) * 8 - 4).requires_grad_(True)
    loss = edge_loss(torch.sigmoid(logits), dist)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad / logits.grad.abs().max()
        assert edge_loss(torch.sigmoid(stepped), dist) < loss


def test_hole_loss_punishes_holes_inside_the_body_more_the_deeper_they_lie():
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 5:35, 5:35] = 1.0
    solid = mask.clone()
    assert float(losses.hole_loss(solid, mask)) == 0.0              # a solid body: nothing to punish
    deep, shallow = solid.clone(), solid.clone()
    deep[..., 19:21, 19:21] = 0.2                              # a see-through patch in the middle
    shallow[..., 6:8, 19:21] = 0.2                             # the same patch near the outline
    assert float(losses.hole_loss(deep, mask)) > 2.0 * float(losses.hole_loss(shallow, mask)) > 0.0
    outside = solid.clone()
    outside[..., 0:3, 0:3] = 0.5                               # alpha outside the body: not this term's
    assert float(losses.hole_loss(outside, mask)) == 0.0
    deep.requires_grad_(True)
    losses.hole_loss(deep, mask).backward()
    assert float(deep.grad[..., 19, 19]) < 0.0                 # the gradient fills the hole


def test_opacity_entropy_allows_empty_and_solid_but_not_see_through():
    region = torch.ones(1, 1, 8, 8)
    assert float(losses.opacity_entropy(torch.zeros(1, 1, 8, 8), region)) < 2e-3
    assert float(losses.opacity_entropy(torch.ones(1, 1, 8, 8), region)) < 2e-3
    half = losses.opacity_entropy(torch.full((1, 1, 8, 8), 0.5), region)
    assert abs(float(half) - math.log(2.0)) < 1e-5
    a = torch.full((1, 1, 8, 8), 0.7, requires_grad=True)
    losses.opacity_entropy(a, region).backward()
    assert float(a.grad.mean()) < 0.0                          # above 0.5: pushed towards solid
