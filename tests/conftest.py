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
