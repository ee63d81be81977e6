"""The export job: a finished .avatar file -> a rigged, textured mesh (.glb, .fbx or .obj).

Steps (each reported to `progress`): the surface (marching cubes of the canonical field,
decimated), UV charts, the colour texture baked from the field, skinning weights from the
learned skinning volume, the file. The .glb is written by pygltflib; FBX and OBJ are converted
from it by Blender's own exporters (backend/export/convert.py). Files appear atomically: a
failure leaves nothing behind, and an existing file is only replaced when `overwrite` is set.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from backend.avatar.avatar_file import load_avatar
from backend.avatar.photo_colours import vertex_normals
from backend.errors import InputError
from backend.export.gltf import BakedMesh, to_glb
from backend.export.skin import vertex_skinning
from backend.export.surface import SurfaceConfig, extract_surface
from backend.export.texture import TextureConfig, bake_texture, unwrap

FORMATS = ("glb", "fbx", "obj")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    surface: SurfaceConfig = SurfaceConfig()
    texture: TextureConfig = TextureConfig()
    influences: int = 4

    @classmethod
    def preset(cls, name: str, triangles: int | None = None, texture: int | None = None) -> "ExportConfig":
        if name not in EXPORT_PRESETS:
            raise InputError(f"unknown export preset {name!r}: one of {', '.join(EXPORT_PRESETS)}")
        cfg = EXPORT_PRESETS[name]
        if triangles is not None:
            if triangles < 100:
                raise InputError(f"--triangles {triangles}: at least 100")
            cfg = dataclasses.replace(cfg, surface=dataclasses.replace(cfg.surface, triangles=triangles))
        if texture is not None:
            if not 64 <= texture <= 8192:
                raise InputError(f"--texture {texture}: between 64 and 8192 texels")
            cfg = dataclasses.replace(cfg, texture=dataclasses.replace(cfg.texture, size=texture))
        return cfg


EXPORT_PRESETS = {
    "default": ExportConfig(),
    # tests and quick looks: coarse grid, small texture
    "tiny": ExportConfig(SurfaceConfig(voxel=0.02, triangles=8000, opening=0), TextureConfig(size=256, padding=2, samples=8)),
}


@dataclasses.dataclass
class ExportResult:
    files: list[Path]
    triangles: int
    vertices: int
    texture: int
    seconds: dict
    bytes: int


def format_of(out: Path, fmt: str | None) -> str:
    fmt = (fmt or out.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} ({out.name}): one of {', '.join(FORMATS)}")
    if out.suffix.lower() != f".{fmt}":
        raise InputError(f"{out.name}: a {fmt} file must end in .{fmt}")
    return fmt


def bake(avatar, cfg: ExportConfig, progress: Callable[[dict], None] | None = None,
         extras: dict | None = None, photo_view=None) -> tuple[BakedMesh, dict]:
    """The avatar (a loaded model) as a BakedMesh, and seconds per step. photo_view: the
    photo's (camera, pose, transl): the texture takes that view's colours where it sees the
    surface (backend/export/texture.py)."""
    seconds = {}

    def step(name, fn, *args):
        if progress is not None:
            progress({"stage": "export", "step": name})
        start = time.perf_counter()
        value = fn(*args)
        seconds[name] = round(time.perf_counter() - start, 2)
        return value

    verts, faces = step("surface", extract_surface, avatar, cfg.surface)
    normals = vertex_normals(verts.astype(np.float64), faces).astype(np.float32)
    vmap, uv_faces, uvs = step("charts", unwrap, verts, faces, cfg.texture)
    verts, normals = verts[vmap], normals[vmap]
    texture = step("texture", bake_texture, avatar, verts, normals, uv_faces.astype(np.int64), uvs, cfg.texture,
                   photo_view)
    joints, weights = step("skinning", vertex_skinning, avatar, verts, cfg.influences)
    rest_joints = avatar.body.rest(avatar.betas)[1][0].detach().cpu().numpy()
    mesh = BakedMesh(verts, normals, uvs, uv_faces, joints, weights, texture, rest_joints.astype(np.float32),
                     extras or {})
    return mesh, seconds


def _check_writable(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another name or pass --overwrite")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{out}: cannot write there ({exc.strerror or exc})") from None


def run_export(avatar_path, out, fmt: str | None = None, cfg: ExportConfig = ExportConfig(), device="cpu",
               overwrite: bool = False, progress: Callable[[dict], None] | None = None) -> ExportResult:
    out = Path(out)
    fmt = format_of(out, fmt)
    _check_writable(out, overwrite)
    rec = load_avatar(avatar_path, device=device)
    if rec.stage != "done":
        raise InputError(f"{avatar_path}: the fit is not finished (stage {rec.stage}, {rec.iteration} "
                         f"stage-B iterations); run 'fit' again to finish it, then export")
    rec.avatar.eval()
    start = time.perf_counter()
    with torch.no_grad():
        mesh, seconds = bake(rec.avatar, cfg, progress, extras={
            "body": rec.body_spec, "pose": np.asarray(rec.pose, float).round(6).tolist(),
            "transl": np.asarray(rec.transl, float).round(6).tolist(),
            "note": "SMPL skeleton: node rotations are SMPL's local joint rotations; pose and transl "
                    "are the photo's fitted body pose"}, photo_view=(rec.camera, rec.pose, rec.transl))
    data = to_glb(mesh, name=out.stem)
    # everything is written into a private folder beside the target and moved in at the end
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.stem}-export-"))
    try:
        glb = tmp / f"{out.stem}.glb"
        glb.write_bytes(data)
        if fmt == "glb":
            made = [glb]
        else:
            from backend.export.convert import convert

            if progress is not None:
                progress({"stage": "export", "step": fmt})
            made = convert(glb, tmp / out.name)
        files = []
        for path in made:
            target = out.parent / path.name
            if target.exists() and not overwrite:
                raise InputError(f"{target}: already exists; choose another name or pass --overwrite")
        for path in made:
            target = out.parent / path.name
            os.replace(path, target)
            files.append(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds["total"] = round(time.perf_counter() - start, 2)
    return ExportResult(files, int(len(mesh.faces)), int(len(mesh.vertices)), int(mesh.texture.shape[0]),
                        seconds, sum(f.stat().st_size for f in files))
