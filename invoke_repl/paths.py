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
    raise FileNotFoundError("invoke-repl's models.yaml is missing (reinstall the package)")


def embedded_model_dir() -> Path:
    return PACKAGE_DIR / "embedded" / "model"
