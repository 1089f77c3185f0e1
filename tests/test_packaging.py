"""What an installed (non-editable) copy carries: the files a running program or the README needs must match the
wheel's package-data patterns, resolved the way setuptools resolves them (a glob per package folder, `**`
recursive), since a file missing there is missing for every user who installs with pip."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import pytest

from invoke_repl import paths

tomllib = pytest.importorskip("tomllib")

ROOT = paths.REPO_DIR


def _shipped_files() -> set[Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = config.get("package-dir", {})
    shipped: set[Path] = set()
    for package, patterns in config["package-data"].items():
        folder = ROOT / package_dirs.get(package, package.replace(".", "/"))
        for pattern in patterns:
            shipped.update(Path(p).resolve() for p in glob.glob(os.path.join(folder, pattern), recursive=True))
    for package in config["packages"]:  # modules ship with their package
        folder = ROOT / package_dirs.get(package, package.replace(".", "/"))
        shipped.update(p.resolve() for p in folder.glob("*.py"))
    return shipped


def test_the_readme_pictures_the_walkthrough_and_the_model_ship_in_the_wheel():
    shipped = _shipped_files()
    readme_images = {ROOT / m for m in re.findall(r'<img src="([^"]+)"', (ROOT / "README.md").read_text())}
    needed = readme_images | {paths.fire_drawing(), ROOT / "configs" / "clip-tokenizer" / "derive.py"}
    needed |= {p for p in paths.embedded_model_dir().rglob("*") if p.is_file()}
    needed |= {p for p in (ROOT / "configs").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert readme_images and all(p.is_file() for p in needed)
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if p.resolve() not in shipped)
    assert missing == []
