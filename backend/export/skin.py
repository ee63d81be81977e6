"""Skinning weights of the exported mesh: the avatar's learned skinning volume read at each rest
vertex, its `influences` largest joints kept and renormalised (glTF and game engines take 4)."""
from __future__ import annotations

import numpy as np
import torch

from backend.avatar.avatar import Avatar


@torch.no_grad()
def vertex_skinning(avatar: Avatar, vertices: np.ndarray, influences: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """joint indices (V, influences) uint8 and weights (V, influences) float32 summing to 1,
    largest first."""
    w = avatar.skin(torch.from_numpy(np.asarray(vertices, np.float32)).to(avatar.device)).float().cpu()
    top, idx = torch.topk(w, influences, dim=1)
    top = top / top.sum(1, keepdim=True).clamp(min=1e-12)
    return idx.numpy().astype(np.uint8), top.numpy().astype(np.float32)
