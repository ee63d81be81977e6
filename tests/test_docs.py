"""The docs point at what exists: every relative link in README.md and docs/*.md resolves, and
every repository path they name in backticks (backend/..., shared/..., ...) is a file or folder."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(r"`((?:backend|shared|blender_addon|benchmarks|tests|tools|scripts|docs)/[\w./-]*)")


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_named_repository_paths_exist():
    missing = []
    for doc in DOCS:
        for path in CODE_PATH.findall(doc.read_text()):
            path = path.rstrip(".")
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing
