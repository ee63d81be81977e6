"""Render docs/images/f12_example.png headlessly: the avatar in Blender's own F12, composited by
depth with a scene (a floor, a sun, a crate in front of the avatar's legs, a pillar behind it),
with the shadow proxy's shadow on the floor; from the photo's camera and from a camera turned
40 degrees round the person, side by side.

    bash scripts/env.sh python tools/render_f12_example.py [--avatar out/demo/avatar.avatar]
        [--out docs/images/f12_example.png] [--samples 32]

The add-on runs as its built zip's package (registered in bpy, as Blender would); the backend is
a real `python -m backend serve` process on 127.0.0.1 with a store holding the avatar. Without
--avatar it uses the demo's (run `bash scripts/demo.sh` first).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AVATAR_ID = "example000000001"


def material(bpy, name, colour, roughness=0.6):
    mat = bpy.data.materials.new(name)
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def add_box(bpy, name, location, size, colour):
    bpy.ops.mesh.primitive_cube_add(location=location)
    obj = bpy.context.object
    obj.name, obj.scale = name, size
    obj.data.materials.append(material(bpy, name, colour))
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avatar", type=Path, default=ROOT / "out" / "demo" / "avatar.avatar")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "f12_example.png")
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args(argv)
    if not args.avatar.is_file():
        print(f"error: {args.avatar} does not exist (run bash scripts/demo.sh, or pass --avatar)", file=sys.stderr)
        return 2

    import bpy
    from PIL import Image

    from shared.client import ServiceClient
    from tests.backend_process import ServerProcess
    from tests.installed_addon import load_built_addon

    tmp = Path(tempfile.mkdtemp(prefix="f12-example-"))
    (tmp / "store" / AVATAR_ID).mkdir(parents=True)
    shutil.copy(args.avatar, tmp / "store" / AVATAR_ID / "avatar.avatar")
    # the store lists an avatar once its job.json exists (backend/service/store.py)
    (tmp / "store" / AVATAR_ID / "job.json").write_text(json.dumps(
        {"preset": "quick", "prompt": "", "name": args.avatar.stem, "body": "open_body", "fit_body": True,
         "created": time.time()}))
    server = ServerProcess(tmp / "store")
    addon = load_built_addon()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    try:
        from one_shot_avatar import connection, results
        from one_shot_avatar.runtime import runtime

        runtime.connection = connection.Connection(server.address)
        scene = bpy.context.scene
        s = scene.one_shot_avatar
        s.avatar_id = AVATAR_ID
        with ServiceClient(server.address, timeout=120) as c:
            results.apply_result("loaded", c.load(AVATAR_ID))   # rig, camera, compositing, shadow proxy
        print(s.status)
        scene.render.engine = "CYCLES"
        scene.cycles.samples = args.samples
        scene.cycles.use_denoising = False
        scene.view_settings.view_transform = "Standard"
        world = bpy.data.worlds.new("World")
        world.color = (0.55, 0.6, 0.7)
        scene.world = world
        rig = s.armature
        pelvis = np.array(rig.matrix_world @ rig.pose.bones[0].head)
        cam = scene.camera
        cam_pos = np.array(cam.matrix_world.translation)
        toward = cam_pos - pelvis
        toward[2] = 0.0
        toward /= np.linalg.norm(toward)
        side = np.cross(toward, [0.0, 0.0, 1.0])
        bpy.ops.mesh.primitive_plane_add(size=30.0, location=(pelvis[0], pelvis[1], 0.0))
        bpy.context.object.data.materials.append(material(bpy, "Floor", (0.8, 0.78, 0.72)))
        add_box(bpy, "Crate", tuple(pelvis + 0.7 * toward + 0.25 * side - [0, 0, pelvis[2] - 0.3]),
                (0.3, 0.3, 0.3), (0.55, 0.32, 0.12))
        add_box(bpy, "Pillar", tuple(pelvis - 0.9 * toward - 0.55 * side + [0, 0, 0.2]),
                (0.25, 0.25, 1.4), (0.25, 0.4, 0.6))
        sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
        sun.data.energy, sun.data.angle = 3.0, math.radians(3)
        sun.rotation_euler = (math.radians(40), 0.0, math.atan2(side[1], side[0]) + math.radians(20))
        scene.collection.objects.link(sun)

        frames = []
        from mathutils import Matrix

        start = cam.matrix_world.copy()
        for name, yaw in (("photo camera", 0.0), ("turned 40 degrees", 40.0)):
            about = Matrix.Translation(tuple(pelvis))   # turn the camera round the person's vertical axis
            cam.matrix_world = about @ Matrix.Rotation(math.radians(yaw), 4, "Z") @ about.inverted() @ start
            bpy.context.view_layer.update()
            path = tmp / f"{int(yaw):03d}.png"
            scene.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            if runtime.render_problems:
                raise RuntimeError(runtime.render_problems[-1])
            frames.append(Image.open(path).convert("RGB"))
            print(f"rendered {name}: {path}")
        w, h = frames[0].size
        grid = Image.new("RGB", (w * len(frames), h))
        for i, frame in enumerate(frames):
            grid.paste(frame, (i * w, 0))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.out)
        print(f"wrote {args.out} ({grid.size[0]} x {grid.size[1]})")
    finally:
        if runtime.connection is not None:
            runtime.connection.close()
            runtime.connection = None
        addon.unregister()
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
