"""The built add-on zip: vendored shared/, the pyzmq and msgpack wheels for every platform
(downloaded from PyPI by the build) listed in the manifest with the platforms they cover.
Installing and enabling it is tested in tests/test_addon_installed.py."""
import subprocess
import sys
import tomllib
import zipfile

import pytest

import build_addon


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_addon.build(tmp_path_factory.mktemp("dist"), log=lambda m: None)


def test_zip_has_manifest_vendored_shared_and_wheels(built):
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        assert {"blender_manifest.toml", "__init__.py", "shared/__init__.py", "shared/smpl.py", "shared/camera.py",
                "shared/protocol.py", "shared/client.py", "rig.py", "operators.py", "connection.py"} <= names
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
        assert not [n for n, text in sources.items() if "import torch" in text or "from torch" in text]
        # the vendored copy must import itself relatively: an installed extension has no `shared`
        assert not [n for n, text in sources.items() if "from shared" in text or "import shared" in text]
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert sorted(w.lstrip("./") for w in manifest["wheels"]) == wheels
    assert manifest["permissions"]["network"] and "wheels" not in manifest["permissions"]
    versions = build_addon.pinned_versions()
    for pkg in ("pyzmq", "msgpack"):
        ours = [w for w in wheels if w.startswith(f"wheels/{pkg}-{versions[pkg]}-")]
        for plat in ("manylinux", "win_amd64", "macosx"):   # every desktop platform, Blender 4.2-5.0 and 5.1+
            assert any(plat in w and ("cp311" in w) for w in ours), (pkg, plat)
            assert any(plat in w and ("cp313" in w or "abi3" in w) for w in ours), (pkg, plat)
    # Blender refuses the zip on platforms it does not list; every listed one has all wheels
    assert {"linux-x64", "windows-x64", "macos-arm64", "macos-x64"} <= set(manifest["platforms"])
    assert set(manifest["platforms"]) == set(build_addon.supported_platforms([w.split("/")[1] for w in wheels]))


def test_blender_validates_the_zip_with_its_wheels(built):
    pytest.importorskip("bpy", reason="Blender's validator ships in the bpy wheel")
    from tests.test_addon_installed import blender_validator

    proc = subprocess.run([sys.executable, str(blender_validator()), "validate", str(built)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "success" in proc.stdout.lower(), proc.stdout + proc.stderr


def test_platforms_need_every_package_for_every_python():
    names = ["pyzmq-27.3.0-cp311-cp311-win_amd64.whl", "pyzmq-27.3.0-cp312-abi3-win_amd64.whl",
             "msgpack-1.2.4-cp311-cp311-win_amd64.whl", "msgpack-1.2.4-cp313-cp313-win_amd64.whl",
             "pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl", "msgpack-1.2.4-cp311-cp311-macosx_11_0_arm64.whl",
             "pyzmq-27.3.0-cp312-abi3-manylinux_2_26_aarch64.manylinux_2_28_aarch64.whl",
             "msgpack-1.2.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
             "msgpack-1.2.4-cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    # windows-x64: both packages for 3.11 and 3.13 (abi3 from 3.12 covers 3.13); macOS: no 3.13
    # wheels; linux-arm64: pyzmq lacks a 3.11 wheel
    assert build_addon.supported_platforms(names) == ["windows-x64"]
    assert build_addon.wheel_platforms(names[4]) == {"macos-x64", "macos-arm64"}


def test_manifest_check_refuses_what_blender_refuses(tmp_path):
    base = ('schema_version="1.0.0"\nid="x"\nversion="1"\nname="x"\ntagline="x"\nmaintainer="x <x@example.org>"\n'
            'type="add-on"\ntags=["Animation"]\nblender_version_min="4.2.0"\nlicense=["SPDX:GPL-3.0-or-later"]\n')
    bad = tmp_path / "blender_manifest.toml"
    for extra, complaint in (("", "network"), ('[permissions]\nnetwork="' + "x" * 65 + '"\n', "64 characters"),
                             ('category="3D View"\n[permissions]\nnetwork="backend"\n', "tags")):
        bad.write_text(base + extra)
        with pytest.raises(SystemExit, match=complaint):
            build_addon.check_manifest(bad)
    bad.write_text(base + '[permissions]\nnetwork="Talk to the backend"\n')
    assert build_addon.check_manifest(bad)["permissions"]["network"] == "Talk to the backend"
