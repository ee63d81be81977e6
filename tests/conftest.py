import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def open_body():
    from backend.body.body_model import load_open_body

    return load_open_body()


@pytest.fixture(scope="session")
def tiny_clip():
    """The real open_clip code path with a tiny random config (no weights needed)."""
    from backend.avatar.clip_prior import load_clip
    from backend.avatar.pretrained import ClipSpec

    return load_clip(ClipSpec.tiny_test())


@pytest.fixture(scope="session")
def subject_128(open_body):
    """The sample person's photo at 128 px with its true parameters (as a rig would give them)."""
    from backend.jobs.sample_subject import small_subject

    return small_subject(open_body, 128)


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, subject_128):
    """A finished tiny avatar's store folder (fitted once by a real server, copied into tests' stores)."""
    import signal

    from shared.client import ServiceClient
    from tests.backend_process import ServerProcess

    store = tmp_path_factory.mktemp("fitted") / "store"
    server = ServerProcess(store)
    try:
        with ServiceClient(server.address, timeout=60) as c:
            msg_id, job, _ = c.start_fit(subject_128["photo"], subject_128["pose"], subject_128["transl"],
                                         subject_128["camera"], mask=subject_128["mask"], preset="tiny",
                                         fit_body=False)
            assert c.wait_fit(msg_id, timeout=300).type == "done"
    finally:
        server.kill(signal.SIGTERM)
    return store / job
