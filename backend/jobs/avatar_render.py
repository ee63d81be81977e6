"""The render job: an .avatar file + a turntable, a pose sequence or a camera path -> PNG frames
(or OpenEXR frames with linear premultiplied RGBA and depth, backend/render/exr.py) and an MP4
when imageio-ffmpeg is installed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from backend.avatar.avatar_file import load_avatar
from backend.errors import InputError
from backend.render.exr import openexr, write_rgbaz  # OpenEXR itself is imported only when used
from shared.camera import MAX_IMAGE_SIDE, PinholeCamera
from shared.orbit import body_up, orbit_from_camera
from shared.smpl import POSE_DIM


def load_pose_sequence(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 72) poses and optional (N, 3) translations from .npz (keys `poses` or `pose`, optional
    `transl`) or .json ({"poses": [[72 numbers], ...], "transl": [[x, y, z], ...]})."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pose sequence file")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = "poses" if "poses" in z.files else "pose" if "pose" in z.files else None
                if key is None:
                    raise InputError(f"{path}: no 'poses' array (found {', '.join(z.files) or 'nothing'})")
                poses = np.asarray(z[key], dtype=np.float64)
                transl = np.asarray(z["transl"], dtype=np.float64) if "transl" in z.files else None
        else:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "poses" not in data:
                raise InputError(f"{path}: expected a JSON object with a 'poses' list")
            poses = np.asarray(data["poses"], dtype=np.float64)
            transl = np.asarray(data["transl"], dtype=np.float64) if data.get("transl") is not None else None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable pose sequence ({exc})") from None
    poses = poses.reshape(-1, poses.shape[-1]) if poses.ndim >= 1 else poses
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM or len(poses) == 0:
        raise InputError(f"{path}: poses must be (N, {POSE_DIM}) SMPL axis-angle values, got {poses.shape}")
    if transl is not None and transl.shape != (len(poses), 3):
        raise InputError(f"{path}: transl must be (N, 3) for N={len(poses)} poses, got {transl.shape}")
    if not np.isfinite(poses).all() or (transl is not None and not np.isfinite(transl).all()):
        raise InputError(f"{path}: poses or transl contain NaN or Inf")
    return poses, transl


def load_camera_path(path) -> list[PinholeCamera]:
    """JSON: {"cameras": [{"K": 3x3, "R": 3x3, "t": [3], "width": W, "height": H}, ...]}."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text())
        cams = [PinholeCamera(np.array(c["K"], float), np.array(c["R"], float), np.array(c["t"], float),
                              int(c["width"]), int(c["height"])) for c in data["cameras"]]
    except FileNotFoundError:
        raise InputError(f"{path}: no such camera path file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: expected {{'cameras': [{{K, R, t, width, height}}, ...]}} ({exc})") from None
    for i, c in enumerate(cams):
        if not (0 < c.width <= MAX_IMAGE_SIDE and 0 < c.height <= MAX_IMAGE_SIDE):
            raise InputError(f"{path}: camera {i} size {c.width}x{c.height} is outside 1..{MAX_IMAGE_SIDE}")
    if not cams:
        raise InputError(f"{path}: no cameras")
    return cams


def turntable_cameras(camera: PinholeCamera, pose, body_vertices: np.ndarray, frames: int) -> list[PinholeCamera]:
    """`frames` cameras circling the body's vertical axis, starting at `camera` itself."""
    centre = (body_vertices.min(0) + body_vertices.max(0)) / 2.0
    up = body_up(np.asarray(pose)[:3])
    return [orbit_from_camera(camera, centre, up, 360.0 * i / frames) for i in range(frames)]


FRAME_FORMATS = ("png", "exr")


def _write_mp4(frames: list[np.ndarray], path: Path, fps: int, log, frame_format: str = "png") -> bool:
    try:
        import imageio_ffmpeg
    except ImportError:
        log(f"MP4 skipped: install imageio-ffmpeg for videos ({frame_format.upper()} frames written)")
        return False
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, macro_block_size=1)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return True


def render_avatar(avatar_path, out_dir, *, turntable: int = 0, poses=None, cameras=None, scale: float = 1.0,
                  device="cpu", fps: int = 24, frame_format: str = "png",
                  log: Callable[[str], None] = print) -> list[Path]:
    """Render frames; exactly one of turntable (> 0 frames), poses (file) or cameras (file).
    frame_format "png": RGBA PNGs, sRGB colour with straight alpha; "exr": OpenEXR files with
    linear premultiplied RGBA and Z depth (backend/render/exr.py). The MP4 (sRGB over white) is
    written either way when imageio-ffmpeg is installed."""
    chosen = [bool(turntable), poses is not None, cameras is not None]
    if sum(chosen) != 1:
        raise InputError("choose exactly one of --turntable N, --poses FILE or --cameras FILE")
    if frame_format not in FRAME_FORMATS:
        raise InputError(f"unknown frame format {frame_format!r}: choose one of {', '.join(FRAME_FORMATS)}")
    if frame_format == "exr":
        openexr()   # no OpenEXR package: say so before loading and rendering anything
    rec = load_avatar(avatar_path, device=device)
    if rec.stage != "done":
        log(f"note: {avatar_path} is an unfinished fit (iteration {rec.iteration}); rendering it as it is")
    for w in (rec.report or {}).get("warnings", []):
        log(w)
    avatar = rec.avatar.eval()
    base = rec.camera.scaled(scale) if scale != 1.0 else rec.camera
    jobs: list[tuple[PinholeCamera, np.ndarray, np.ndarray]] = []
    if turntable:
        with torch.no_grad():
            _, _, verts = avatar.posed(rec.pose, rec.transl)
        jobs = [(c, rec.pose, rec.transl) for c in turntable_cameras(base, rec.pose, verts.cpu().numpy(),
                                                                     int(turntable))]
    elif poses is not None:
        seq, transl = load_pose_sequence(poses)
        jobs = [(base, p, rec.transl if transl is None else transl[i]) for i, p in enumerate(seq)]
    else:
        jobs = [((c.scaled(scale) if scale != 1.0 else c), rec.pose, rec.transl) for c in load_camera_path(cameras)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, images = [], []
    start = time.perf_counter()
    for i, (cam, pose, transl) in enumerate(jobs):
        if frame_format == "exr":
            rgba_t, depth_t = avatar.render_layers(cam, pose, transl)   # the same image as render_rgba's
            rgba = rgba_t.cpu().numpy()
            # sRGB -> linear and premultiplied inside; Z: depth, 1e10 where empty
            path = write_rgbaz(out_dir / f"frame_{i:04d}.exr", rgba, depth_t.cpu().numpy())
        else:
            rgba = avatar.render_rgba(cam, pose, transl).cpu().numpy()
            img = (rgba * 255).round().astype(np.uint8)
            path = out_dir / f"frame_{i:04d}.png"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # a reader never sees half a frame
            Image.fromarray(img, "RGBA").save(tmp, format="PNG")
            os.replace(tmp, path)
        written.append(path)
        over_white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        images.append((over_white * 255).round().astype(np.uint8))
        log(f"  frame {i + 1}/{len(jobs)}  {time.perf_counter() - start:.1f} s")
    if len(images) > 1 and _write_mp4(images, out_dir / "video.mp4", fps, log, frame_format):
        written.append(out_dir / "video.mp4")
    return written
