"""User SMPL files: official-layout pickles load without chumpy, through the real smplx path."""
import pickle
import sys

import numpy as np
import pytest
import torch
from tiny_smpl import make_tiny_smpl_arrays, write_npz, write_official_pkl

from backend.body.body_model import load_body_model
from backend.body.smpl_files import load_smpl_arrays, num_betas
from backend.errors import BodyModelFileError
from shared.smpl import JOINT_INDEX as J


@pytest.mark.parametrize("version,betas", [("1.0.0", 10), ("1.1.0", 300)])
def test_official_pickle_loads_without_chumpy(tmp_path, version, betas):
    arrays = make_tiny_smpl_arrays(num_betas=betas)
    path = tmp_path / f"SMPL_NEUTRAL_{version}.pkl"
    write_official_pkl(path, arrays, version)
    assert b"chumpy" in path.read_bytes()  # the file really references chumpy classes
    loaded = load_smpl_arrays(path)
    assert "chumpy" not in sys.modules
    assert num_betas(loaded) == betas
    for key in ("v_template", "shapedirs", "posedirs", "weights", "f", "kintree_table"):
        np.testing.assert_array_equal(np.asarray(loaded[key]), arrays[key].astype(np.asarray(loaded[key]).dtype), err_msg=key)
    np.testing.assert_allclose(loaded["J_regressor"].toarray(), arrays["J_regressor"])


def test_npz_loads_too(tmp_path):
    arrays = make_tiny_smpl_arrays()
    write_npz(tmp_path / "smpl.npz", arrays)
    np.testing.assert_array_equal(load_smpl_arrays(tmp_path / "smpl.npz")["v_template"], arrays["v_template"])


def test_poses_through_smplx(tmp_path):
    arrays = make_tiny_smpl_arrays(num_betas=10)
    write_official_pkl(tmp_path / "smpl.pkl", arrays)
    body = load_body_model(tmp_path / "smpl.pkl")
    assert body.name == "smpl" and body.num_betas == 10 and body.identity.startswith("smpl-")
    betas = torch.linspace(-1, 1, 10)
    out = body(torch.zeros(72), betas)
    shaped = arrays["v_template"] + arrays["shapedirs"] @ betas.numpy().astype(np.float64)
    np.testing.assert_allclose(out.vertices[0].numpy(), shaped, atol=1e-5)
    np.testing.assert_allclose(out.joints[0].numpy(), arrays["J_regressor"] @ shaped, atol=1e-5)
    # a 90 degree turn of the left elbow moves the left forearm and hand boxes only
    pose = torch.zeros(72)
    pose[3 * J["left_elbow"] + 1] = -np.pi / 2
    # (the random pose correctives move every box by < 3 cm; the turned boxes move far more)
    moved = (body(pose).vertices[0] - body(torch.zeros(72)).vertices[0]).norm(dim=-1) > 0.05
    owner = np.repeat(np.arange(24), 8)
    assert set(np.unique(owner[moved.numpy()])) == {J["left_wrist"], J["left_hand"]}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bad_files_give_clear_errors(tmp_path):
    arrays = make_tiny_smpl_arrays()
    with pytest.raises(BodyModelFileError, match=r"missing\.pkl: no such SMPL model file.*smpl\.is\.tue\.mpg\.de"):
        load_smpl_arrays(tmp_path / "missing.pkl")
    with pytest.raises(BodyModelFileError, match=r"garbage\.pkl: unreadable SMPL pickle"):
        load_smpl_arrays(_write(tmp_path, "garbage.pkl", b"this is not a pickle at all"))
    write_official_pkl(tmp_path / "full.pkl", arrays)
    with pytest.raises(BodyModelFileError, match=r"truncated\.pkl: unreadable"):
        load_smpl_arrays(_write(tmp_path, "truncated.pkl", (tmp_path / "full.pkl").read_bytes()[:500]))
    partial = {k: v for k, v in arrays.items() if k != "weights"}
    write_npz(tmp_path / "noweights.npz", partial)
    with pytest.raises(BodyModelFileError, match=r"noweights\.npz: missing weights"):
        load_smpl_arrays(tmp_path / "noweights.npz")
    write_npz(tmp_path / "shape.npz", dict(arrays, weights=arrays["weights"][:-1]))
    with pytest.raises(BodyModelFileError, match=r"shape\.npz: 'weights' has shape \(191, 24\), expected \(192, 24\)"):
        load_smpl_arrays(tmp_path / "shape.npz")
    bad = arrays["v_template"].copy(); bad[3, 1] = np.nan
    write_npz(tmp_path / "nan.npz", dict(arrays, v_template=bad))
    with pytest.raises(BodyModelFileError, match=r"nan\.npz: 'v_template' contains NaN"):
        load_smpl_arrays(tmp_path / "nan.npz")
    faces = arrays["f"].copy(); faces[0, 0] = 10_000
    write_npz(tmp_path / "faces.npz", dict(arrays, f=faces))
    with pytest.raises(BodyModelFileError, match=r"faces\.npz: 'f' indexes vertex 10000"):
        load_smpl_arrays(tmp_path / "faces.npz")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(BodyModelFileError, match=r"evil\.pkl: .*refusing to load class (posix|os)\.system"):
        load_smpl_arrays(path)
    assert not marker.exists()
