"""Build the installable Blender add-on zip: blender_addon/ with shared/ vendored inside.

    python build_addon.py [--out dist/]

The zip is a Blender 4.2+ extension (blender_manifest.toml at its root). Bundling the
pyzmq and msgpack wheels for every platform comes with the add-on issue; this build
checks the manifest and vendors shared/ so the add-on never depends on the source tree.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIRED_MANIFEST_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer",
                          "type", "blender_version_min", "license")


def check_manifest(path: Path) -> dict:
    manifest = tomllib.loads(path.read_text())
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise SystemExit(f"{path}: missing keys {missing}")
    if manifest["type"] != "add-on":
        raise SystemExit(f"{path}: type must be 'add-on'")
    if "network" not in manifest.get("permissions", {}):
        raise SystemExit(f"{path}: the add-on talks to the backend: declare [permissions] network")
    return manifest


def build(out_dir: Path) -> Path:
    manifest = check_manifest(ROOT / "blender_addon" / "blender_manifest.toml")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    files = [(p, p.relative_to(ROOT / "blender_addon")) for p in sorted((ROOT / "blender_addon").rglob("*"))]
    files += [(p, Path("shared") / p.relative_to(ROOT / "shared")) for p in sorted((ROOT / "shared").rglob("*.py"))]
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for src, arc in files:
            if src.is_file() and "__pycache__" not in src.parts:
                zf.write(src, arc.as_posix())
    tmp.replace(target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    print(f"built {build(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
