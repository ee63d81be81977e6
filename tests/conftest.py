import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def open_body():
    from backend.body.model import load_open_body

    return load_open_body()


@pytest.fixture(scope="session")
def tiny_clip():
    """The real open_clip code path with a tiny random config (no weights needed)."""
    from backend.avatar.clip_prior import ClipSpec, load_clip

    return load_clip(ClipSpec.tiny_test())


@pytest.fixture(scope="session")
def subject_128():
    """The sample person's photo at 128 px with its true parameters (as a rig would give them)."""
    import numpy as np

    from backend.body.model import load_open_body
    from backend.sample_subject import DISTANCE, FOCAL, frame_body, render_flat, subject_pose
    from shared.camera import PinholeCamera

    body = load_open_body()
    pose = subject_pose()
    betas = np.zeros(body.num_betas)
    transl = frame_body(body, pose, betas, DISTANCE)
    cam = PinholeCamera.from_focal(FOCAL / 4, 128, 128)
    rgb, mask = render_flat(body, pose, betas, transl, cam, np.ones((128, 128, 3)))
    return {"photo": (rgb * 255).round().astype(np.uint8), "mask": (mask * 255).astype(np.uint8),
            "pose": pose, "transl": transl, "camera": cam}
