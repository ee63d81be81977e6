"""The built add-on zip: vendored shared/, the pyzmq and msgpack wheels for every platform
(downloaded from PyPI by the build) listed in a valid manifest, and it registers in real bpy."""
import importlib
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
        assert {"blender_manifest.toml", "__init__.py", "_vendor.py", "shared/smpl.py", "shared/camera.py",
                "shared/protocol.py", "shared/client.py", "rig.py", "operators.py", "connection.py"} <= names
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
        assert not [n for n, text in sources.items() if "import torch" in text or "from torch" in text]
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


def test_addon_registers_from_the_zip_in_bpy(built, tmp_path):
    bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed")
    target = built
    with zipfile.ZipFile(target) as zf:
        zf.extractall(tmp_path / "one_shot_avatar")
    sys.path.insert(0, str(tmp_path))
    try:
        addon = importlib.import_module("one_shot_avatar")
        assert addon._vendor.shared.__name__ == "one_shot_avatar.shared"  # the vendored copy
        addon.register()
        try:
            settings = bpy.context.scene.one_shot_avatar
            assert settings.backend_address == "tcp://127.0.0.1:5557"
            settings.prompt = "red hoodie"
            assert bpy.context.scene.one_shot_avatar.prompt == "red hoodie"
        finally:
            addon.unregister()
        assert not hasattr(bpy.types.Scene, "one_shot_avatar")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("one_shot_avatar")]:
            del sys.modules[name]


def test_manifest_check_refuses_missing_network_permission(tmp_path):
    bad = tmp_path / "blender_manifest.toml"
    bad.write_text('schema_version="1.0.0"\nid="x"\nversion="1"\nname="x"\ntagline="x"\nmaintainer="x"\n'
                   'type="add-on"\nblender_version_min="4.2.0"\nlicense=["SPDX:GPL-3.0-or-later"]\n')
    with pytest.raises(SystemExit, match="network"):
        build_addon.check_manifest(bad)
