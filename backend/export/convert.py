"""FBX and OBJ from the .glb, through Blender's own importer and exporters (the bpy module),
in a child process: bpy and torch are kept out of one process, and a crash in Blender cannot
take the caller with it.

    python -m backend.export.convert in.glb out.fbx|out.obj

The glTF importer turns glTF's +Y up into Blender's +Z up; the FBX and OBJ exporters then write
their formats' usual axes (Y up, -Z forward), which Blender, Unreal and Unity read back standing.
The texture is written beside the file (OBJ: referenced by the .mtl) or embedded (FBX).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from backend.errors import AvatarError

TIMEOUT_S = 600


def convert(glb: Path, out: Path) -> list[Path]:
    """Write `out` (.fbx or .obj, plus the .mtl and texture of an OBJ) from `glb`; returns the
    files written. Raises AvatarError with Blender's message when bpy is missing or fails."""
    cmd = [sys.executable, "-m", "backend.export.convert", str(glb), str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AvatarError(f"converting to {out.suffix} took over {TIMEOUT_S} s; export .glb instead") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AvatarError(f"Blender could not write {out.name}: {' '.join(tail) or 'no message'}")
    return [Path(line) for line in done.stdout.splitlines() if line.startswith(str(out.parent))]


def _main(glb: str, out: str) -> int:
    try:
        import bpy
    except ImportError:
        print("FBX and OBJ export need the bpy module (pip install bpy==5.0.1); "
              "or export .glb, which needs no Blender", file=sys.stderr)
        return 2
    out_path = Path(out)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=glb)
    written = [out_path]
    for image in bpy.data.images:
        if image.packed_file is not None:
            # the texture as a file beside the asset: OBJ's .mtl names it, FBX embeds it from there
            path = out_path.with_name(f"{out_path.stem}_colour.png")
            path.write_bytes(image.packed_file.data)
            image.unpack(method="REMOVE")
            image.filepath = str(path)
            image.reload()
            written.append(path)
    if out_path.suffix == ".fbx":
        bpy.ops.export_scene.fbx(filepath=str(out_path), add_leaf_bones=False, path_mode="COPY",
                                 embed_textures=True, bake_anim=False)
        for extra in written[1:]:
            extra.unlink(missing_ok=True)   # embedded
        written = written[:1]
    elif out_path.suffix == ".obj":
        bpy.ops.wm.obj_export(filepath=str(out_path), export_materials=True, path_mode="RELATIVE",
                              export_animation=False)
        written.append(out_path.with_suffix(".mtl"))
    else:
        print(f"unknown format {out_path.suffix}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:3]))
