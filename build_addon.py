"""Build the installable Blender add-on zip: blender_addon/ with shared/ vendored inside and
the pyzmq + msgpack wheels Blender installs for it.

    python build_addon.py [--out dist/] [--no-wheels]

The zip is a Blender 4.2+ extension (blender_manifest.toml at its root). The wheels (the
versions pinned in requirements.lock) are downloaded from PyPI by this build, never committed,
for Blender's Pythons (3.11: Blender 4.2-5.0; 3.13: 5.1 and later) on Linux, Windows and macOS,
x86_64 and arm64 where published, and listed in the zip's manifest (`wheels = [...]`); Blender
installs the ones matching the machine. Downloads are cached in <out>/wheel-cache.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIRED_MANIFEST_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer",
                          "type", "blender_version_min", "license", "tags")
MAX_PERMISSION_REASON = 64  # Blender's validator and extensions.blender.org refuse longer reasons


def check_manifest(path: Path) -> dict:
    manifest = tomllib.loads(path.read_text())
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise SystemExit(f"{path}: missing keys {missing}")
    if manifest["type"] != "add-on":
        raise SystemExit(f"{path}: type must be 'add-on'")
    permissions = manifest.get("permissions", {})
    if "network" not in permissions:
        raise SystemExit(f"{path}: the add-on talks to the backend: declare [permissions] network")
    long = {k: len(v) for k, v in permissions.items() if len(v) > MAX_PERMISSION_REASON}
    if long:
        raise SystemExit(f"{path}: permission reasons longer than {MAX_PERMISSION_REASON} characters "
                         f"(Blender refuses them): {long}")
    if "category" in manifest:
        raise SystemExit(f"{path}: extensions use `tags`, not `category`")
    return manifest


WHEEL_PACKAGES = ("pyzmq", "msgpack")
PYTHONS = ("3.11", "3.13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "win_amd64", "win_arm64",
             "macosx_11_0_arm64", "macosx_10_15_x86_64")


def pinned_versions() -> dict[str, str]:
    lock = (ROOT / "requirements.lock").read_text()
    out = {}
    for name in WHEEL_PACKAGES:
        m = re.search(rf"^{name}==([^\s#]+)", lock, re.MULTILINE | re.IGNORECASE)
        if not m:
            raise SystemExit(f"requirements.lock pins no {name}: the add-on's wheels follow the lock")
        out[name] = m.group(1)
    return out


def download_wheels(cache: Path, log=print) -> list[Path]:
    """The wheels for every (Python, platform) that PyPI publishes; unpublished pairs are
    reported and skipped. A failed download of a published pair is an error (no silent gaps)."""
    cache.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={v}" for n, v in pinned_versions().items()]
    for py in PYTHONS:
        for plat in PLATFORMS:
            for spec in specs:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--python-version", py, "--implementation", "cp", "--platform", plat,
                       "--dest", str(cache), "--quiet", "--disable-pip-version-check", spec]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    if "No matching distribution" in proc.stderr or "Could not find a version" in proc.stderr:
                        log(f"  no {spec} wheel for Python {py} on {plat}: skipped")
                        continue
                    raise SystemExit(f"downloading {spec} for Python {py} on {plat} failed:\n{proc.stderr[-2000:]}")
    return sorted(cache.glob("*.whl"))


# wheel platform tag -> Blender platform names (a universal2 macOS wheel serves both Macs)
_WHEEL_PLATFORMS = (("manylinux", "x86_64", ("linux-x64",)), ("manylinux", "aarch64", ("linux-arm64",)),
                    ("win", "amd64", ("windows-x64",)), ("win", "arm64", ("windows-arm64",)),
                    ("macosx", "universal2", ("macos-x64", "macos-arm64")),
                    ("macosx", "arm64", ("macos-arm64",)), ("macosx", "x86_64", ("macos-x64",)))


def wheel_platforms(wheel_name: str) -> set[str]:
    """Blender platforms a wheel file serves, from its platform tag (e.g. win_amd64 -> windows-x64)."""
    out = set()
    for tag in Path(wheel_name).stem.split("-")[-1].split("."):
        for system, machine, names in _WHEEL_PLATFORMS:
            if tag.startswith(system) and tag.endswith(machine):
                out.update(names)
                break
    return out


def wheel_pythons(wheel_name: str) -> set[str]:
    """Which of PYTHONS a wheel installs on (cp311 exactly; an abi3 wheel on its version and later)."""
    parts = Path(wheel_name).stem.split("-")
    py_tag, abi = parts[-3], parts[-2]
    out = set()
    for py in PYTHONS:
        cp = "cp" + py.replace(".", "")
        for tag in py_tag.split("."):
            if tag == cp or (abi == "abi3" and tag.startswith("cp") and int(tag[2:]) <= int(cp[2:])):
                out.add(py)
    return out


def supported_platforms(wheel_names: list[str]) -> list[str]:
    """The Blender platforms on which every bundled package has a wheel for every Blender Python:
    the manifest's `platforms`, so Blender refuses the zip where it could not work."""
    have: dict[tuple[str, str], set[str]] = {}
    for name in wheel_names:
        pkg = name.split("-")[0].lower()
        for py in wheel_pythons(name):
            have.setdefault((pkg, py), set()).update(wheel_platforms(name))
    sets = [have.get((pkg.lower(), py), set()) for pkg in WHEEL_PACKAGES for py in PYTHONS]
    return sorted(set.intersection(*sets)) if sets else []


def build(out_dir: Path, wheels: bool = True, log=print) -> Path:
    manifest_path = ROOT / "blender_addon" / "blender_manifest.toml"
    manifest = check_manifest(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    files = [(p, p.relative_to(ROOT / "blender_addon")) for p in sorted((ROOT / "blender_addon").rglob("*"))
             if p != manifest_path]
    files += [(p, Path("shared") / p.relative_to(ROOT / "shared")) for p in sorted((ROOT / "shared").rglob("*.py"))]
    wheel_files = download_wheels(out_dir / "wheel-cache", log) if wheels else []
    manifest_text = manifest_path.read_text()
    if wheel_files:
        platforms = supported_platforms([w.name for w in wheel_files])
        if not platforms:
            raise SystemExit("the downloaded wheels cover no platform completely")
        listed = ",\n".join(f'    "./wheels/{w.name}"' for w in wheel_files)
        # top-level keys: before the first [table], or TOML would put them inside that table
        head, sep, tables = manifest_text.partition("\n[")
        manifest_text = (f"{head}\nplatforms = {json.dumps(platforms)}\nwheels = [\n{listed},\n]\n"
                         f"{sep}{tables}")
        check_wheels_listed(tomllib.loads(manifest_text), [w.name for w in wheel_files])
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for src, arc in files:
            if src.is_file() and "__pycache__" not in src.parts:
                zf.write(src, arc.as_posix())
        for w in wheel_files:
            zf.write(w, f"wheels/{w.name}")
    tmp.replace(target)
    return target


def check_wheels_listed(manifest: dict, names: list[str]) -> None:
    listed = sorted(Path(w).name for w in manifest.get("wheels", []))
    if listed != sorted(names):
        raise SystemExit(f"manifest wheels {listed} do not match the bundled files {sorted(names)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (offline development builds)")
    args = parser.parse_args(argv)
    print(f"built {build(args.out, wheels=not args.no_wheels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
