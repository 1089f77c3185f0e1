"""Tiny models written in each real on-disk format, shared by the model/catalogue/checkpoint tests.

No tests here. Everything is built from `build_tiny_random()` (a few MB, seconds on two cores): a diffusers
folder saved with `save_pretrained`, a config-only folder (what `config:` points a tiny checkpoint at, as a family
folder under configs/ does for a real one), and single files with the original LDM key names.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_tiny_folder(folder: Path, components=None) -> Path:
    """Save the tiny model as a diffusers folder, the way users' diffusers models arrive."""
    from invoke_repl.builtin import build_tiny_random

    c = components or build_tiny_random()
    folder.mkdir(parents=True, exist_ok=True)
    c.unet.save_pretrained(folder / "unet")
    c.vae.save_pretrained(folder / "vae")
    c.text_encoder.save_pretrained(folder / "text_encoder")
    c.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(c.scheduler_config))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    return folder


def write_config_folder(source: Path, target: Path) -> Path:
    """A weights-free copy of a diffusers folder: the local `config=` folder for single-file loading."""
    for part in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        (target / part).mkdir(parents=True, exist_ok=True)
        for f in (source / part).iterdir():
            if f.suffix in (".json", ".txt"):
                shutil.copy(f, target / part / f.name)
    shutil.copy(source / "model_index.json", target / "model_index.json")
    return target


def write_tiny_checkpoints(folder_model, target_dir: Path) -> dict[str, Path]:
    """The tiny model as one file with LDM key names, as .safetensors and as a Lightning-style .ckpt."""
    import torch
    from safetensors.torch import save_file

    from invoke_repl.loading import diffusers_to_ldm

    state = diffusers_to_ldm(folder_model.unet, folder_model.vae, folder_model.text_encoder)
    target_dir.mkdir(parents=True, exist_ok=True)
    st = target_dir / "tiny-sd1.safetensors"
    save_file(state, str(st))
    ckpt = target_dir / "tiny-sd1.ckpt"
    torch.save({"state_dict": state, "global_step": 1234}, ckpt)
    return {"safetensors": st, "ckpt": ckpt}


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """Point the user config/cache folders and the working directory at a scratch area."""
    config = tmp_path / "xdg-config"
    cache = tmp_path / "xdg-cache"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(work)
    return {"config": config / "invoke-repl", "cache": cache / "invoke-repl", "work": work}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """Built once per run: the tiny diffusers folder, its config-only folder and its single-file checkpoints."""
    from invoke_repl.builtin import build_tiny_random

    root = tmp_path_factory.mktemp("tiny-models")
    components = build_tiny_random()
    folder = write_tiny_folder(root / "tiny-folder", components)
    config = write_config_folder(folder, root / "tiny-config")
    files = write_tiny_checkpoints(components, root / "single")
    return {"folder": folder, "config": config, **files, "components": components, "root": root}


def model_dir_copy(store, tmp_path: Path, name: str = "copy") -> Path:
    """A private copy of the tiny folder (so a test may corrupt or count opens without touching the shared one)."""
    target = tmp_path / name
    shutil.copytree(store["folder"], target)
    return target
