"""The canonical radiance field: density + colour in the body's rest (T-pose) space.

Encoding: three axis-aligned feature planes (XY, XZ, YZ) over the canonical box, read with
bilinear interpolation and decoded by a small MLP. Why tri-planes: they are plain
`grid_sample` calls (CPU and CUDA, no custom kernels), cost O(resolution^2) memory instead of
a dense grid's O(resolution^3), and a point's features are shared along each axis, which
gives the unseen back of a one-image subject a smooth, coherent starting point that the
CLIP prior then edits. A hash grid would need a compiled extension we cannot build here.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

DENSITY_SCALE = 100.0  # 1/m per unit of softplus output: keeps raw outputs near 1 for opaque bodies


def to_unit_box(points: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor) -> torch.Tensor:
    """Points in metres -> [-1, 1]^3 over the box (grid_sample's and the encodings' range)."""
    return (points - box_min) / (box_max - box_min) * 2.0 - 1.0


def positional_encoding(p: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF's encoding of points in [-1, 1]^3: (p, sin(2^k pi p), cos(2^k pi p)), k < frequencies."""
    freq = (2.0 ** torch.arange(frequencies, device=p.device, dtype=p.dtype)) * torch.pi
    enc = (p[:, :, None] * freq).reshape(p.shape[0], -1)
    return torch.cat([p, enc.sin(), enc.cos()], -1)


@dataclasses.dataclass(frozen=True)
class FieldConfig:
    kind: str = "triplane"    # or "mlp": NeRF-style positional encoding + MLP (the benchmark's baseline)
    voxel: float = 0.015      # metres per plane texel
    channels: int = 16        # features per plane
    hidden: int = 64          # MLP width
    layers: int = 2           # hidden layers
    # metres; > 0: the back of the body reads its own XY plane, blended into the front's over about
    # this depth around the body's mid-surface (0: front and back share one XY plane, so the back
    # starts as a faded copy of the front)
    back_plane: float = 0.0


class TriPlaneField(torch.nn.Module):
    """density (1/m) and linear RGB in [0, 1] at canonical points inside `box`."""

    def __init__(self, box_min, box_max, cfg: FieldConfig = FieldConfig()):
        super().__init__()
        box_min = torch.as_tensor(box_min, dtype=torch.float32)
        box_max = torch.as_tensor(box_max, dtype=torch.float32)
        self.register_buffer("box_min", box_min)
        self.register_buffer("box_max", box_max)
        self.cfg = cfg
        res = [max(8, math.ceil(float(e) / cfg.voxel)) for e in (box_max - box_min)]
        self.resolution = tuple(res)  # texels along x, y, z
        rx, ry, rz = res
        c = cfg.channels
        # plane tensors are (1, C, rows, cols) for grid_sample: rows follow the second axis
        self.plane_xy = torch.nn.Parameter(0.1 * torch.randn(1, c, ry, rx))
        self.plane_xz = torch.nn.Parameter(0.1 * torch.randn(1, c, rz, rx))
        self.plane_yz = torch.nn.Parameter(0.1 * torch.randn(1, c, rz, ry))
        if cfg.back_plane > 0:
            self.plane_xy_back = torch.nn.Parameter(0.1 * torch.randn(1, c, ry, rx))
            # the body's mid-surface depth (z, metres) over the XY plane; set_mid_surface fills it
            self.register_buffer("mid_z", torch.zeros(1, 1, ry, rx))
        layers, width = [], 3 * c
        for _ in range(cfg.layers):
            layers += [torch.nn.Linear(width, cfg.hidden), torch.nn.ReLU(inplace=True)]
            width = cfg.hidden
        layers.append(torch.nn.Linear(width, 4))
        self.mlp = torch.nn.Sequential(*layers)

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical points (N, 3) in metres -> [-1, 1]^3 over the box."""
        return to_unit_box(points, self.box_min, self.box_max)

    def set_mid_surface(self, vertices: torch.Tensor, blur: int = 5) -> None:
        """The body's mid-surface between front and back: at each XY texel the mean depth of the
        rest-pose vertices near it (box-blurred over `blur` texels; the mean of all elsewhere)."""
        if self.cfg.back_plane <= 0:
            return
        rx, ry = self.resolution[0], self.resolution[1]
        p = self.normalise(vertices.to(self.box_min))
        ix = ((p[:, 0] + 1) / 2 * rx).long().clamp(0, rx - 1)
        iy = ((p[:, 1] + 1) / 2 * ry).long().clamp(0, ry - 1)
        z = vertices[:, 2].to(self.box_min)
        total = torch.zeros(ry * rx, device=z.device).index_add_(0, iy * rx + ix, z)
        count = torch.zeros(ry * rx, device=z.device).index_add_(0, iy * rx + ix, torch.ones_like(z))
        grids = torch.stack([total, count]).reshape(1, 2, ry, rx)
        grids = F.avg_pool2d(grids, blur, stride=1, padding=blur // 2, count_include_pad=False)
        mid = torch.where(grids[0, 1] > 0, grids[0, 0] / grids[0, 1].clamp_min(1e-9), z.mean())
        with torch.no_grad():
            self.mid_z.copy_(mid.reshape(1, 1, ry, rx))

    def features(self, points: torch.Tensor) -> torch.Tensor:
        p = self.normalise(points)

        def read(plane, a, b):
            grid = torch.stack([p[:, a], p[:, b]], -1)[None, None]  # (1, 1, N, 2): x=col, y=row
            return F.grid_sample(plane, grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)[0, :, 0].t()
        xy = read(self.plane_xy, 0, 1)
        if self.cfg.back_plane > 0:
            front = torch.sigmoid((points[:, 2:3] - read(self.mid_z, 0, 1)) / self.cfg.back_plane)
            xy = front * xy + (1 - front) * read(self.plane_xy_back, 0, 1)
        return torch.cat([xy, read(self.plane_xz, 0, 2), read(self.plane_yz, 1, 2)], -1)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (N, 3) canonical -> density (N,) in 1/m, rgb (N, 3). Points outside the box
        are empty (density 0): nothing exists outside the canonical volume."""
        if points.shape[0] == 0:
            return points.new_zeros(0), points.new_zeros(0, 3)
        out = self.mlp(self.features(points)).float()
        inside = ((points >= self.box_min) & (points <= self.box_max)).all(-1)
        density = F.softplus(out[:, 0]) * DENSITY_SCALE * inside
        rgb = torch.sigmoid(out[:, 1:])
        return density, rgb

    def smoothness(self) -> torch.Tensor:
        """Total variation of the planes: a mild prior against high-frequency noise in regions
        only the (noisy) CLIP gradient reaches."""
        tv = 0.0
        planes = [self.plane_xy, self.plane_xz, self.plane_yz]
        if self.cfg.back_plane > 0:
            planes.append(self.plane_xy_back)
        for plane in planes:
            tv = tv + (plane[..., 1:, :] - plane[..., :-1, :]).pow(2).mean() \
                + (plane[..., :, 1:] - plane[..., :, :-1]).pow(2).mean()
        return tv


class MLPField(torch.nn.Module):
    """The classic NeRF/HumanNeRF encoding: sin/cos positional encoding + a deeper MLP. Kept as
    the baseline the speed benchmark compares tri-planes against (benchmarks/speed.py)."""

    def __init__(self, box_min, box_max, cfg: FieldConfig = FieldConfig(kind="mlp"), frequencies: int = 8,
                 width: int = 128, depth: int = 4):
        super().__init__()
        self.register_buffer("box_min", torch.as_tensor(box_min, dtype=torch.float32))
        self.register_buffer("box_max", torch.as_tensor(box_max, dtype=torch.float32))
        self.cfg = cfg
        self.resolution = (0, 0, 0)
        self.frequencies = frequencies
        layers, w = [], 3 + 6 * frequencies
        for _ in range(depth):
            layers += [torch.nn.Linear(w, width), torch.nn.ReLU(inplace=True)]
            w = width
        layers.append(torch.nn.Linear(w, 4))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.shape[0] == 0:
            return points.new_zeros(0), points.new_zeros(0, 3)
        enc = positional_encoding(to_unit_box(points, self.box_min, self.box_max), self.frequencies)
        out = self.mlp(enc).float()
        inside = ((points >= self.box_min) & (points <= self.box_max)).all(-1)
        return F.softplus(out[:, 0]) * DENSITY_SCALE * inside, torch.sigmoid(out[:, 1:])

    def smoothness(self) -> torch.Tensor:
        return self.box_min.new_zeros(())


def make_field(box_min, box_max, cfg: FieldConfig) -> torch.nn.Module:
    if cfg.kind == "triplane":
        return TriPlaneField(box_min, box_max, cfg)
    if cfg.kind == "mlp":
        return MLPField(box_min, box_max, cfg)
    raise ValueError(f"unknown field kind {cfg.kind!r}: 'triplane' or 'mlp'")
