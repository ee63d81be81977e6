"""The CLIP semantic prior of ELICIT: unseen sides of the person must *mean* what the photo shows.

ELICIT supervises novel views with CLIP: a rendered crop should embed close to the matching
crop of the input photo (loss 1 - cosine similarity). We add a text term: the render should
also embed close to a prompt describing the person ("red hoodie, black jeans").

CLIP is a frozen feature extractor here: no gradient reaches its weights, but gradients flow
through it to the rendered pixels, so the preprocessing (resize, normalise) is torch code
rather than open_clip's PIL transforms.

Its weights are the user's, found and loaded offline by pretrained.py.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F

from backend.avatar.pretrained import ClipSpec, WeightsSource, build_clip


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> "ClipPrior":
    """The frozen CLIP prior from local weights (pretrained.resolve_source); never downloads."""
    model, tokenizer, name, source, quick_gelu = build_clip(spec)
    return ClipPrior(model, tokenizer, spec=spec, name=name, source=source, quick_gelu=quick_gelu).to(device)


# --------------------------------------------------------------------------- the prior

def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, interpolation: str, fill: float) -> torch.Tensor:
    """Differentiable version of open_clip's resize modes: shortest (scale the short side, centre
    crop; OpenAI's), longest (scale the long side, pad), squash (stretch)."""
    H, W = x.shape[-2:]
    th, tw = size
    if (H, W) == (th, tw):
        return x
    kind = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    def interp(t, hw):
        return F.interpolate(t, size=hw, mode=kind, align_corners=False, antialias=True)
    if mode == "squash":
        return interp(x, (th, tw))
    if mode == "longest":
        s = min(th / H, tw / W)
        nh, nw = min(th, max(1, round(H * s))), min(tw, max(1, round(W * s)))
        top, left = (th - nh) // 2, (tw - nw) // 2
        return F.pad(interp(x, (nh, nw)), (left, tw - nw - left, top, th - nh - top), value=fill)
    s = max(th / H, tw / W)
    nh, nw = max(th, round(H * s)), max(tw, round(W * s))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return interp(x, (nh, nw))[..., top:top + th, left:left + tw]


class ClipPrior(torch.nn.Module):
    """Frozen CLIP: images (B, 3, H, W) float in [0, 1] and prompts -> unit embeddings and the
    image/text losses. Gradients reach the images only; the network stays in eval mode."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, spec: ClipSpec, name: str,
                 source: WeightsSource, quick_gelu: bool):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec, self.name, self.source, self.quick_gelu = spec, name, source, quick_gelu
        for p in self.model.parameters():
            p.requires_grad_(False)
        pp = open_clip.get_model_preprocess_cfg(model)
        self.input_size = _pair(model.visual.image_size)
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.interpolation = pp.get("interpolation", "bicubic")
        fill = pp.get("fill_color", 0)  # padding for resize_mode "longest", 0-255 like a PIL colour
        self.fill = float(fill) / 255.0 if isinstance(fill, (int, float)) else 0.0
        self.register_buffer("mean", torch.tensor(pp["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> (D,) float32, never changes in a fit
        self.text_cache_hits = 0
        self.text_cache_misses = 0
        self.eval()

    def train(self, mode: bool = True) -> "ClipPrior":
        # a parent's .train() must not switch CLIP out of eval mode (dropout, patch dropout)
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The model's input side in pixels ((H, W) for a non-square model)."""
        h, w = self.input_size
        return h if h == w else (h, w)

    def describe(self) -> str:
        """For reports, e.g. "ViT-L-14 (openai, /path/open_clip_model.safetensors, QuickGELU)"."""
        if self.source.path is None:
            return f"{self.name} (random weights)"
        origin = f"{self.source.tag}, {self.source.path}" if self.source.tag else str(self.source.path)
        return f"{self.name} ({origin}{', QuickGELU' if self.quick_gelu else ''})"

    def _autocast(self):
        """bf16/fp16 autocast on CUDA as spec.precision says; CPU stays float32."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        precision = self.spec.precision
        if precision == "auto":
            # fp16 gradients to the pixels can underflow without a loss scaler: auto never picks it
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], any size -> the model's normalised input, differentiably."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"CLIP takes float images (B, 3, H, W) in [0, 1], got {tuple(images.shape)} "
                             f"{images.dtype}")
        x = images.to(device=self.device, dtype=torch.float32)
        x = _resize(x, self.input_size, self.resize_mode, self.interpolation, self.fill)
        return (x - self.mean) / self.std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) unit embeddings, differentiable w.r.t. the images."""
        x = self.preprocess(images)
        with self._autocast():
            feats = self.model.encode_image(x)
        return F.normalize(feats.float(), dim=-1)  # normalise in float32 even under autocast

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts -> (N, D) unit embeddings, no grad, cached per prompt string."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("encode_texts needs at least one prompt")
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        self.text_cache_hits += len(prompts) - len(new)
        self.text_cache_misses += len(new)
        if new:
            with torch.no_grad(), self._autocast():
                tokens = self.tokenizer(new).to(self.device)
                feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            self._text_cache.update(zip(new, feats))
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def image_loss(self, rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of 1 - cos(CLIP(rendered), CLIP(target)); the target (photo crop or a
        detached render) gets no gradient. A target batch of 1 is compared with every render."""
        if target.shape[0] not in (1, rendered.shape[0]):
            raise ValueError(f"image_loss: {rendered.shape[0]} renders but {target.shape[0]} targets")
        with torch.no_grad():
            goal = self.encode_images(target.detach())
        return (1.0 - (self.encode_images(rendered) * goal).sum(-1)).mean()

    def text_loss(self, rendered: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """Mean of 1 - cos(CLIP(rendered), CLIP_text(prompt)): one prompt for all renders, or one each."""
        text = self.encode_texts(prompts)
        if text.shape[0] not in (1, rendered.shape[0]):
            raise ValueError(f"text_loss: {rendered.shape[0]} renders but {text.shape[0]} prompts")
        return (1.0 - (self.encode_images(rendered) * text).sum(-1)).mean()
