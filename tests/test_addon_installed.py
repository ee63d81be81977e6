"""The add-on as a user gets it: the built zip passes Blender's own manifest validator, installs
and enables through Blender's extension installer in a separate bpy process that cannot see the
source tree, and walks the artist's whole path there (tests/addon_user_session.py) against real
backend processes (a plain one and one that requires CurveZMQ keys)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import build_addon
from tests.backend_process import ServerProcess

pytest.importorskip("bpy", reason="the add-on's tests need Blender as a module (bpy)")
ROOT = Path(__file__).resolve().parents[1]


def bpy_root() -> Path:
    """The bpy wheel's folder (bpy.__file__ is Blender's own bpy module deep inside it)."""
    import importlib.util

    return Path(importlib.util.find_spec("bpy").submodule_search_locations[0])


def blender_validator() -> Path:
    found = sorted(bpy_root().glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    assert found, "Blender's extension validator is missing from the bpy wheel"
    return found[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_addon.build(tmp_path_factory.mktemp("dist"), wheels=False, log=lambda m: None)


def test_blender_validates_the_zip(built):
    proc = subprocess.run([sys.executable, str(blender_validator()), "validate", str(built)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "success" in proc.stdout.lower(), proc.stdout + proc.stderr
    with zipfile.ZipFile(built) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    tags_file = next(bpy_root().glob("*/scripts/modules/_bpy_internal/extensions/tags.py"))
    known = {}
    exec(compile(tags_file.read_text(), str(tags_file), "exec"), known)
    assert set(manifest["tags"]) <= known["addons"], manifest["tags"]
    assert all(len(reason) <= 64 for reason in manifest["permissions"].values())
    assert "category" not in manifest and "<" in manifest["maintainer"]
    # the licence stated in README.md is the manifest's
    spdx = manifest["license"][0].removeprefix("SPDX:")
    assert spdx in (ROOT / "README.md").read_text().split("## Licences", 1)[1]


def body_joints(body, pose, transl):
    import torch

    with torch.no_grad():
        return body(pose, None, transl).joints[0, :24].numpy().astype(np.float64)


def test_artist_path_in_the_installed_addon(built, tmp_path, open_body):
    from backend.jobs.sample_subject import render_flat, subject_pose
    from shared.camera import frame_subject

    # the photo: the sample person standing upright (Blender's Z up), facing Blender's -Y, seen by
    # the camera the add-on will make for it (default lens, framing the rig's pose)
    pose = subject_pose()
    pose[0:3] = 0.0
    transl = np.array([0.0, 1.10, 0.0])                   # soles near the floor (the cursor)
    width = height = 128
    cam = frame_subject(body_joints(open_body, pose, transl), width, height)
    rgb, mask = render_flat(open_body, pose, np.zeros(open_body.num_betas), transl, cam, np.ones((height, width, 3)))
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(tmp_path / "photo.png")
    mask8 = (mask * 255).astype(np.uint8)
    Image.fromarray(mask8).save(tmp_path / "mask.png")
    np.save(tmp_path / "mask.npy", mask8)

    # the rigs an artist brings (written the way a .blend of theirs would hold them)
    import bpy

    from tests.rig_builders import mixamo_rig, smplx_rig

    bpy.ops.wm.read_factory_settings(use_empty=True)
    rest = open_body.rest()[1][0].numpy().astype(np.float64)
    rigs = [smplx_rig(rest, "rolled"), mixamo_rig(rest)]
    for obj, name in zip(rigs, ("smplx_rig", "mixamo_rig")):
        obj.name = name
    bpy.data.libraries.write(str(tmp_path / "rigs.blend"), set(rigs), fake_user=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)

    keys = tmp_path / "keys"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "backend", "keys", str(keys), "--client", "artist"], check=True,
                   env=env, cwd=ROOT, capture_output=True)
    server = ServerProcess(tmp_path / "store", "--preview-every", "5")
    curve = ServerProcess(tmp_path / "curve-store", "--curve", str(keys))
    try:
        session = tmp_path / "session"
        (session / "home").mkdir(parents=True)
        driver = shutil.copy(ROOT / "tests" / "addon_user_session.py", session / "addon_user_session.py")
        config = {"source_tree": str(ROOT), "zip": str(built), "address": server.address,
                  "curve_address": curve.address, "server_key": str(keys / "server.key"),
                  "client_key": str(keys / "artist.key_secret"), "photo": str(tmp_path / "photo.png"),
                  "mask": str(tmp_path / "mask.png"), "mask_npy": str(tmp_path / "mask.npy"),
                  "width": width, "height": height, "pose": pose.tolist(), "transl": transl.tolist(),
                  "expected_camera": cam.to_dict(), "out": str(tmp_path / "out"),
                  "rigs_blend": str(tmp_path / "rigs.blend"), "server_pid": server.proc.pid}
        (session / "config.json").write_text(json.dumps(config))
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        clean_env["HOME"] = str(session / "home")
        proc = subprocess.run([sys.executable, "-I", driver, str(session / "config.json")], cwd=session,
                              env=clean_env, capture_output=True, text=True, timeout=1200)
    finally:
        server.kill(signal.SIGTERM)
        curve.kill(signal.SIGTERM)
    steps = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("STEP ")]
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"steps passed: {steps}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    assert steps == ["isolated", "installed", "refuses_remote_without_online_access", "curve_keys", "connect",
                     "add_rig", "photo_sets_camera", "create_progress_cancel", "create_done_and_list", "panel_draws", "load",
                     "preview_lines_up_with_photo", "live_preview_scrub_then_full", "timer_survives_errors",
                     "smplx_rig_drives_preview", "mixamo_rig_drives_preview", "wrong_rig_is_one_line",
                     "load_keeps_keyed_pose",
                     "animation_render", "f12_asks_for_no_preview", "stop_frees_the_backend", "long_animation", "create_from_photo_alone",
                     "backend_gone_is_a_status_line",
                     "reopen_keeps_settings_and_handlers", "disable_stops_everything"], steps
