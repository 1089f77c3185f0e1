"""Test-wide settings: no model hub, no user files, one torch thread.

One thread because the suite runs tiny models whose ops are too small to gain from a second thread, while a
second thread competing with subprocess tests (and, on a developer's machine, a training run) made single
generations 20-50x slower in measurements here (helper report, 2026-11-27: 4-10 s vs 0.15 s per small image).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:  # noqa: ANN001 - pytest-xdist's hook signature
    """One worker a core, at most 4: each worker holds its own torch and models, and the subprocess tests start
    children of their own, so a many-core machine would multiply memory for little gain (4 is a judgement, not
    measured here; 2 workers on the 2-core CI machine are)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest's hook signature
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_user_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogue edits, hash caches and history of the person running the tests are never touched."""
    base = tmp_path_factory.getbasetemp() / "xdg"
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(base / name.lower()))


@pytest.fixture(scope="module")
def components():
    """The built-in tiny-random model, fresh per test module (some modules wrap its UNet to count calls)."""
    from invoke_repl.builtin import build_tiny_random

    return build_tiny_random()
