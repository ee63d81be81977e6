"""OpenEXR frames (`render --format exr`): linear premultiplied RGBA + Z, written atomically.
(The default PNG output is covered by test_cli.py's render test.)"""
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.errors import AvatarError
from backend.render.exr import read_exr, write_rgbaz
from shared.compositing import EMPTY_DEPTH, srgb_to_linear

ROOT = Path(__file__).resolve().parents[1]
HALF = 2.0 ** -11   # half precision's relative step; values here are <= 1


def run(*args, path_before=None):
    """The CLI as a user runs it; path_before: a folder searched before everything (to hide a package)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (path_before, ROOT) if p))
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def srgb_decode_reference(c):
    """sRGB (IEC 61966-2-1) to linear, written out independently of the module under test."""
    c = np.asarray(c, dtype=np.float64)
    out = np.empty_like(c)
    low = c <= 0.04045
    out[low] = c[low] / 12.92
    out[~low] = ((c[~low] + 0.055) / 1.055) ** 2.4
    return out


def exr_layout(path):
    """(magic number, version, tiled, multi-part, deep) from the EXR file's first 8 bytes."""
    magic, flags = struct.unpack("<iI", Path(path).read_bytes()[:8])
    return magic, flags & 0xFF, bool(flags & 0x200), bool(flags & 0x1000), bool(flags & 0x800)


def test_render_turntable_as_exr_matches_the_model(fitted, tmp_path):
    from backend.avatar.avatar_file import load_avatar
    from backend.jobs.avatar_render import turntable_cameras

    avatar_file = fitted / "avatar.avatar"
    out = tmp_path / "tt"
    proc = run("render", avatar_file, "--turntable", 2, "--format", "exr", "--out", out)
    assert proc.returncode == 0, proc.stderr
    frames = sorted(out.glob("frame_*.exr"))
    assert [f.name for f in frames] == ["frame_0000.exr", "frame_0001.exr"]
    assert not list(out.glob("*.png")) and not list(out.glob(".*"))   # no PNGs, no temporary files left

    rec = load_avatar(avatar_file)
    avatar = rec.avatar.eval()
    with torch.no_grad():
        _, _, verts = avatar.posed(rec.pose, rec.transl)
    cams = turntable_cameras(rec.camera, rec.pose, verts.cpu().numpy(), 2)
    for frame, cam in zip(frames, cams):
        assert exr_layout(frame) == (20000630, 2, False, False, False)   # single-part scanline EXR
        ch = read_exr(frame)
        assert sorted(ch) == ["A", "B", "G", "R", "Z"]
        assert all(ch[k].dtype == np.float16 for k in "RGBA") and ch["Z"].dtype == np.float32
        assert all(v.shape == (cam.height, cam.width) for v in ch.values())
        rgba, depth = (t.cpu().numpy().astype(np.float64) for t in avatar.render_layers(cam, rec.pose, rec.transl))
        A = ch["A"].astype(np.float64)
        assert np.allclose(A, rgba[..., 3], rtol=0, atol=HALF / 2 + 1e-7)
        seen = A > 0
        assert 0 < seen.sum() < seen.size    # the person, and empty corners
        assert np.allclose(ch["Z"][seen], depth[seen], rtol=1e-6, atol=0)
        assert (ch["Z"][~seen] == np.float32(1e10)).all()
        assert 1.0 < ch["Z"][seen].min() and ch["Z"][seen].max() < 20.0   # metres in front of the camera
        premul_linear = srgb_decode_reference(rgba[..., :3]) * A[..., None]
        for i, k in enumerate("RGB"):
            assert np.allclose(ch[k].astype(np.float64), premul_linear[..., i], rtol=0, atol=HALF / 2 + 1e-6), k
            assert (ch[k][~seen] == 0).all()
    assert not np.array_equal(read_exr(frames[0])["A"], read_exr(frames[1])["A"])   # the view turns


def test_exr_without_the_openexr_package_is_one_clear_line(fitted, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "OpenEXR.py").write_text("raise ImportError('No module named OpenEXR')\n")
    out = tmp_path / "out"
    proc = run("render", fitted / "avatar.avatar", "--turntable", 2, "--format", "exr", "--out", out,
               path_before=hidden)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "OpenEXR" in proc.stderr and "--format png" in proc.stderr
    assert not out.exists()   # refused before rendering anything


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    H, W = 7, 5    # not square: a transposed or strided write would show
    rgba = rng.uniform(0, 1, (H, W, 4))
    rgba[0, 0, 3] = 0.0      # empty
    rgba[1, 1, 3] = 1e-9     # below half precision: stored as empty too
    rgba[2, 2, 3] = 1.0
    rgba[3, 3, :3] = [0.0, 0.04045, 0.5]
    depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
    path = write_rgbaz(tmp_path / "f.exr", rgba, depth)
    assert path == tmp_path / "f.exr"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr"]    # no temporary file remains
    assert exr_layout(path) == (20000630, 2, False, False, False)

    ch = read_exr(path)
    assert sorted(ch) == ["A", "B", "G", "R", "Z"]
    assert all(v.shape == (H, W) for v in ch.values())
    A = ch["A"].astype(np.float64)
    assert np.allclose(A, rgba[..., 3], rtol=0, atol=HALF / 2 + 1e-9)
    assert A[0, 0] == 0 and A[1, 1] == 0 and A[2, 2] == 1
    empty = A == 0
    assert empty.sum() == 2
    assert (ch["Z"][empty] == np.float32(EMPTY_DEPTH)).all() and np.array_equal(ch["Z"][~empty], depth[~empty])
    expected = srgb_decode_reference(rgba[..., :3]) * A[..., None]
    for i, k in enumerate("RGB"):
        assert np.allclose(ch[k], expected[..., i], rtol=0, atol=HALF / 2 + 1e-9), k
    assert ch["R"][3, 3] == 0 and ch["G"][3, 3] == pytest.approx(0.0031308 * A[3, 3], rel=HALF)
    assert ch["B"][3, 3] == pytest.approx(0.2140411 * A[3, 3], rel=HALF)

    # rewriting replaces the file; empty_depth is the caller's choice
    write_rgbaz(path, rgba, depth, empty_depth=1e6)
    assert (read_exr(path)["Z"][empty] == np.float32(1e6)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr"]


def test_srgb_decode():
    c = np.array([0.0, 0.02, 0.04045, 0.5, 0.8, 1.0])
    assert np.allclose(srgb_to_linear(c), srgb_decode_reference(c), rtol=1e-12, atol=0)
    assert srgb_to_linear(1.0) == pytest.approx(1.0) and srgb_to_linear(0.5) == pytest.approx(0.2140411, rel=1e-6)


def test_a_failed_write_leaves_the_old_frame_and_no_temporary_file(tmp_path, monkeypatch):
    import OpenEXR

    rgba = np.full((4, 6, 4), 0.5)
    depth = np.full((4, 6), 2.0)
    path = write_rgbaz(tmp_path / "f.exr", rgba, depth)
    before = path.read_bytes()

    class FailingFile:   # writes half a file, then fails (a full disk, say)
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, filename):
            Path(filename).write_bytes(before[:20])
            raise RuntimeError("No space left on device")

    monkeypatch.setattr(OpenEXR, "File", FailingFile)
    with pytest.raises(AvatarError, match="cannot write .*f.exr.*No space left"):
        write_rgbaz(path, np.zeros((4, 6, 4)), depth)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr"]


def test_bad_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 4\)"):
        write_rgbaz(tmp_path / "x.exr", np.zeros((4, 4, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="depth"):
        write_rgbaz(tmp_path / "x.exr", np.zeros((4, 4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="finite"):
        write_rgbaz(tmp_path / "x.exr", np.full((4, 4, 4), np.nan), np.zeros((4, 4)))
    assert not list(tmp_path.iterdir())
    with pytest.raises(AvatarError, match="no such EXR file"):
        read_exr(tmp_path / "missing.exr")
    (tmp_path / "not.exr").write_text("hello")
    with pytest.raises(AvatarError, match="not a readable EXR file"):
        read_exr(tmp_path / "not.exr")
