"""The body-fit command end to end, as a user runs it (a real subprocess)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.inputs import load_params_json

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    proc = run("sample", folder)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_fit_body_on_elicit_folder(sample, tmp_path):
    proc = run("fit-body", "--elicit", sample, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"silhouette IoU before ([\d.]+) -> after ([\d.]+)", proc.stdout)
    before, after = float(m.group(1)), float(m.group(2))
    assert after >= 0.9 and after > before + 0.1
    assert "do not transfer" in proc.stdout  # the SMPL-betas note reaches the user
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == (512, 512, 3)
    report = json.loads((tmp_path / "fit_report.json").read_text())
    assert report["silhouette_iou_after"] == pytest.approx(after, abs=1e-3)
    params, camera = load_params_json(tmp_path / "fitted_params.json", (512, 512))
    assert params.source_model == "open_body" and params.betas.shape == (6,)
    assert np.allclose(camera.K[0, 0], 1200.0)


def test_photo_without_mask_uses_grabcut(sample, tmp_path):
    rgb = Image.open(sample / "gt_image.png").convert("RGB")
    rgb.save(tmp_path / "photo.jpg", quality=95)
    proc = run("fit-body", "--photo", tmp_path / "photo.jpg", "--params", sample / "gt_params.npz",
               "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "GrabCut" in proc.stdout
    derived = np.asarray(Image.open(tmp_path / "out" / "mask.png")) > 127
    truth = np.asarray(Image.open(sample / "gt_mask.png")) > 127
    assert np.logical_and(derived, truth).sum() / np.logical_or(derived, truth).sum() > 0.85
    assert json.loads((tmp_path / "out" / "fit_report.json").read_text())["mask_source"] == "grabcut"


def test_bad_input_is_one_clear_line(tmp_path):
    proc = run("fit-body", "--elicit", tmp_path / "missing", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "missing" in proc.stderr
    proc = run("fit-body", "--photo", tmp_path / "x.png", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--params" in proc.stderr
