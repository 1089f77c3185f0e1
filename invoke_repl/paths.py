"""Where the files that ship with invoke-repl live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def configs_dir() -> Path:
    """The top-level `configs/` of a checkout, or its copy inside an installed wheel."""
    for candidate in (REPO_DIR / "configs", PACKAGE_DIR / "configs"):
        if (candidate / "clip-tokenizer" / "vocab.json").is_file():
            return candidate
    raise FileNotFoundError("invoke-repl's configs folder is missing (reinstall the package)")


def clip_tokenizer_dir() -> Path:
    return configs_dir() / "clip-tokenizer"


def shipped_catalogue() -> Path:
    """The `models.yaml` that ships with the repository (the catalogue of defaults).

    A checkout has it at the top; a wheel installs it as data under `{prefix}/share/invoke-repl/` (pyproject's
    data-files), since setuptools cannot place a top-level file inside a package.
    """
    import sys

    installed = Path(sys.prefix) / "share" / "invoke-repl" / "models.yaml"
    for candidate in (REPO_DIR / "models.yaml", installed):
        if candidate.is_file():
            return candidate
    # `pip install --user` puts data files under the user base, `--target DIR` under DIR: the wheel's RECORD says
    # where this copy's went.
    found = _recorded_data_file("share/invoke-repl/models.yaml")
    if found is not None:
        return found
    raise FileNotFoundError("invoke-repl's models.yaml is missing (reinstall the package)")


def _recorded_data_file(suffix: str) -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution("invoke-repl")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.as_posix().endswith(suffix):
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    return None


def embedded_model_dir() -> Path:
    return PACKAGE_DIR / "embedded" / "model"


def fire_drawing() -> Path:
    """The crude fireplace drawing of the README's img2img walkthrough, wherever this copy is installed."""
    return PACKAGE_DIR / "embedded" / "fire-drawing.png"
