"""The add-on as the built zip carries it, for unit tests of its modules (rig, camera, view code).

`load_built_addon()` builds the zip (no wheels), extracts it and imports it as the package
`one_shot_avatar`, so these tests exercise the shipped files with the vendored shared/ copy, never
the source tree's blender_addon/. That it installs and enables like a user's add-on is proven
separately, in a process that cannot see the source tree (tests/test_addon_installed.py).
"""
from __future__ import annotations

import atexit
import functools
import importlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "one_shot_avatar"


@functools.lru_cache(maxsize=1)
def load_built_addon():
    import build_addon

    tmp = Path(tempfile.mkdtemp(prefix="built-addon-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    zip_path = build_addon.build(tmp / "dist", wheels=False, log=lambda m: None)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp / "pkgs" / PACKAGE)
    sys.path.insert(0, str(tmp / "pkgs"))
    module = importlib.import_module(PACKAGE)
    for name in ("rig", "blender_camera", "operators", "connection"):
        importlib.import_module(f"{PACKAGE}.{name}")
    assert module.__file__.startswith(str(tmp)), module.__file__
    return module
